"""Property tests: mutated headers and bytes of small valid image files either read or raise
:class:`VesaliusError`, never any other exception (derandomized, so CI sees the same examples every run)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image, read_image, write_image

FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of a small valid file of each format."""
    import SimpleITK as sitk

    from vesalius.io.dicom import write_dicom_series

    folder = tmp_path_factory.mktemp("originals")
    rng = np.random.default_rng(0)
    volume = Image(
        rng.integers(0, 200, (1, 4, 3, 2), dtype=np.int16),
        Geometry((0.7, 0.8, 2.5), (1, 2, 3), tuple(np.eye(3).ravel())),
    )
    out = {}
    for suffix in (".nii", ".nrrd", ".mha"):
        out[suffix] = write_image(volume, folder / f"v{suffix}", compress=False).read_bytes()
    out[".nii.gz"] = write_image(volume, folder / "v.nii.gz").read_bytes()
    out[".png"] = write_image(
        Image(rng.integers(0, 255, (1, 5, 4), dtype=np.uint8), Geometry.default(2)), folder / "p.png"
    ).read_bytes()
    (first,) = write_dicom_series(sitk.GetImageFromArray(volume.array[0].T[:1].copy()), folder / "dicom")
    out[".dcm"] = first.read_bytes()
    return out


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def _read(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"f{suffix}"
        path.write_bytes(data)
        try:
            read_image(path)
        except VesaliusError as e:
            assert "\n" not in e.one_line()


EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6)
HEADER_EDITS = st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=4)
CUTS = st.none() | st.integers(0, 600)


@FUZZ
@given(edits=HEADER_EDITS, cut=CUTS)
def test_nifti_header_mutations(originals, edits, cut):
    _read(_mutated(originals[".nii"], edits, cut), ".nii")


@FUZZ
@given(edits=EDITS, cut=CUTS)
def test_nifti_gz_byte_mutations(originals, edits, cut):
    _read(_mutated(originals[".nii.gz"], edits, cut), ".nii.gz")


@FUZZ
@given(
    line=st.integers(0, 12),
    text=st.sampled_from(
        [
            "sizes: 99999 99999 99999",
            "space directions: (0,0,0) (0,1,0) (0,0,1)",
            "type: float",
            "encoding: gzip",
            "dimension: 7",
            "space directions: (1,1,0) (1,1,0) (0,0,1)",
            "",
            "sizes: -1 2 3",
            "space origin: (nan,0,0)",
            "kinds: domain",
            "data file: /nonexistent.raw",
        ]
    ),
    cut=CUTS,
)
def test_nrrd_header_mutations(originals, line, text, cut):
    header, _, data = originals[".nrrd"].partition(b"\n\n")
    lines = header.split(b"\n")
    lines[line % len(lines)] = text.encode()
    _read(_mutated(b"\n".join(lines) + b"\n\n" + data, [], cut), ".nrrd")


@FUZZ
@given(edits=EDITS, cut=CUTS)
def test_metaimage_byte_mutations(originals, edits, cut):
    _read(_mutated(originals[".mha"], edits, cut), ".mha")


@FUZZ
@given(edits=EDITS, cut=CUTS)
def test_png_byte_mutations(originals, edits, cut):
    _read(_mutated(originals[".png"], edits, cut), ".png")


@FUZZ
@given(edits=EDITS, cut=st.none() | st.integers(0, 2000))
def test_dicom_byte_mutations(originals, edits, cut):
    _read(_mutated(originals[".dcm"], edits, cut), ".dcm")


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".nii", ".nii.gz", ".nrrd", ".mha", ".png", ".dcm"]))
def test_random_bytes(data, suffix):
    _read(data, suffix)
