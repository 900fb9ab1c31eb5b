"""``compress_package --int8``: the new package opens (every member hashed), its ONNX networks are QDQ int8 and
predict what the float32 ones predict, every other member is the original's, the model card records the method,
the calibration and the figures, the calibration inputs are the windows the runtime feeds the network, and a
missing data set or an impossible calibration count is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import vesalius
from tests.helpers import trained_classification, write_package
from vesalius.data.dataset import Case, Dataset
from vesalius.data.synthetic import write_classification_dataset
from vesalius.deploy.compress import (
    METADATA_KEY,
    METHOD,
    WINDOWS_PER_CASE,
    calibration_batches,
    calibration_cases,
    compress_package,
)
from vesalius.deploy.export import export_model
from vesalius.errors import VesaliusError
from vesalius.inference.model import build_trained_network
from vesalius.metrics.segmentation import dice_per_class
from vesalius.model_package import ModelPackage
from vesalius.runtime import Predictor
from vesalius.runtime.package import Package
from vesalius.workspace import Workspace

pytestmark = pytest.mark.slow

#: int8 and float32 label maps must agree to this Dice per foreground class. Rounding the activations to 1/255 of
#: their calibrated range moves logits by about a percent, which can only flip voxels where two classes are nearly
#: tied, i.e. on the boundary of a structure: a few percent of a phantom organ's voxels (on Hippocampus fold 0 the
#: agreement is 0.99).
AGREEMENT = 0.9


@pytest.fixture(scope="module")
def packages(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(float32 package, its int8 compression calibrated on 2 cases and validated on 2, the workspace)."""
    folder = tmp_path_factory.mktemp("compress")
    workspace = trained.run_dir.parents[3]
    original = export_model(trained.run_dir, folder / "phantom.vpkg")
    compressed = compress_package(
        original, folder / "phantom_int8.vpkg", int8=True, calibration=2, workspace=workspace, validation=2
    )
    return original, compressed, workspace


def _onnx(package: Path) -> onnx.ModelProto:
    with Package(package) as opened:
        return onnx.load_from_string(opened.read(opened.contract.network.onnx[0]))


def test_the_int8_package_opens_and_keeps_every_other_member(packages: tuple[Path, Path, Path]) -> None:
    original, compressed, _ = packages
    with Package(original) as a, Package(compressed) as b:  # opening checks every member's SHA-256
        assert b.members == a.members
        changed = {m for m in a.members if a.read(m) != b.read(m)}
        assert changed == {"models/fold_0.onnx", "model_card.json", "MODEL_CARD.md"}  # .pt2 stay float32
        assert b.contract == a.contract
        assert len(b.read("models/fold_0.onnx")) < 0.6 * len(a.read("models/fold_0.onnx"))
    model = _onnx(compressed)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {p.key: p.value for p in model.metadata_props}[METADATA_KEY] == METHOD
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 5]
    assert weights, "no int8 convolution weights"
    assert _float_output_layer(model, "logits")


def _float_output_layer(model: onnx.ModelProto, output: str) -> bool:
    """Whether the graph's ``output`` comes from float32 arithmetic: its producer is not a dequantisation and reads
    no dequantised tensor, or is a weighted layer whose weights are float32 initialisers."""
    producer = {o: node for node in model.graph.node for o in node.output}
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    last = producer[output]
    if last.op_type == "DequantizeLinear":
        return False
    if last.op_type in ("Conv", "Gemm"):
        return last.input[1] in floats
    return all(i not in producer or producer[i].op_type != "DequantizeLinear" for i in last.input)


