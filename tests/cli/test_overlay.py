"""``vesalius overlay`` from the command line: windows, montages, a segmentation on another grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import overlay_volume
from vesalius.cli import main
from vesalius.io import Geometry, Image, read_image, write_image


def test_overlay_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, seg = overlay_volume()
    write_image(image, tmp_path / "img.nii.gz")
    write_image(seg, tmp_path / "seg.nii.gz")
    out = tmp_path / "out.png"
    args = ["overlay", str(tmp_path / "img.nii.gz"), str(tmp_path / "seg.nii.gz"), "-o", str(out)]
    assert main([*args, "--window", "40,400", "--reference", str(tmp_path / "seg.nii.gz")]) == 0
    assert read_image(out).array.shape[0] == 3
    assert main([*args, "--montage", "6", "--slice", "3"]) == 0
    other = Image(np.zeros((1, 5, 5, 5), np.uint8), Geometry.default(3))
    write_image(other, tmp_path / "small.nii.gz")
    assert main(["overlay", str(tmp_path / "img.nii.gz"), str(tmp_path / "small.nii.gz"), "-o", str(out)]) == 2
    assert "on the image's grid" in capsys.readouterr().err
