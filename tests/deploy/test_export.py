"""``vesalius export`` and the torch-free runtime: the package holds what it says (checked ONNX with dynamic sizes, a
contract that reads back, a model card with intervals, every member hashed), ONNX Runtime predicts what torch predicts
on the same package (label maps voxel for voxel, probabilities to 1e-4), without importing torch or MONAI, and every
damaged package or unfit input is refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import vesalius
from vesalius.cli import main
from vesalius.errors import VesaliusError
from vesalius.io import read_image
from vesalius.metrics.segmentation import dice_per_class
from vesalius.runtime import Predictor
from vesalius.runtime.contract import ClassificationContract, SegmentationContract
from vesalius.runtime.package import MANIFEST, Package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segmentation_package(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vesalius.export(trained.run_dir, tmp_path_factory.mktemp("export") / "phantom.vpkg")


@pytest.fixture(scope="module")
def classification_package(trained_synthetic: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vesalius.export(trained_synthetic.run_dir, tmp_path_factory.mktemp("export") / "lesions.vpkg")


def _validation_images(trained: Any) -> list[Path]:
    split = json.loads((trained.run_dir / "training.json").read_text())["split"]
    images = trained.run_dir.parents[3] / "datasets" / "ph" / "imagesTr"
    return [images / f"{case}_0000.nii.gz" for case in split["val"]]


def test_the_package_holds_checked_networks_the_contract_the_card_and_hashes(
    segmentation_package: Path, trained: Any
) -> None:
    with Package(segmentation_package) as package:
        contract = package.contract
        assert isinstance(contract, SegmentationContract)
        assert set(package.members) >= {
            "vesalius.json",
            "models/fold_0.onnx",
            "models/fold_0.pt2",
            "window_weights.npy",
            "fingerprint.json",
            "model_card.json",
            "MODEL_CARD.md",
            "folds/fold_0/model.json",
        }
        model = onnx.load_from_string(package.read("models/fold_0.onnx"))
        card = package.json("model_card.json")
        markdown = package.read("MODEL_CARD.md").decode()
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True, True]  # batch and spatial sizes dynamic
    trained_json = json.loads((trained.run_dir / "model.json").read_text())
    assert list(contract.window.patch_size) == trained_json["configuration"]["patch_size"]
    assert contract.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert contract.normalization[0].scheme == "zscore"
    validation = card["validation"]
    summary = json.loads((trained.run_dir / "validation" / "summary.json").read_text())
    for name in ("organ", "lesion"):
        low, high = validation["per_class"][name]["ci95"]
        assert low <= validation["per_class"][name]["mean"] <= high
        assert validation["per_class"][name]["mean"] == pytest.approx(summary["dice"][name])
    assert (
        card["split"]["fold_0"]["validation"]
        == json.loads((trained.run_dir / "training.json").read_text())["split"]["val"]
    )
    assert (
        card["split"]["fold_0"]["training"]
        == json.loads((trained.run_dir / "training.json").read_text())["split"]["train"]
    )
    assert "## Limitations" in markdown and "95%" in markdown


def test_onnx_runtime_segments_as_torch_does_on_the_same_package(
    segmentation_package: Path, trained: Any, tmp_path: Path
) -> None:
    images = _validation_images(trained)
    source = tmp_path / "images"
    source.mkdir()
    for image in images:
        shutil.copy(image, source / image.name)
    ort_files = vesalius.predict(source, tmp_path / "ort", segmentation_package)
    torch_files = vesalius.predict(source, tmp_path / "torch", trained.run_dir, precision="fp32")
    exported_files = vesalius.predict(
        source, tmp_path / "exported", segmentation_package, backend="torch", precision="fp32"
    )
    for ort_file, torch_file, exported_file in zip(ort_files, torch_files, exported_files, strict=True):
        a, b, c = read_image(ort_file), read_image(torch_file), read_image(exported_file)
        assert a.geometry.is_close(b.geometry) and a.array.shape == b.array.shape
        assert (a.array == b.array).mean() >= 0.999
        assert (c.array == b.array).mean() >= 0.999
        assert min(dice_per_class(a.array, b.array, [1, 2]).values()) >= 0.999


def test_fast_and_probabilities_agree_with_torch(segmentation_package: Path, trained: Any, tmp_path: Path) -> None:
    from vesalius.inference.model import load_model
    from vesalius.inference.segmentation import FAST_STEP, predict_image

    image = read_image(_validation_images(trained)[0])
    labels, probabilities = Predictor(segmentation_package).segment(image, fast=True, return_probabilities=True)
    model = load_model(trained.run_dir)
    expected_labels, expected = predict_image(
        model.network, image, model.trained, mirror_axes=(), step=FAST_STEP, precision="fp32", return_probabilities=True
    )
    assert probabilities.array.shape == expected.array.shape
    np.testing.assert_allclose(probabilities.array, expected.array, atol=1e-4)
    assert (labels.array == expected_labels.array).mean() >= 0.999


def test_a_fold_ensemble_exports_one_network_per_fold(trained: Any, tmp_path: Path) -> None:
    folds = tmp_path / "3d"
    for fold in ("fold_0", "fold_1"):
        shutil.copytree(trained.run_dir, folds / fold)
    package = vesalius.export(folds, tmp_path / "ensemble.vpkg")
    predictor = Predictor(package)
    assert predictor.contract.network.onnx == ("models/fold_0.onnx", "models/fold_1.onnx")
    image = read_image(_validation_images(trained)[0])
    single = vesalius.predict(image_path := _validation_images(trained)[0], tmp_path / "one.nii.gz", trained.run_dir)
    both = predictor.segment(image)
    assert (read_image(single[0]).array == both.array).mean() >= 0.999  # the same fold twice: the same answer
    assert image_path.exists()


def test_a_folder_package_reads_like_the_zip(trained: Any, segmentation_package: Path, tmp_path: Path) -> None:
    folder = vesalius.export(trained.run_dir, tmp_path / "phantom", as_folder=True)
    assert (folder / MANIFEST).is_file() and (folder / "models" / "fold_0.onnx").is_file()
    image = read_image(_validation_images(trained)[0])
    np.testing.assert_array_equal(
        Predictor(folder).segment(image).array, Predictor(segmentation_package).segment(image).array
    )


def test_classification_probabilities_agree_with_torch_to_1e4(
    classification_package: Path, trained_synthetic: Any, tmp_path: Path
) -> None:
    contract = Predictor(classification_package).contract
    assert isinstance(contract, ClassificationContract) and contract.network.output_name == "probabilities"
    source = tmp_path / "images"
    for i in range(10):
        _classification_image(source, i)
    ort_csv = vesalius.predict(source, tmp_path / "ort.csv", classification_package)
    torch_csv = vesalius.predict(source, tmp_path / "torch.csv", trained_synthetic.run_dir, precision="fp32")
    exported_csv = vesalius.predict(source, tmp_path / "x.csv", classification_package, backend="torch")
    ort, reference, exported = (
        np.genfromtxt(p, delimiter=",", skip_header=1)[:, 3:] for p in (ort_csv, torch_csv, exported_csv)
    )
    assert ort.shape[0] >= 8
    np.testing.assert_allclose(ort, reference, atol=1e-4)
    np.testing.assert_allclose(exported, reference, atol=1e-4)
    assert ort_csv.read_text().splitlines()[0] == torch_csv.read_text().splitlines()[0]


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "monai", "onnx", "onnxscript"):
            raise ImportError(f"{name} is blocked")
        return None
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_the_runtime_runs_with_torch_and_monai_impossible_to_import(
    task: str, segmentation_package: Path, classification_package: Path, trained: Any, tmp_path: Path
) -> None:
    package = segmentation_package if task == "segmentation" else classification_package
    source = _validation_images(trained)[0] if task == "segmentation" else _classification_image(tmp_path, 3)
    output = tmp_path / ("labels" if task == "segmentation" else "predictions.csv")
    script = BLOCK_TORCH + textwrap.dedent(
        f"""
        from vesalius.cli import main
        code = main(["predict", "-i", {str(source)!r}, "-o", {str(output)!r}, "-m", {str(package)!r}])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai"))
        print("exit", code, "loaded", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "exit 0 loaded []" in result.stdout, result.stdout + result.stderr
    assert output.exists()


def _classification_image(folder: Path, seed: int) -> Path:
    from vesalius.data.synthetic import make_classification_case
    from vesalius.io import write_image

    image = make_classification_case(100 + seed, seed % 2 == 1, shape=(48, 48))
    return write_image(image, folder / f"case{seed:02d}.nii.gz")


# -- bad packages and inputs ------------------------------------------------------------------------------------------
def _rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the zip ``source`` with members replaced (bytes), removed (None) or added."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            if info.filename not in change:
                copy.writestr(info.filename, original.read(info.filename))
        for name, data in change.items():
            if data is not None:
                copy.writestr(name, data)
    return target


def _error(package: Path) -> str:
    with pytest.raises(VesaliusError) as caught:
        Package(package)
    return caught.value.one_line()


def test_a_changed_member_is_refused_naming_it(segmentation_package: Path, tmp_path: Path) -> None:
    onnx_bytes = zipfile.ZipFile(segmentation_package).read("models/fold_0.onnx")
    tampered = _rewrite(segmentation_package, tmp_path / "t.vpkg", {"models/fold_0.onnx": onnx_bytes[:-10] + b"0" * 10})
    assert "member 'models/fold_0.onnx' does not match its SHA-256" in _error(tampered)
    removed = _rewrite(segmentation_package, tmp_path / "r.vpkg", {"window_weights.npy": None})
    assert "member 'window_weights.npy' is missing" in _error(removed)
    added = _rewrite(segmentation_package, tmp_path / "a.vpkg", {"extra.py": b"print('hello')"})
    assert "member 'extra.py' is not in the manifest" in _error(added)


def test_a_truncated_package_is_refused(segmentation_package: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.vpkg"
    truncated.write_bytes(segmentation_package.read_bytes()[: segmentation_package.stat().st_size // 2])
    message = _error(truncated)
    assert str(truncated) in message and "copy or export the package again" in message.lower()


def test_a_package_of_a_newer_format_is_refused_with_the_remedy(segmentation_package: Path, tmp_path: Path) -> None:
    manifest = json.loads(zipfile.ZipFile(segmentation_package).read(MANIFEST))
    manifest["format_version"] = 99
    newer = _rewrite(segmentation_package, tmp_path / "n.vpkg", {MANIFEST: json.dumps(manifest).encode()})
    assert "format version 99; this Vesalius reads up to 1" in _error(newer) and "upgrade" in _error(newer).lower()


def test_a_contract_with_a_wrong_value_names_the_key(segmentation_package: Path, tmp_path: Path) -> None:
    from vesalius.runtime.package import write_package

    with zipfile.ZipFile(segmentation_package) as z:
        members = {n: z.read(n) for n in z.namelist() if n != MANIFEST}
    contract = json.loads(members["vesalius.json"])
    contract["window"]["patch_size"][0] = "x"
    members["vesalius.json"] = json.dumps(contract).encode()
    broken = write_package(members, tmp_path / "b.vpkg")
    assert "window.patch_size[0]" in _error(broken)


def test_wrong_inputs_and_options_get_one_line(
    segmentation_package: Path, trained: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = read_image(_validation_images(trained)[0])
    two = tmp_path / "two"
    two.mkdir()
    for channel in ("0000", "0001"):
        shutil.copy(_validation_images(trained)[0], two / f"case_{channel}.nii.gz")
    with pytest.raises(VesaliusError, match=r"2 channel\(s\); the model takes 3D images with 1 channel"):
        Predictor(segmentation_package).segment(image.with_array(np.concatenate([image.array] * 2)))
    assert main(["predict", "-i", str(two), "-o", str(tmp_path / "o"), "-m", str(segmentation_package)]) == 2
    assert (
        main(["predict", "-i", str(two), "-o", str(tmp_path / "o"), "-m", str(segmentation_package), "--explain"]) == 2
    )
    run_on_ort = [
        "predict",
        "-i",
        str(two),
        "-o",
        str(tmp_path / "o"),
        "-m",
        str(trained.run_dir),
        "--backend",
        "onnxruntime",
    ]
    assert main(run_on_ort) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert "second channel" in errors[0] or "channels" in errors[0]
    assert "explain does not apply" in errors[1]
    assert "Export it first: vesalius export" in errors[2]


def test_export_refuses_to_overwrite_the_model(trained: Any) -> None:
    with pytest.raises(VesaliusError, match="inputs are never written to"):
        vesalius.export(trained.run_dir, trained.run_dir / "model.vpkg")


# -- the validation outputs: the reference of output drift ----------------------------------------------------------
def test_the_package_holds_the_validation_volumes_in_ml(segmentation_package: Path, trained: Any) -> None:
    with Package(segmentation_package) as package:
        stored = package.json("reference_outputs.json")
    files = sorted((trained.run_dir / "validation").glob("*.nii.gz"))
    assert {k: stored[k] for k in ("schema_version", "task", "cases")} == {
        "schema_version": 1,
        "task": "segmentation",
        "cases": len(files),
    }
    assert len(files) == len(json.loads((trained.run_dir / "training.json").read_text())["split"]["val"])
    for name, value in (("organ", 1), ("lesion", 2)):
        expected = []
        for path in files:
            label_map = read_image(path)
            voxel_mm3 = float(np.prod(label_map.geometry.spacing))  # anisotropic phantom spacing
            expected.append(int((label_map.array == value).sum()) * voxel_mm3 / 1000)
        assert stored["features"][f"volume_ml:{name}"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert max(stored["features"]["volume_ml:organ"]) > 0


def test_the_package_holds_the_validation_probabilities(classification_package: Path, trained_synthetic: Any) -> None:
    import csv

    with Package(classification_package) as package:
        stored = package.json("reference_outputs.json")
    with (trained_synthetic.run_dir / "validation" / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert stored["task"] == "classification" and stored["cases"] == len(rows) > 0
    assert set(stored["features"]) == {"probability:absent", "probability:present"}
    for name in ("absent", "present"):
        assert stored["features"][f"probability:{name}"] == pytest.approx([float(r[f"p_{name}"]) for r in rows])


def test_a_run_without_validation_has_no_reference_outputs(trained: Any, tmp_path: Path) -> None:
    from vesalius.deploy.export import reference_outputs
    from vesalius.model_package import find_packages

    fold = tmp_path / "fold_0"
    shutil.copytree(trained.run_dir, fold, ignore=shutil.ignore_patterns("validation", "checkpoint_*", "tensorboard"))
    assert reference_outputs(find_packages(fold)) is None
    assert reference_outputs(find_packages(trained.run_dir)) is not None