def test_int8_predicts_what_float32_predicts(packages: tuple[Path, Path, Path], trained: Any) -> None:
    original, compressed, workspace = packages
    with Package(original) as opened:
        card, contract = opened.json("model_card.json"), opened.contract
    dataset = Dataset.load(Workspace(workspace).dataset_dir(contract.dataset))
    image, _ = dataset.read_case(dataset.case(card["split"]["fold_0"]["validation"][0]))
    fp32, int8 = Predictor(original).segment(image), Predictor(compressed).segment(image)
    present = [k for k in (1, 2) if (fp32.array == k).any()]
    assert present, "the phantom model predicts no foreground"
    agreement = dice_per_class(int8.array[0], fp32.array[0], present)
    assert min(agreement.values()) >= AGREEMENT, agreement


def test_the_card_records_the_compression_and_its_figures(packages: tuple[Path, Path, Path]) -> None:
    _, compressed, _ = packages
    with Package(compressed) as opened:
        card = opened.json("model_card.json")
        markdown = opened.read("MODEL_CARD.md").decode()
    record = card["compression"]
    assert record["method"] == METHOD and record["calibration_cases"] == 2
    validation = set(card["split"]["fold_0"]["validation"])
    assert len(record["calibration"]["fold_0"]) == 2 and not set(record["calibration"]["fold_0"]) & validation
    figures = record["figures"]
    assert figures["validation_cases"] == 2  # validation=2 of the 3 listed
    assert 0 < figures["dice_fp32"] <= 1 and 0 < figures["dice_int8"] <= 1
    assert figures["ratio"] == pytest.approx(figures["dice_int8"] / figures["dice_fp32"], abs=1e-3)
    assert figures["dice_int8_vs_fp32"] >= AGREEMENT
    assert {"dice_fp32_organ", "dice_int8_lesion"} <= figures.keys()
    assert "float32" in record["description"] and ".pt2" in record["description"]
    assert "## Compression" in markdown and f"- dice_int8: {figures['dice_int8']}" in markdown


def test_calibration_inputs_are_the_windows_the_runtime_feeds(packages: tuple[Path, Path, Path]) -> None:
    original, _, workspace = packages
    predictor = Predictor(original)
    contract = predictor.contract
    dataset = Dataset.load(Workspace(workspace).dataset_dir(contract.dataset))
    case = dataset.cases[0]
    fed: list[np.ndarray] = []
    run = predictor._run

    def recording(session: Any) -> Any:
        def predict(batch: np.ndarray) -> np.ndarray:
            fed.append(batch.copy())
            return run(session)(batch)

        return predict

    predictor._run = recording  # type: ignore[method-assign]
    predictor.segment(dataset.read_case(case)[0])
    flips = 2 ** len(contract.window.mirror_axes)
    batches = list(calibration_batches(dataset, [case], contract))
    assert sum(len(b) for b in batches) <= WINDOWS_PER_CASE
    for batch in batches:
        assert batch.dtype == np.float32 and batch.shape[1:] == (1, *contract.window.patch_size)
        assert len(batch) <= contract.window.batch_size
    if len(fed) // flips <= WINDOWS_PER_CASE:  # every window: the runtime's unmirrored batches, in its order
        unmirrored = fed[::flips]
        assert len(batches) == len(unmirrored)
        for ours, runtime in zip(batches, unmirrored, strict=True):
            np.testing.assert_array_equal(ours, runtime)


