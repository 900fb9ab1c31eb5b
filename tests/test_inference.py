"""Inference: sliding windows equal whole-image prediction for a per-voxel model (2D, 3D, slices, images smaller
than the patch, sizes that are no multiple of it), mirroring test-time augmentation (neutral for a flip-equivariant
model, the average of flipped predictions otherwise), and whole cases predicted back onto their native grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vesalius.data.synthetic import make_segmentation_case
from vesalius.inference.predict import predict_image
from vesalius.inference.sliding_window import predict_probabilities, tta_flips
from vesalius.io import Geometry, Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv(ndim: int, channels: int, classes: int, kernel: int = 1, seed: int = 0) -> nn.Module:
    """A fixed random convolution (zero padding, same size out), float32."""
    torch.manual_seed(seed)
    return (nn.Conv2d if ndim == 2 else nn.Conv3d)(channels, classes, kernel, padding=kernel // 2)


def _whole(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """Softmax of ``model`` applied to the whole ``(C, *spatial)`` image at once."""
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(image)[None]), dim=1)[0]


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((23, 30), (8, 12)),  # no multiple of the patch
        ((5, 7), (8, 8)),  # smaller than the patch
        ((5, 19), (8, 8)),  # smaller along one axis only
        ((11, 9, 13), (6, 6, 6)),
        ((4, 9, 3), (6, 6, 6)),
    ],
)
@pytest.mark.parametrize("step", [0.5, 0.3])
def test_sliding_windows_equal_the_whole_image_for_a_per_voxel_model(
    shape: tuple[int, ...], patch: tuple[int, ...], step: float
) -> None:
    image = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    model = _conv(len(shape), 2, 3)
    probabilities = predict_probabilities(model, image, patch, step=step, batch_size=3)
    assert probabilities.shape == (3, *shape) and probabilities.dtype == torch.float32
    assert torch.allclose(probabilities, _whole(model, image), atol=1e-6)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slice_by_slice_equals_a_2d_model_on_each_slice(slice_axis: int) -> None:
    shape = (5, 9, 7)
    image = np.random.default_rng(2).normal(size=(1, *shape)).astype(np.float32)
    model = _conv(2, 1, 3)
    probabilities = predict_probabilities(model, image, (4, 4), slice_axis=slice_axis, batch_size=4)
    assert probabilities.shape == (3, *shape)
    for s in range(shape[slice_axis]):
        index = (slice(None), *(s if a == slice_axis else slice(None) for a in range(3)))
        assert torch.allclose(probabilities[index], _whole(model, np.ascontiguousarray(image[index])), atol=1e-6)


def test_bfloat16_autocast_stays_close_to_float32() -> None:
    image = np.random.default_rng(3).normal(size=(1, 12, 10, 9)).astype(np.float32)
    model = _conv(3, 1, 2, kernel=3)
    full = predict_probabilities(model, image, (8, 8, 8))
    fast = predict_probabilities(model, image, (8, 8, 8), autocast_dtype=torch.bfloat16)
    assert fast.dtype == torch.float32
    assert torch.allclose(fast, full, atol=2e-2)


def test_tta_flips_lists_every_combination_once() -> None:
    assert tta_flips(()) == [()]
    assert tta_flips((0, 2)) == [(), (0,), (2,), (0, 2)]
    assert len(tta_flips((0, 1, 2))) == 8


def _symmetric_conv(ndim: int) -> nn.Module:
    """A 3-wide convolution whose kernel is symmetric under every flip: the model is flip-equivariant."""
    model = _conv(ndim, 1, 3, kernel=3)
    with torch.no_grad():
        w = model.weight
        for axis in range(2, 2 + ndim):
            w.copy_((w + torch.flip(w, [axis])) / 2)
    return model


@pytest.mark.parametrize(("shape", "patch", "axes"), [((14, 11), (8, 8), (0, 1)), ((9, 10, 7), (6, 6, 6), (0, 2))])
def test_mirroring_does_not_change_a_flip_equivariant_model(
    shape: tuple[int, ...], patch: tuple[int, ...], axes: tuple[int, ...]
) -> None:
    image = np.random.default_rng(4).normal(size=(1, *shape)).astype(np.float32)
    model = _symmetric_conv(len(shape))
    plain = predict_probabilities(model, image, patch)
    mirrored = predict_probabilities(model, image, patch, mirror_axes=axes, batch_size=2)
    assert torch.allclose(mirrored, plain, atol=1e-5)


@pytest.mark.parametrize(("shape", "axes"), [((10, 12), (0,)), ((10, 12), (0, 1)), ((6, 7, 5), (0, 2))])
def test_mirroring_averages_the_logits_of_the_flipped_predictions(
    shape: tuple[int, ...], axes: tuple[int, ...]
) -> None:
    image = np.random.default_rng(5).normal(size=(1, *shape)).astype(np.float32)
    model = _conv(len(shape), 1, 3, kernel=3, seed=6)  # a random kernel: not flip-equivariant
    # one window covering the image, so that mirroring each window is mirroring the image
    mirrored = predict_probabilities(model, image, shape, mirror_axes=axes)
    x = torch.from_numpy(image)[None]
    with torch.no_grad():
        logits = [torch.flip(model(torch.flip(x, [a + 2 for a in f])), [a + 2 for a in f]) for f in tta_flips(axes)]
    expected = torch.softmax(torch.stack(logits).mean(dim=0), dim=1)[0]
    assert torch.allclose(mirrored, expected, atol=1e-5)
    assert not torch.allclose(mirrored, predict_probabilities(model, image, shape), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# whole cases

SCALE = 400.0  # image intensity: 0 outside the body, 100 + 100 * label inside
CENTRES = (0.125, 0.5, 0.75)  # normalised intensity of each class (background covers 0 and 0.25)


def _oracle(ndim: int) -> nn.Module:
    """A 1x1 convolution whose argmax is the class with the nearest centre to the (scaled) intensity."""
    model = _conv(ndim, 1, len(CENTRES))
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


def _plan(configurations: dict) -> dict:
    return {"normalization": [{"scheme": "scale", "low": 0.0, "high": SCALE}], "configurations": configurations}


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
        _oracle(2 if config == "2d" else 3), image, _plan({config: configuration}), config, return_probabilities=True
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
    plan = _plan({"3d": {"spacing": [1.0, 1.0, 2.0], "patch_size": [16, 16, 8]}})
    labels = predict_image(_oracle(3), image, plan, "3d", mirror_axes=(0,), step=0.5, batch_size=2)
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
    from vesalius.inference import predictor
    from vesalius.inference.model import TrainedModel

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "training.json").write_text("{}")
    plan = _plan({"3d": {"spacing": spacing, "patch_size": patch, "mirror_axes": [0, 1, 2], "batch_size": 2}})
    plan |= {"channels": ["MRI"], "labels": {"0": "background", "1": "organ", "2": "lesion"}, "spatial_dims": 3}
    model = TrainedModel(_oracle(3), plan, "3d", {}, run_dir)
    monkeypatch.setattr(predictor, "load_model", lambda *args, **kwargs: model)
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
