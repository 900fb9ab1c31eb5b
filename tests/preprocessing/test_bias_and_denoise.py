"""Intensity filters as plan options: N4 removes a smooth multiplicative bias, denoising lowers noise and keeps
edges, and the options travel from the plan through the preprocessing cache, model.json, prediction and the exported
package's runtime, which all compute the same preprocessed array."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import vesalius
from vesalius.cli import main
from vesalius.data.dataset import Dataset
from vesalius.data.synthetic import write_segmentation_dataset
from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image
from vesalius.io.schema import from_json, to_json
from vesalius.model_package import ModelPackage, TrainedSegmentation
from vesalius.planning.plan import BiasField, ChannelFilters, Denoising, Normalization, Plan
from vesalius.planning.rules import intensity_filters, load_rules
from vesalius.preprocessing.filters import apply_filters, correct_bias_field, denoise
from vesalius.preprocessing.pipeline import preprocess_dataset, preprocess_image
from vesalius.workspace import Workspace

RULES = load_rules()
N4 = from_json(BiasField, {"method": "n4", **RULES["intensity_filters"]["n4"]})
METHODS = {
    m: from_json(Denoising, {"method": m, **RULES["intensity_filters"][m]}) for m in ("curvature_flow", "anisotropic")
}


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")


def _biased_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A uniform ellipsoid (100) in a zero background, times an exponential ramp from 0.55 to 1.8 along x; returns
    the image, the object mask and the inner region away from the object's border."""
    shape = (44, 40, 36)
    x, y, z = _grid(shape)
    r = ((x - 22) / 19) ** 2 + ((y - 20) / 17) ** 2 + ((z - 18) / 15) ** 2
    inside = r < 1
    bias = np.exp(0.6 * (x - 22) / 20)
    noise = np.random.default_rng(0).normal(0, 1.0, shape)
    return ((100 + noise) * inside * bias).astype(np.float32), inside, r < 0.7


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def test_n4_removes_a_smooth_multiplicative_bias() -> None:
    image, inside, inner = _biased_phantom()
    corrected = correct_bias_field(image, (1.0, 1.2, 1.5), N4)
    assert corrected.shape == image.shape and corrected.dtype == np.float32
    assert _cv(image[inner]) > 0.15
    assert _cv(corrected[inner]) < _cv(image[inner]) / 4  # the ramp is gone, the 1 % noise remains
    assert np.all(corrected[~inside] == 0)  # the background stays background
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        # deterministic up to the order of ITK's multi-threaded sums
        np.testing.assert_allclose(correct_bias_field(image, (1.0, 1.2, 1.5), N4), corrected, rtol=1e-4, atol=1e-3)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def test_n4_fits_only_positive_voxels_of_a_shifted_image() -> None:
    image, _, inner = _biased_phantom()
    shifted = image - 40  # as a z-scored file: part of the object is negative
    corrected = correct_bias_field(shifted, (1.0, 1.2, 1.5), N4)
    assert np.isfinite(corrected).all()
    bright = inner & (shifted > 0)
    assert _cv(corrected[bright]) < _cv(shifted[bright])


def test_n4_keeps_the_geometry_of_preprocessing_and_leaves_an_image_without_object_alone() -> None:
    image, _, _ = _biased_phantom()
    padded = Image(np.pad(image, 3)[None], Geometry((1.0, 1.2, 1.5), (5.0, -3.0, 2.0), tuple(np.eye(3).ravel())))
    zscore = (Normalization("zscore", use_nonzero_mask=True),)
    plain, _, props = preprocess_image(padded, None, (2.0, 2.0, 2.0), zscore)
    filtered, _, filtered_props = preprocess_image(
        padded, None, (2.0, 2.0, 2.0), zscore, (ChannelFilters(bias_field=N4),)
    )
    assert filtered_props == props and filtered.shape == plain.shape
    assert np.array_equal(filtered == 0, plain == 0)  # the non-zero mask is the image's own
    constant = np.full((12, 12, 12), 7.0, np.float32)
    assert np.array_equal(correct_bias_field(constant, (1.0, 1.0, 1.0), N4), constant)


def _noisy_step() -> tuple[np.ndarray, np.ndarray]:
    """A step from 100 to 200 at x = 20 with Gaussian noise of std 10 (returns noisy and clean)."""
    shape = (40, 32, 24)
    x = _grid(shape)[0]
    clean = np.where(x < 20, 100.0, 200.0).astype(np.float32)
    return clean + np.random.default_rng(1).normal(0, 10, shape).astype(np.float32), clean


