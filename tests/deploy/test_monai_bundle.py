"""``vesalius export --format monai-bundle``: the bundle has MONAI's layout and metadata, MONAI's own bundle workflow
(in-process, and in a process where importing Vesalius fails) gives Vesalius's label maps on the inputs' grids, a 2D
network on volumes goes through MONAI's slice inferer, a fold ensemble is one network averaging the folds'
probabilities, and what a bundle cannot say is refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import conv, trained_classification, trained_segmentation, write_package
from vesalius.data.synthetic import make_segmentation_case
from vesalius.deploy import monai_bundle
from vesalius.deploy.monai_bundle import BUNDLE_SCHEMA, EnsembleNetwork, export_monai_bundle
from vesalius.errors import VesaliusError
from vesalius.inference import segmentation
from vesalius.inference.model import LoadedModel, load_model
from vesalius.inference.segmentation import segment_files
from vesalius.io import Geometry, Image, read_image, write_image
from vesalius.metrics.segmentation import dice_per_class

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]
pytest.importorskip("nibabel", reason="MONAI reads and writes NIfTI with nibabel: pip install nibabel")

#: What MONAI's metadata schema (``BUNDLE_SCHEMA``) requires of a bundle and of each described tensor.
SCHEMA_REQUIRED = (
    "schema",
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
TENSOR_REQUIRED = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def _run_bundle(bundle: Path, images: Path, output: Path) -> list[Path]:
    """Run the bundle's inference workflow in this process, as ``python -m monai.bundle run`` does."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(bundle),
        dataset_dir=str(images),
        output_dir=str(output),
    )
    workflow.initialize()
    assert workflow.check_properties() == []  # every property of MONAI's inference workflow is where it looks
    (written,) = workflow.run()  # the evaluator's answer: the label maps it wrote
    workflow.finalize()
    assert sorted(Path(p) for p in written) == sorted(output.iterdir())
    return sorted(output.iterdir())


def _assert_same_label_maps(vesalius_files: list[Path], monai_dir: Path, labels: list[int]) -> float:
    """Each of Vesalius's label maps and the bundle's (``NAME_seg.nii.gz``) have the same grid (shape, spacing,
    origin, direction) and a Dice of at least 0.99 for every label; returns the fraction of voxels that agree."""
    agree = []
    for path in vesalius_files:
        expected = read_image(path)
        got = read_image(monai_dir / path.name.replace(".nii.gz", "_seg.nii.gz"))
        assert got.array.dtype == np.uint8 and got.spatial_shape == expected.spatial_shape
        assert got.geometry.differences(expected.geometry, atol=1e-4) == []
        dice = dice_per_class(got.array, expected.array, labels)
        assert min(dice.values()) >= 0.99, dice
        agree.append(float((got.array == expected.array).mean()))
    return min(agree)


# ---------------------------------------------------------------------------------------------------------------
# a trained phantom model (z-score in the non-zero mask, mirroring on three axes, resampled images)


