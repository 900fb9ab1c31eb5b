"""Colour pictures predict as they were imported: a model trained on R, G, B channels (``vesalius import`` splits a
colour picture into three) takes the same kind of picture at prediction, for segmentation and classification."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from vesalius.cli import main
from vesalius.errors import VesaliusError
from vesalius.inference.inputs import list_inputs
from vesalius.io import Geometry, Image, read_image, write_image


def _colour(seed: int, shape: tuple[int, int] = (40, 36)) -> tuple[Image, Image]:
    """A colour picture with a red disc on a noisy grey background, and the disc's 0/255 mask."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cx, cy, r = rng.uniform(12, shape[0] - 12), rng.uniform(12, shape[1] - 12), rng.uniform(5, 9)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < r**2
    rgb = rng.normal(90, 12, size=(3, *shape))
    rgb[0][disc] += 120
    rgb[1][disc] -= 40
    picture = Image(np.clip(rgb, 0, 255).astype(np.uint8), Geometry.default(2))
    return picture, Image((disc * 255).astype(np.uint8)[None], Geometry.default(2))


def test_colour_files_are_whole_cases(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i, suffix in enumerate((".jpg", ".png", ".tif")):
        write_image(_colour(i)[0], folder / f"fundus_{i:04d}{suffix}")  # named like a channel file, yet whole
    cases = list_inputs(folder, channels=3)
    assert [c.case_id for c in cases] == ["fundus_0000", "fundus_0001", "fundus_0002"]
    assert [c.suffix for c in cases] == [".png", ".png", ".tif"]  # a JPEG's label map is a PNG
    grey = tmp_path / "grey"
    for c in range(3):
        write_image(_colour(9)[0].channel(c), grey / f"case_{c:04d}.png")
    (case,) = list_inputs(grey, channels=3)  # nnU-Net's one file per channel still works
    assert len(case.files) == 3
    assert len(list_inputs(folder / "fundus_0000.jpg", channels=3)) == 1


def test_wrong_channel_counts_are_one_line(tmp_path: Path) -> None:
    write_image(_colour(0)[0].channel(0), tmp_path / "grey.png")
    with pytest.raises(VesaliusError, match="needs 3 channels but one file of 1 was given"):
        list_inputs(tmp_path / "grey.png", channels=3)
    with pytest.raises(VesaliusError, match="a file holding them all or files named CASE_0000"):
        list_inputs(tmp_path, channels=3)


@pytest.mark.slow
def test_segment_and_classify_colour_jpegs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = ["--workspace", str(tmp_path / "ws")]
    source = tmp_path / "src"
    for i in range(12):
        picture, mask = _colour(i)
        write_image(picture, source / "images" / f"eye{i:02d}.jpg")
        write_image(mask, source / "labels" / f"eye{i:02d}.png")
    assert main(["import", str(source), "eyes", "--labels", str(source / "labels"), *ws]) == 0
    assert main(["plan", "eyes", *ws]) == 0
    assert main(["train", "eyes", "--epochs", "2", "--iters-per-epoch", "10", "--no-validate", *ws]) == 0
    run = next((tmp_path / "ws" / "runs" / "eyes").glob("*/fold_0"))
    new = tmp_path / "new"
    for i in (20, 21):
        write_image(_colour(i)[0], new / f"eye{i}.jpg")
    assert main(["predict", "-i", str(new), "-o", str(tmp_path / "seg"), "-m", str(run)]) == 0
    for i in (20, 21):
        labels = read_image(tmp_path / "seg" / f"eye{i}.png")
        assert labels.spatial_shape == (40, 36) and set(np.unique(labels.array)) <= {0, 1}

    classes = tmp_path / "classes"
    for i in range(16):
        picture, _ = _colour(i)
        if i % 2:  # the "pale" class: no red disc
            picture = picture.with_array(np.repeat(picture.array[1:2], 3, axis=0))
        write_image(picture, classes / ("pale" if i % 2 else "red") / f"p{i:02d}.jpg")
    assert main(["import", str(classes), "discs", *ws]) == 0
    assert main(["plan", "discs", *ws]) == 0
    assert main(["train", "discs", "--epochs", "2", "--no-validate", *ws]) == 0
    run = next((tmp_path / "ws" / "runs" / "discs").glob("**/checkpoint_final.pt")).parent
    capsys.readouterr()
    assert main(["predict", "-i", str(new), "-o", str(tmp_path / "cls.csv"), "-m", str(run)]) == 0
    rows = list(csv.DictReader((tmp_path / "cls.csv").open(encoding="utf-8")))
    assert [r["case_id"] for r in rows] == ["eye20", "eye21"]
