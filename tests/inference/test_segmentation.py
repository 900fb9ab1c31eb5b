"""Whole cases predicted back onto their native grid, in memory and through files: an oracle model gives the label
back exactly on the input's grid (anisotropic, oblique, resampled, cut-out scans, DICOM series and DICOM SEG)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import conv, trained_segmentation, write_package
from vesalius.data.synthetic import make_segmentation_case
from vesalius.inference.segmentation import predict_image
from vesalius.io import Geometry, Image
from vesalius.model_package import TrainedSegmentation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------------------------
# whole cases

SCALE = 400.0  # image intensity: 0 outside the body, 100 + 100 * label inside
CENTRES = (0.125, 0.5, 0.75)  # normalised intensity of each class (background covers 0 and 0.25)


def _oracle(ndim: int) -> nn.Module:
    """A 1x1 convolution whose argmax is the class with the nearest centre to the (scaled) intensity."""
    model = conv(ndim, 1, len(CENTRES))
    c = torch.tensor(CENTRES)
    sharpness = 200.0
    with torch.no_grad():
        model.weight.copy_((sharpness * c).reshape(model.weight.shape))
        model.bias.copy_(-sharpness * c**2 / 2)  # logit_k = -s (x - c_k)^2 / 2 up to a term common to all k
    return model


def _encoded_case(
    ndim: int, shape: tuple[int, ...], spacing: tuple[float, ...], geometry: Geometry | None = None
) -> tuple[Image, Image]:
    """A synthetic case whose image encodes its label: 0 outside the body, 100 + 100 * label inside."""
    image, label = make_segmentation_case(7, ndim=ndim, shape=shape, spacing=spacing)
    body = (image.array > 0) | (label.array > 0)
    encoded = np.where(body, 100.0 + 100.0 * label.array, 0.0).astype(np.float32)
    geometry = geometry or image.geometry
    return Image(encoded, geometry), Image(label.array, geometry)


def _trained(config: str, **configuration: Any) -> TrainedSegmentation:
    """The trained configuration of an oracle: intensities scaled by ``SCALE``, the configuration's ``fields``."""
    return trained_segmentation(config, ({"scheme": "scale", "low": 0.0, "high": SCALE},), **configuration)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize(
    ("ndim", "shape", "config", "configuration"),
    [
        (3, (30, 26, 14), "3d", {"spacing": [1.0, 1.0, 2.5], "patch_size": [16, 16, 8], "mirror_axes": [0, 1]}),
        (2, (50, 44), "2d", {"spacing": [0.8, 0.8], "patch_size": [32, 32]}),
        (
            3,
            (30, 26, 14),
            "2d",
            {"spacing": [1.0, 1.0], "spacing_full": [1.0, 1.0, 2.5], "patch_size": [16, 16], "slice_axis": 2},
        ),
    ],
)
def test_a_case_on_the_plan_grid_is_predicted_exactly(
    ndim: int, shape: tuple, config: str, configuration: dict
) -> None:
    spacing = tuple(configuration.get("spacing_full", configuration["spacing"]))
    image, label = _encoded_case(ndim, shape, spacing)
    labels, probabilities = predict_image(
        _oracle(2 if config == "2d" else 3), image, _trained(config, **configuration), return_probabilities=True
    )
    assert labels.geometry == image.geometry and labels.array.dtype == np.uint8
    assert np.array_equal(labels.array, label.array)
    assert probabilities.geometry == image.geometry and probabilities.array.shape == (3, *shape)
    assert np.allclose(probabilities.array.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(probabilities.array.argmax(axis=0)[None], label.array)


def test_an_anisotropic_oblique_case_comes_back_on_its_own_grid() -> None:
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry((0.8, 0.7, 2.6), (-12.5, 40.25, 3.0), direction)
    image, label = _encoded_case(3, (36, 40, 14), geometry.spacing, geometry)
    trained = _trained("3d", spacing=[1.0, 1.0, 2.0], patch_size=[16, 16, 8])
    labels = predict_image(_oracle(3), image, trained, mirror_axes=(0,), step=0.5, batch_size=2)
    assert labels.geometry == image.geometry  # exactly, not just close
    assert labels.spatial_shape == image.spatial_shape and labels.array.dtype == np.uint8
    assert (labels.array == label.array).mean() > 0.99
    for value in (1, 2):
        assert _dice(labels.array == value, label.array == value) > 0.8, value


# ---------------------------------------------------------------------------------------------------------------
# through files and the command line: an oracle model gives the label back exactly on the input's grid


def _oblique_direction(degrees: float) -> tuple[float, ...]:
    """A rotation about the third axis followed by a swap of the first two axes: no axis-aligned direction."""
    a = np.deg2rad(degrees)
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return tuple((rotation @ np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])).ravel())


def _oracle_run(tmp_path, monkeypatch, spacing: list[float], patch: list[int]):  # type: ignore[no-untyped-def]
    """A run folder whose 'network' is the oracle: ``vesalius predict`` loads it like a trained fold."""
    from vesalius.inference import segmentation
    from vesalius.inference.model import LoadedModel

    run_dir = tmp_path / "run"
    trained = _trained("3d", spacing=spacing, patch_size=patch, mirror_axes=[0, 1, 2], batch_size=2)
    package = write_package(run_dir, trained, {"train": [], "val": []})
    model = LoadedModel(_oracle(3), package)
    monkeypatch.setattr(segmentation, "load_ensemble", lambda *args, **kwargs: [model])
    return run_dir