@pytest.fixture(scope="module")
def bundle(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_monai_bundle(trained.run_dir, tmp_path_factory.mktemp("bundle") / "phantom")


@pytest.fixture(scope="module")
def images(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A validation case of the phantom data set (spacing off the trained grid) in a folder of its own."""
    case = json.loads((trained.run_dir / "training.json").read_text())["split"]["val"][0]
    folder = tmp_path_factory.mktemp("images")
    source = trained.run_dir.parents[3] / "datasets" / "ph" / "imagesTr" / f"{case}_0000.nii.gz"
    shutil.copy(source, folder / f"{case}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def vesalius_labels(trained: Any, images: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return segment_files(images, tmp_path_factory.mktemp("vesalius"), trained.run_dir, precision="fp32")


def test_the_bundle_has_monais_layout_metadata_and_networks(bundle: Path) -> None:
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import verify_net_in_out
    from monai.data import load_net_with_metadata

    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert files == {
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.ts",
        "models/model.pt",
        "docs/README.md",
        "LICENSE",
    }
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["schema"] == BUNDLE_SCHEMA and all(key in meta for key in SCHEMA_REQUIRED)
    assert all(
        isinstance(meta[k], str)
        for k in SCHEMA_REQUIRED
        if k not in ("required_packages_version", "network_data_format")
    )
    formats = meta["network_data_format"]
    image, pred = formats["inputs"]["image"], formats["outputs"]["pred"]
    for tensor in (image, pred, formats["post_processed_outputs"]["pred"]):
        assert all(key in tensor for key in TENSOR_REQUIRED)
    assert image["num_channels"] == 1 and image["spatial_shape"] == meta["vesalius"]["patch_size"]
    assert pred["channel_def"] == {"0": "background", "1": "organ", "2": "lesion"}  # MONAI Label's label names
    assert meta["monai_version"] == __import__("monai").__version__ and "nibabel" in meta["required_packages_version"]

    # MONAI Deploy reads the TorchScript file with both configs inside it, as ckpt_export writes them
    _, ts_meta, extra = load_net_with_metadata(str(bundle / "models" / "model.ts"), more_extra_files=["inference.json"])
    assert ts_meta["network_data_format"] == formats
    assert json.loads(extra["inference.json"]) == json.loads((bundle / "configs" / "inference.json").read_text())
    # MONAI Label instantiates network_def and loads models/model.pt into it
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    # and MONAI's own check of the network against the metadata's shapes and channels
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
    )
    readme = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle run" in readme and "## Model card" in readme


def test_monais_workflow_segments_as_vesalius_does(
    bundle: Path, images: Path, vesalius_labels: list[Path], tmp_path: Path
) -> None:
    written = _run_bundle(bundle, images, tmp_path / "monai")
    assert [p.name for p in written] == [p.name.replace(".nii.gz", "_seg.nii.gz") for p in vesalius_labels]
    # on Vesalius's grid, with its window and mirroring: voxel for voxel, but for nearest-neighbour ties
    assert _assert_same_label_maps(vesalius_labels, tmp_path / "monai", [1, 2]) >= 0.999


NO_VESALIUS = textwrap.dedent(
    """
    import sys


    class NoVesalius:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "vesalius":
                raise ImportError(f"the bundle imported {name}")
            return None


    sys.meta_path.insert(0, NoVesalius())
    from monai.bundle import run

    bundle, images, output = sys.argv[1:]
    run(
        config_file=f"{bundle}/configs/inference.json",
        meta_file=f"{bundle}/configs/metadata.json",
        logging_file=False,
        bundle_root=bundle,
        dataset_dir=images,
        output_dir=output,
    )
    assert not [m for m in sys.modules if m.split(".")[0] == "vesalius"]
    """
)


def test_the_bundle_runs_with_monai_and_torch_alone(
    bundle: Path, images: Path, vesalius_labels: list[Path], tmp_path: Path
) -> None:
    command = [sys.executable, "-c", NO_VESALIUS, str(bundle), str(images), str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # small tensors: one thread is as fast, and immune to busy cores
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_label_maps(vesalius_labels, tmp_path / "out", [1, 2])


def test_a_fold_ensemble_is_one_network_averaging_the_folds_probabilities(trained: Any, tmp_path: Path) -> None:
    from vesalius.model_package import ModelPackage

    folds = tmp_path / "3d"
    for fold in ("fold_0", "fold_1"):
        shutil.copytree(trained.run_dir, folds / fold, ignore=shutil.ignore_patterns("validation", "tensorboard"))
    other = ModelPackage(folds / "fold_1")
    state = other.load_checkpoint("final")
    generator = torch.Generator().manual_seed(1)
    state["model"] = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in state["model"].items()
    }
    other.save_checkpoint("final", state)
    bundle = export_monai_bundle(folds, tmp_path / "ensemble")
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["vesalius"]["folds"] == ["fold_0", "fold_1"]
    network = torch.jit.load(bundle / "models" / "model.ts")
    x = torch.randn((2, 1, 16, 16, 16), generator=generator)
    mirror_axes = meta["vesalius"]["mirror_axes"]
    with torch.no_grad():
        got = torch.softmax(network(x), dim=1)
        each = [EnsembleNetwork([load_model(folds / f).network], mirror_axes)(x) for f in ("fold_0", "fold_1")]
    expected = sum(torch.softmax(logits, dim=1) for logits in each) / 2
    assert not torch.allclose(each[0], each[1], atol=1e-2)  # two different folds
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# oracle networks: whatever the configuration, the bundle's pipeline is Vesalius's

SCALE = 400.0  # image intensity: 0 outside the body, 100 + 100 * label inside
CENTRES = (0.125, 0.5, 0.75)  # normalised intensity of each class (background covers 0 and 0.25)


class _Oracle(nn.Module):
    """A 1x1 convolution whose argmax is the class whose centre is nearest to the normalised intensity."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.conv = conv(ndim, 1, len(CENTRES))
        c, sharpness = torch.tensor(CENTRES), 200.0
        with torch.no_grad():
            self.conv.weight.copy_((sharpness * c).reshape(self.conv.weight.shape))
            self.conv.bias.copy_(-sharpness * c**2 / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _oracle_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    scheme: dict,
    keep_largest: tuple[int, ...] = (),
    **fields: Any,
) -> Path:
    """A run folder whose 'network' is the oracle, for the export and for Vesalius's prediction alike; it decided to
    keep the largest component of the classes ``keep_largest``."""
    run = tmp_path / "run"
    trained = trained_segmentation(config, (scheme,), **fields)
    package = write_package(run, trained, {"train": [], "val": []})
    package.write_postprocessing({"keep_largest_component": list(keep_largest), "connectivity": "full"})
    model = LoadedModel(_Oracle(len(trained.configuration.patch_size)).eval(), package)
    for module in (monai_bundle, segmentation):
        monkeypatch.setattr(module, "load_ensemble", lambda *args, **kwargs: [model])
    return run


def _oblique(degrees: float) -> tuple[float, ...]:
    a = np.deg2rad(degrees)
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return tuple((rotation @ np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])).ravel())