def _edge_width(array: np.ndarray) -> float:
    """10-90 % rise distance (voxels) of the mean profile across the step: 1 for a perfect step."""
    profile = array.mean(axis=(1, 2))
    low, high = profile[10:16].mean(), profile[24:30].mean()
    rising = (profile - low) / (high - low)
    return float(np.interp(0.9, rising[14:26], np.arange(14, 26)) - np.interp(0.1, rising[14:26], np.arange(14, 26)))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_denoising_lowers_the_noise_and_keeps_the_edge(method: str) -> None:
    noisy, clean = _noisy_step()
    flat = (slice(2, 16), slice(2, 30), slice(2, 22))
    out = denoise(noisy, (1.0, 1.0, 1.0), METHODS[method])
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert out[flat].std() < 0.45 * noisy[flat].std()
    assert _edge_width(out) < 1.5 * _edge_width(clean)
    from scipy.ndimage import gaussian_filter

    # a Gaussian blur that lowers the noise as much widens the edge more than twice
    sigma = next(s for s in np.arange(0.3, 3, 0.05) if gaussian_filter(noisy, s)[flat].std() <= out[flat].std())
    assert _edge_width(gaussian_filter(noisy, sigma)) > 2 * _edge_width(out)
    assert np.array_equal(denoise(noisy, (1.0, 1.0, 1.0), METHODS[method]), out)  # deterministic


def test_a_single_slice_is_filtered_as_a_2d_image() -> None:
    noisy, _ = _noisy_step()
    slab = noisy[:, :, :1]
    filters = (ChannelFilters(bias_field=N4, denoise=METHODS["anisotropic"]),)
    out = apply_filters(slab[None] + 1000, (1.0, 1.0, 3.0), filters)
    assert out.shape == (1, *slab.shape) and np.isfinite(out).all()


def test_plans_refuse_filters_that_do_not_fit_the_channels() -> None:
    with pytest.raises(VesaliusError, match=r"filters\[0\]\.bias_field: needs the 'zscore' normalisation"):
        Plan.from_json(_plan_json(normalization=[{"scheme": "ct", "clip": [0, 1], "mean": 0, "std": 1}]))
    with pytest.raises(VesaliusError, match="filters: needs one entry per channel"):
        Plan.from_json(_plan_json(filters=[{}, {}]))
    with pytest.raises(VesaliusError, match="conductance"):
        Denoising("curvature_flow", 5, conductance=1.0)
    assert Plan.from_json(_plan_json(filters=None)).filters is None
    assert "filters" not in to_json(Plan.from_json(_plan_json(filters=None)))  # plans without them read as before


def _plan_json(**changes: Any) -> dict[str, Any]:
    configuration = {
        "spacing": [1.0, 1.0, 1.0],
        "median_shape": [16, 16, 16],
        "patch_size": [16, 16, 16],
        "batch_size": 2,
        "strides": [[1, 1, 1], [2, 2, 2]],
        "kernels": [[3, 3, 3], [3, 3, 3]],
        "features": [4, 8],
        "iterations": 10,
    }
    plan = {
        "dataset": "x",
        "spatial_dims": 3,
        "channels": ["T1"],
        "labels": {"0": "background", "1": "a"},
        "normalization": [{"scheme": "zscore"}],
        "budget": {"device": "cpu", "time_budget_s": 60},
        "configurations": {"3d": configuration},
        "filters": [{"bias_field": to_json(N4)}],
    }
    return plan | changes


def test_the_rule_gives_n4_to_per_image_normalised_channels_and_denoising_to_all() -> None:
    norms = [{"scheme": "zscore"}, {"scheme": "ct"}]
    assert intensity_filters(norms, False, None, RULES) is None
    both = intensity_filters(norms, True, "curvature_flow", RULES)
    assert both is not None
    assert both[0]["bias_field"] == {"method": "n4", **RULES["intensity_filters"]["n4"]}
    assert "bias_field" not in both[1]
    assert both[0]["denoise"] == both[1]["denoise"] == {"method": "curvature_flow", "iterations": 5}