def test_calibration_cases_are_training_cases_and_too_many_are_refused(
    packages: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    original, _, workspace = packages
    with Package(original) as opened:
        card = opened.json("model_card.json")
    dataset = Dataset.load(Workspace(workspace).dataset_dir("ph"))
    dataset.cases.append(Case("held_out", ["imagesTr/held_out_0000.nii.gz"], split="test"))
    validation = set(card["split"]["fold_0"]["validation"])
    training = len(dataset.cases) - 1 - len(validation)
    chosen = calibration_cases(dataset, card, "fold_0", training, original)
    assert {c.case_id for c in chosen} == {c.case_id for c in dataset.cases} - validation - {"held_out"}
    assert calibration_cases(dataset, card, "fold_0", 3, original) == calibration_cases(
        dataset, card, "fold_0", 3, original
    )  # a fixed draw
    output = tmp_path / "out.vpkg"
    with pytest.raises(VesaliusError) as error:
        compress_package(original, output, int8=True, calibration=training + 1, workspace=workspace)
    message = str(error.value)
    assert f"--calibration {training + 1} asks for more cases than the {training} training cases" in message
    assert f"give --calibration {training} or fewer" in message.lower()
    assert not output.exists()


def test_a_missing_data_set_is_refused_in_one_line(packages: tuple[Path, Path, Path], tmp_path: Path) -> None:
    original, _, _ = packages
    empty = tmp_path / "empty_ws"
    with pytest.raises(VesaliusError) as error:
        compress_package(original, tmp_path / "out.vpkg", int8=True, workspace=empty)
    message = str(error.value)
    assert "\n" not in message
    assert "data set 'ph'" in message and str(empty / "datasets" / "ph") in message
    assert "--workspace" in message and "vesalius import" in message
    assert not (tmp_path / "out.vpkg").exists()


def test_other_misuse_is_refused(packages: tuple[Path, Path, Path], tmp_path: Path) -> None:
    original, compressed, workspace = packages
    with pytest.raises(VesaliusError, match="Give --int8"):
        compress_package(original, tmp_path / "a.vpkg", int8=False, workspace=workspace)
    with pytest.raises(VesaliusError, match="--calibration must be a whole number"):
        compress_package(original, tmp_path / "a.vpkg", int8=True, calibration=0, workspace=workspace)
    with pytest.raises(VesaliusError, match="already compressed"):
        compress_package(compressed, tmp_path / "b.vpkg", int8=True, workspace=workspace)
    with pytest.raises(VesaliusError, match="inputs are never written to"):
        compress_package(original, original, int8=True, workspace=workspace)
    with pytest.raises(VesaliusError, match=r"\.vpkg"):
        compress_package(original, tmp_path / "c.zip", int8=True, workspace=workspace)


def test_a_classifier_is_calibrated_on_prepared_images_and_validated(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_classification_dataset(tmp_path / "src", num_cases=8, seed=3)
    vesalius.import_dataset(tmp_path / "src", "cls", workspace=ws)
    dataset = Dataset.load(Workspace(ws).dataset_dir("cls"))
    ids = [c.case_id for c in dataset.cases]
    trained = trained_classification({0: "absent", 1: "present"}, dataset="cls")
    run = ws / "runs" / "cls" / "cnn" / "fold_0"
    write_package(run, trained, {"train": ids[:4], "val": ids[5:]})  # ids[4]: in neither list (added later)
    torch.manual_seed(0)
    ModelPackage(run).save_checkpoint("final", {"model": build_trained_network(trained).state_dict()})
    original = export_model(run, tmp_path / "cls.vpkg")
    compressed = compress_package(original, tmp_path / "cls_int8.vpkg", int8=True, calibration=3, workspace=ws)
    with Package(compressed) as opened:
        record = opened.json("model_card.json")["compression"]
        model = onnx.load_from_string(opened.read("models/fold_0.onnx"))
    assert "QuantizeLinear" in {n.op_type for n in model.graph.node}
    assert _float_output_layer(model, "probabilities")  # probabilities keep their float resolution
    assert set(record["calibration"]["fold_0"]) <= set(ids[:4]) and len(record["calibration"]["fold_0"]) == 3
    figures = record["figures"]
    assert figures["validation_cases"] == 3
    assert {"accuracy_fp32", "accuracy_int8", "auc_fp32", "auc_int8", "agreement", "ratio"} <= figures.keys()
    image, _ = dataset.read_case(dataset.cases[-1])
    fp32, int8 = Predictor(original).classify(image), Predictor(compressed).classify(image)
    assert np.abs(fp32 - int8).max() < 0.05
    json.dumps(record)  # JSON-ready