def _encoded_case(folder: Path, spacing: tuple[float, ...]) -> Image:
    """A phantom whose intensity encodes its label (0 outside the body, 100 + 100 * label inside), written with an
    oblique, permuted geometry to ``folder/case.nii.gz``; returns the label map."""
    image, label = make_segmentation_case(7, ndim=3, shape=(36, 40, 14), spacing=spacing)
    body = (image.array > 0) | (label.array > 0)
    encoded = np.where(body, 100.0 + 100.0 * label.array, 0.0).astype(np.float32)
    geometry = Geometry(spacing, (-12.5, 40.25, 3.0), _oblique(30.0))
    write_image(Image(encoded, geometry), folder / "case.nii.gz")
    return Image(label.array, geometry)


@pytest.mark.parametrize(
    ("config", "scheme", "fields", "spacing"),
    [
        (  # a 3D network on thick slices (nearest neighbour across them), scaled intensities, keep-largest
            "3d",
            {"scheme": "scale", "low": 0.0, "high": SCALE},
            {"spacing": [1.0, 1.0, 1.5], "patch_size": [16, 16, 8], "mirror_axes": [0, 1], "batch_size": 2},
            (0.83, 0.71, 2.7),
        ),
        (  # a 2D network slice by slice (MONAI's SliceInferer), CT clipping and shifting
            "2d",
            {"scheme": "ct", "clip": [0.0, SCALE], "mean": 0.0, "std": SCALE},
            {"spacing": [1.0, 1.0], "spacing_full": [1.0, 1.0, 2.0], "patch_size": [16, 16], "slice_axis": 2},
            (1.13, 0.91, 2.0),
        ),
    ],
)
def test_an_oracle_gives_vesalius_label_maps_through_the_bundle(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    scheme: dict,
    fields: dict,
    spacing: tuple[float, ...],
) -> None:
    label = _encoded_case(tmp_path / "images", spacing)
    run = _oracle_run(tmp_path, monkeypatch, config, scheme, **fields)
    bundle = export_monai_bundle(run, tmp_path / "bundle")
    assert ("SliceInferer" in (bundle / "configs" / "inference.json").read_text()) == (config == "2d")
    expected = segment_files(tmp_path / "images", tmp_path / "vesalius", run, precision="fp32")
    _run_bundle(bundle, tmp_path / "images", tmp_path / "monai")
    assert _assert_same_label_maps(expected, tmp_path / "monai", [1, 2]) == 1.0  # no ties on these grids
    assert (read_image(expected[0]).array == label.array).mean() > 0.95  # the oracle's map is the label, nearly