@pytest.fixture(scope="module")
def workspace_with_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding an imported 3-case phantom data set ``ph`` (MRI-like)."""
    root = tmp_path_factory.mktemp("filters")
    write_segmentation_dataset(root / "src", 3, seed=2)
    ws = root / "ws"
    vesalius.import_dataset(root / "src", "ph", workspace=ws)
    return ws


def test_plan_options_are_checked_before_fingerprinting(workspace_with_cases: Path) -> None:
    ws = str(workspace_with_cases)
    assert main(["plan", "ph", "-w", ws, "--denoise", "median"]) == 2
    assert not Workspace(workspace_with_cases).fingerprint_path("ph").exists()


def test_n4_is_refused_for_a_data_set_without_mri_like_channels(workspace_with_cases: Path) -> None:
    from dataclasses import replace

    from vesalius.planning.fingerprint import compute_fingerprint
    from vesalius.planning.planner import make_plan

    dataset = Dataset.load(Workspace(workspace_with_cases).dataset_dir("ph"))
    as_ct = replace(compute_fingerprint(dataset, workers=1), modalities=["CT"])
    with pytest.raises(VesaliusError, match="N4 corrects the bias field of MRI-like channels"):
        make_plan(as_ct, dataset, n4=True)
    assert make_plan(as_ct, dataset, denoise="curvature_flow").filters == (
        ChannelFilters(denoise=METHODS["curvature_flow"]),
    )


def _tiny(plan: Plan) -> Plan:
    """The plan with a two-stage network of 4 and 8 features (a quick export)."""
    return plan.with_configuration(
        "3d",
        patch_size=(16, 16, 16),
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2)),
        kernels=((3, 3, 3), (3, 3, 3)),
        features=(4, 8),
    )


def test_the_options_round_trip_from_the_plan_to_prediction_and_the_exported_runtime(
    workspace_with_cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vesalius.inference.segmentation as torch_path
    import vesalius.runtime.predictor as runtime_path
    from vesalius.deploy.export import export_model
    from vesalius.inference.model import build_trained_network
    from vesalius.planning.planner import load_plan
    from vesalius.runtime import Predictor
    from vesalius.training.segmentation import trained_configuration
    from vesalius.training.settings import SegmentationSettings

    ws = Workspace(workspace_with_cases)
    assert main(["plan", "ph", "-w", str(ws.root), "--device", "cpu"]) == 0
    plain_folder = preprocess_dataset("ph", "3d", ws)
    case = Dataset.load(ws.dataset_dir("ph")).cases[0]
    plain = np.load(plain_folder / f"{case.case_id}.npy")

    assert main(["plan", "ph", "-w", str(ws.root), "--n4", "--denoise", "anisotropic"]) == 0
    saved = json.loads(ws.plan_path("ph").read_text())
    assert saved["filters"] == [{"bias_field": to_json(N4), "denoise": to_json(METHODS["anisotropic"])}]
    folder = preprocess_dataset("ph", "3d", ws)  # the cases made without the filters are made again
    cached = np.load(folder / f"{case.case_id}.npy")
    assert cached.shape == plain.shape and not np.allclose(cached, plain, atol=1e-3)

    plan = _tiny(load_plan("ph", ws))
    trained = trained_configuration(plan, SegmentationSettings("ph").resolve(plan))
    run = tmp_path / "fold_0"
    package = ModelPackage(run)
    run.mkdir()
    package.write_setup(plan, trained, {"dataset": "ph", "config": "3d"}, {"train": [], "val": []})
    recorded = package.trained
    assert isinstance(recorded, TrainedSegmentation) and recorded.filters == plan.filters

    seen: dict[str, np.ndarray] = {}

    def torch_windows(_model: Any, data: np.ndarray, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        seen["torch"] = data
        return torch.zeros((len(recorded.labels), *data.shape[1:]))

    def runtime_windows(_run: Any, data: np.ndarray, *_args: Any, **_kwargs: Any) -> np.ndarray:
        seen["runtime"] = data
        return np.zeros((len(recorded.labels), *data.shape[1:]), np.float32)

    monkeypatch.setattr(torch_path, "predict_probabilities", torch_windows)
    monkeypatch.setattr(runtime_path, "predict_probabilities", runtime_windows)
    image, _ = Dataset.load(ws.dataset_dir("ph")).read_case(case)
    torch_path.predict_image(torch.nn.Identity(), image, recorded)
    np.testing.assert_allclose(seen["torch"], cached, atol=1e-5)

    torch.manual_seed(0)
    package.save_checkpoint("final", {"model": build_trained_network(recorded).state_dict()})
    exported = export_model(run, tmp_path / "ph.vpkg")
    predictor = Predictor(exported)
    assert predictor.contract.filters == plan.filters  # type: ignore[union-attr]
    predictor.segment(image)
    np.testing.assert_allclose(seen["runtime"], cached, atol=1e-5)

    from vesalius.deploy.monai_bundle import export_monai_bundle

    with pytest.raises(VesaliusError, match="MONAI Bundle cannot apply"):
        export_monai_bundle(run, tmp_path / "bundle")
