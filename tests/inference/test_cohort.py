"""Cohort prediction: shards split the sorted case list without overlap, sharded prediction equals unsharded file
for file (also as ranks under torchrun), a manifest records each finished case and a re-run skips them."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vesalius.cli import main
from vesalius.errors import VesaliusError
from vesalius.inference.cohort import MANIFEST_NAME, Shard
from vesalius.inference.files import ModelInput, segment_cases
from vesalius.inference.inputs import InputCase
from vesalius.io import Geometry, Image, read_image, write_image


def _cases(n: int) -> list[InputCase]:
    return [InputCase(f"c{i:03d}", [Path(f"c{i:03d}.nii.gz")]) for i in range(n)]


def test_shards_split_the_sorted_cases_without_overlap() -> None:
    cases = list(reversed(_cases(10)))
    parts = [Shard(i, 3).select(cases) for i in (1, 2, 3)]
    assert [[c.case_id for c in p] for p in parts] == [
        ["c000", "c003", "c006", "c009"],
        ["c001", "c004", "c007"],
        ["c002", "c005", "c008"],
    ]
    assert Shard.parse("2/3") == Shard(2, 3) and str(Shard(2, 3)) == "2/3"
    for bad in ("0/3", "4/3", "1/0", "x/3", "2"):
        with pytest.raises(VesaliusError):
            Shard.parse(bad)


def test_shard_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert Shard.from_environment() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert Shard.from_environment() == Shard(2, 4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Shard.from_environment() is None


def _threshold(image: Image) -> tuple[Image, None]:
    return image.with_array((image.array > 127).astype(np.uint8)), None


def test_a_thousand_inputs_resume_after_a_kill(tmp_path: Path) -> None:
    """1000 small pictures: predicted, then a run killed after 400 cases continues with the other 600."""
    source = tmp_path / "cohort"
    rng = np.random.default_rng(0)
    for i in range(1000):
        write_image(
            Image(rng.integers(0, 256, (1, 8, 8), dtype=np.uint8), Geometry.default(2)), source / f"{i:04d}.png"
        )
    model = ModelInput(1, 2, tmp_path / "model.onnx")
    model.model.write_bytes(b"weights v1")
    calls: list[int] = []

    def killed_after_400(image: Image) -> tuple[Image, None]:
        calls.append(1)
        if len(calls) > 400:
            raise KeyboardInterrupt
        return _threshold(image)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        segment_cases(source, out, model, killed_after_400, {0: "background", 1: "bright"})
    assert len((out / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()) == 400
    seen: list[InputCase] = []
    written = segment_cases(source, out, model, _threshold, {0: "background", 1: "bright"}, on_case=seen.append)
    assert len(written) == 1000 and sum(not c.skipped for c in seen) == 600
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 1000 and len({e["case"] for e in lines}) == 1000
    assert set(lines[0]) >= {"case", "input_sha256", "model", "outputs", "seconds"}
    np.testing.assert_array_equal(
        read_image(out / "0999.png").array, (read_image(source / "0999.png").array > 127).astype(np.uint8)
    )
    model.model.write_bytes(b"weights v2")  # a new model: everything again
    seen.clear()
    segment_cases(source, out, model, _threshold, {0: "background", 1: "bright"}, on_case=seen.append)
    assert not any(c.skipped for c in seen) and len(seen) == 1000


@pytest.fixture(scope="module")
def cohort(trained, planned, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    from vesalius.data.dataset import Dataset

    dataset = Dataset.load(planned / "datasets" / "ph")
    folder = tmp_path_factory.mktemp("cohort") / "in"
    folder.mkdir()
    for case in dataset.cases[:5]:
        shutil.copy(dataset.image_paths(case)[0], folder / f"{case.case_id}.nii.gz")
    return folder


def _same_outputs(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.nii.gz"))
    assert names == sorted(p.name for p in b.glob("*.nii.gz")) and names
    for name in names:
        x, y = read_image(a / name), read_image(b / name)
        np.testing.assert_array_equal(x.array, y.array)
        assert x.geometry.differences(y.geometry) == []


@pytest.mark.slow
def test_sharded_equals_unsharded_and_reruns_skip(trained, cohort: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    model = str(trained.run_dir)
    assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "whole"), "-m", model, "--fast"]) == 0
    for part in ("1/2", "2/2"):
        args = ["predict", "-i", str(cohort), "-o", str(tmp_path / "parts"), "-m", model, "--fast", "--shard", part]
        assert main(args) == 0
    _same_outputs(tmp_path / "whole", tmp_path / "parts")
    assert len((tmp_path / "parts" / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()) == 5
    capsys.readouterr()
    assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "parts"), "-m", model, "--fast"]) == 0
    assert "0 case(s) predicted" in capsys.readouterr().out  # all 5 done by the shards' runs
    (tmp_path / "parts" / sorted(p.name for p in cohort.iterdir())[0]).unlink()
    assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "parts"), "-m", model, "--fast"]) == 0
    assert "1 case(s) predicted" in capsys.readouterr().out
    assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "parts"), "-m", model]) == 0
    assert "5 case(s) predicted" in capsys.readouterr().out  # without --fast: other predictions, all again
    assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "x"), "-m", model, "--shard", "6/6"]) == 2
    assert "shard 6/6 holds no case" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_ranks_split_the_cohort(trained, cohort: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    model = str(trained.run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread in both runs: the same order of float additions
    for processes, folder in ((1, "whole"), (2, "ranks")):
        command = [str(torchrun), "--nproc-per-node", str(processes), "--master-port", "0", "-m", "vesalius"]
        command += ["predict", "-i", str(cohort), "-o", str(tmp_path / folder), "-m", model, "--fast"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    _same_outputs(tmp_path / "whole", tmp_path / "ranks")
    lines = (tmp_path / "ranks" / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["case"] for line in lines) == sorted(p.name[:-7] for p in cohort.iterdir())


@pytest.mark.slow
def test_classification_shards_and_rerun(trained_synthetic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from vesalius.data.synthetic import make_classification_case

    cohort = tmp_path / "in"
    for i in range(6):
        write_image(make_classification_case(100 + i, i % 2 == 1, shape=(48, 48)), cohort / f"s{i}.nii.gz")
    model = str(trained_synthetic.run_dir)
    assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "whole"), "-m", model]) == 0
    for part in ("1/2", "2/2"):
        assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "parts"), "-m", model, "--shard", part]) == 0
    whole = list(csv.DictReader((tmp_path / "whole" / "predictions.csv").open(encoding="utf-8")))
    parts = [
        row
        for part in ("1-of-2", "2-of-2")
        for row in csv.DictReader((tmp_path / "parts" / f"predictions-shard-{part}.csv").open(encoding="utf-8"))
    ]
    assert sorted(parts, key=lambda r: r["case_id"]) == whole
    before = (tmp_path / "whole" / "predictions.csv").read_bytes()
    assert main(["predict", "-i", str(cohort), "-o", str(tmp_path / "whole"), "-m", model]) == 0
    assert (tmp_path / "whole" / "predictions.csv").read_bytes() == before  # from the manifest, the same rows