def test_the_largest_component_is_kept_as_vesalius_decided(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("skimage", reason="MONAI keeps the largest component with scikit-image on the CPU")
    _encoded_case(tmp_path / "images", (1.0, 1.0, 2.0))
    case = read_image(tmp_path / "images" / "case.nii.gz")
    array = case.array.copy()
    array[0, 1:4, 1:4, 1:3] = 200.0  # a stray blob of organ, apart from the organ
    write_image(case.with_array(array), tmp_path / "images" / "case.nii.gz")
    scheme = {"scheme": "scale", "low": 0.0, "high": SCALE}
    run = _oracle_run(
        tmp_path, monkeypatch, "3d", scheme, keep_largest=(1,), spacing=[1.0, 1.0, 2.0], patch_size=[16, 16, 8]
    )
    bundle = export_monai_bundle(run, tmp_path / "bundle")
    assert "scikit-image" in json.loads((bundle / "configs" / "metadata.json").read_text())["required_packages_version"]
    expected = segment_files(tmp_path / "images", tmp_path / "vesalius", run, precision="fp32")
    _run_bundle(bundle, tmp_path / "images", tmp_path / "monai")
    assert _assert_same_label_maps(expected, tmp_path / "monai", [1, 2]) == 1.0
    assert not read_image(expected[0]).array[0, 1:4, 1:4, 1:3].any()  # the blob was removed


def test_several_channels_come_as_one_4d_file_normalised_in_one_mask(tmp_path: Path) -> None:
    """Channels of different extents: Vesalius's z-score mask is the voxels non-zero in any channel, zeros of the
    smaller channel included; the bundle's preprocessing gives the network the same array."""
    import nibabel as nib
    from monai.bundle import ConfigParser

    from vesalius.preprocessing.pipeline import preprocess_image

    rng = np.random.default_rng(0)
    array = np.zeros((30, 28, 12, 2), np.float32)  # (X, Y, Z, C): MSD's 4D layout
    array[5:25, 4:24, 2:10, 0] = rng.random((20, 20, 8)) * 100 + 50
    array[6:26, 4:22, 2:11, 1] = rng.random((20, 18, 9)) * 300 + 10
    affine = np.array([[0.0, 0.9, 0.0, 10.0], [0.8, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(array[..., 0], affine), tmp_path / "channel0.nii.gz")
    image = Image(np.ascontiguousarray(array.transpose(3, 0, 1, 2)), read_image(tmp_path / "channel0.nii.gz").geometry)
    schemes = ({"scheme": "zscore", "use_nonzero_mask": True},) * 2
    trained = trained_segmentation("3d", schemes, spacing=[1.0, 1.0, 2.0], patch_size=[16, 16, 8])
    package = write_package(tmp_path / "run", trained, {"train": [], "val": []})
    expected, _, _ = preprocess_image(image, None, trained.configuration.resampling_spacing, trained.normalization)
    parser = ConfigParser(monai_bundle.inference_config([LoadedModel(nn.Identity(), package)]))
    got = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "case.nii.gz")})["image"]
    assert tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_a_zip_output_is_the_bundle_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _oracle_run(
        tmp_path, monkeypatch, "3d", {"scheme": "zscore", "use_nonzero_mask": True}, patch_size=[16, 16, 8]
    )
    archive = export_monai_bundle(run, tmp_path / "organs.zip")
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"organs/configs/metadata.json", "organs/configs/inference.json", "organs/models/model.ts"} <= names


def test_what_a_bundle_cannot_say_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    classifier = tmp_path / "classifier"
    write_package(classifier, trained_classification({0: "absent", 1: "present"}), {"train": [], "val": []})
    flat = tmp_path / "flat"
    write_package(flat, trained_segmentation("2d", patch_size=[16, 16]), {"train": [], "val": []})
    mixed = tmp_path / "mixed"
    two_schemes = ({"scheme": "zscore"}, {"scheme": "scale", "low": 0.0, "high": 1.0})
    write_package(mixed, trained_segmentation("3d", two_schemes, patch_size=[16, 16, 8]), {"train": [], "val": []})
    for model, problem in (
        (classifier, "segmentation models only"),
        (flat, "3D images only"),
        (mixed, "channels normalised differently"),
    ):
        with pytest.raises(VesaliusError, match=problem) as caught:
            export_monai_bundle(model, tmp_path / "out")
        assert "\n" not in str(caught.value)
    precious = tmp_path / "documents"
    (precious / "notes.txt").parent.mkdir()
    (precious / "notes.txt").write_text("keep me")
    run = _oracle_run(tmp_path, monkeypatch, "3d", {"scheme": "scale", "low": 0.0, "high": 1.0}, patch_size=[16, 16, 8])
    with pytest.raises(VesaliusError, match="not a MONAI Bundle"):
        export_monai_bundle(run, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(VesaliusError, match="inputs are never written to"):
        export_monai_bundle(run, run / "bundle")