@pytest.mark.parametrize(
    ("case_spacing", "plan_spacing", "crop", "suffix"),
    [
        ((0.8, 0.7, 2.6), [0.8, 0.7, 2.6], None, ".nii.gz"),  # anisotropic, oblique, on the plan's spacing
        ((1.0, 1.0, 3.0), [1.0, 1.0, 1.5], None, ".nrrd"),  # thick slices, resampled to the plan's thinner ones
        ((1.0, 1.0, 2.0), [1.0, 1.0, 2.0], (slice(9, 30), slice(3, 37), slice(2, 12)), ".mha"),  # a cut-out scan
    ],
)
def test_an_oracle_gives_the_label_back_exactly_through_files(
    tmp_path, monkeypatch, case_spacing: tuple, plan_spacing: list, crop: tuple | None, suffix: str
) -> None:
    """Exact wherever the image is not interpolated in a way the oracle cannot undo: on the plan's spacing, and
    across thick slices (resampled by nearest neighbour). Linear in-plane resampling mixes the encoded levels, so
    a case off the plan's in-plane spacing comes back close, not exact (the oblique test above)."""
    from vesalius.cli import main
    from vesalius.io import read_image, write_image

    geometry = Geometry(case_spacing, (-12.5, 40.25, 3.0), _oblique_direction(30.0))
    image, label = _encoded_case(3, (36, 40, 14), case_spacing, geometry)
    if crop is not None:  # the body reaches the borders of a cut-out; its origin moves with the cut
        from vesalius.preprocessing.spatial import crop as cut

        image, label = cut(image, crop), cut(label, crop)
    inputs = tmp_path / "in"
    write_image(image, inputs / f"case{suffix}")
    run_dir = _oracle_run(tmp_path, monkeypatch, plan_spacing, [16, 16, 8])
    assert main(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(run_dir)]) == 0
    predicted = read_image(tmp_path / "out" / f"case{suffix}")
    original = read_image(inputs / f"case{suffix}")
    assert predicted.geometry.differences(original.geometry) == []
    assert predicted.spatial_shape == original.spatial_shape
    assert np.array_equal(predicted.array, label.array)


def test_fill_holes_option_fills_a_hollow_organ(tmp_path, monkeypatch) -> None:
    from vesalius.cli import main
    from vesalius.io import read_image, write_image

    label = np.zeros((1, 24, 24, 12), np.uint8)
    label[0, 6:18, 6:18, 3:9] = 1
    label[0, 9:15, 9:15, 5:7] = 0  # a hole of background inside the organ
    encoded = np.where(label > 0, 200.0, 100.0).astype(np.float32)
    encoded[:, :2] = 0.0  # outside the body
    write_image(Image(encoded, Geometry.default(3)), tmp_path / "in" / "case.nii.gz")
    run_dir = _oracle_run(tmp_path, monkeypatch, [1.0, 1.0, 1.0], [16, 16, 8])
    for flags, out in (([], "plain"), (["--fill-holes"], "filled")):
        args = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / out), "-m", str(run_dir), *flags]
        assert main(args) == 0
    assert np.array_equal(read_image(tmp_path / "plain" / "case.nii.gz").array, label)
    expected = label.copy()
    expected[0, 9:15, 9:15, 5:7] = 1  # the hole, and nothing else, becomes organ
    assert np.array_equal(read_image(tmp_path / "filled" / "case.nii.gz").array, expected)


def test_a_dicom_series_gets_its_label_map_back_and_a_dicom_seg(tmp_path, monkeypatch) -> None:
    import highdicom as hd

    from vesalius.cli import main
    from vesalius.io import read_image
    from vesalius.io.dicom import list_series, write_dicom_series
    from vesalius.io.image import to_sitk

    geometry = Geometry((0.8, 0.7, 2.5), (-12.5, 40.25, 3.0), _oblique_direction(-20.0))
    image, label = _encoded_case(3, (36, 40, 10), geometry.spacing, geometry)
    write_dicom_series(to_sitk(image.with_array(image.array.astype(np.int16))), tmp_path / "series", modality="MR")
    run_dir = _oracle_run(tmp_path, monkeypatch, [0.8, 0.7, 2.5], [16, 16, 8])
    assert main(["predict", "-i", str(tmp_path / "series"), "-o", str(tmp_path / "out"), "-m", str(run_dir)]) == 0
    series = read_image(tmp_path / "series")
    predicted = read_image(tmp_path / "out" / "series.nii.gz")
    assert predicted.geometry.differences(series.geometry) == [] and np.array_equal(predicted.array, label.array)

    seg = hd.seg.segread(tmp_path / "out" / "series_seg.dcm")
    (info,) = list_series(tmp_path / "series")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info.uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]
    uids = [hd.imread(f).SOPInstanceUID for f in info.files]  # slice order of the series
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    assert np.array_equal(frames, np.transpose(label.array[0], (2, 1, 0)))  # (slices, rows, columns)
