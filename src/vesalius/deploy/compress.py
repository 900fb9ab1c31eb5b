"""``vesalius compress``: an exported package with INT8 networks, checked on the validation cases.

INT8 (``int8=True``): every ONNX network of the package is quantised by ONNX Runtime's static quantisation
(:func:`onnxruntime.quantization.quantize_static`) in the QDQ format: weights int8 per output channel, activations
uint8 with one scale and zero point per tensor, both from the minimum and maximum seen on calibration inputs. The
calibration inputs are what the runtime would feed the network, made from ``calibration`` training cases of the
model's data set (read from the workspace): for segmentation the windows the sliding window cuts from each case
preprocessed as :class:`vesalius.runtime.Predictor` preprocesses it (the runtime's own code places and pads them; at
most :data:`WINDOWS_PER_CASE` per case, drawn with a fixed seed), for classification the prepared images. Training
cases are those the model card lists for the fold.

What stays float32 (:class:`Int8Settings`), measured on the Hippocampus U-Net (``Conv``, ``InstanceNormalization``,
``LeakyRelu``, ``Add``, ``Concat``, ``ConvTranspose``) with ONNX Runtime 1.32 on an AVX-512 VNNI / AMX CPU:

- normalisations (instance, batch, layer): ONNX Runtime's CPU provider has no int8 kernel for them, so quantising
  them only adds a dequantise/quantise pair (no faster, no more accurate);
- the output layer: the last weighted layer before each graph output and everything after it (a classifier's
  softmax or sigmoids), so that logits and probabilities keep their float resolution;
- activations are uint8, not int8: with int8 activations ONNX Runtime fused only 8 of the 22 convolutions into
  ``QLinearConv`` (the others ran in float32 on weights dequantised at every call), with uint8 all 22 (u8 x s8 is
  the VNNI instruction), which took the network from no faster than float32 to about 1.6x faster.

``ConvTranspose`` weights are stored int8, but ONNX Runtime's CPU provider runs the transposed convolution in float32
(the weights are dequantised at each call). The new package (every member of the original, the ONNX members replaced
and marked in their metadata, the model card rewritten; the ``torch.export`` programs stay float32) then predicts the
validation cases of the model card through :class:`vesalius.runtime.Predictor`, as does the original, and the card's
``compression`` entry records the method, the calibration cases and both sets of figures (mean Dice per class, or
accuracy and AUC).
"""

from __future__ import annotations

import datetime
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vesalius.data.dataset import Case, Dataset
from vesalius.deploy.model_card import render_markdown
from vesalius.errors import VesaliusError
from vesalius.outputs import check_output
from vesalius.runtime.contract import ClassificationContract, Contract, SegmentationContract
from vesalius.runtime.package import SUFFIX, Package, write_package
from vesalius.workspace import Workspace

__all__ = [
    "DEFAULT_CALIBRATION",
    "METHOD",
    "Int8Settings",
    "calibration_batches",
    "calibration_cases",
    "compress_package",
    "output_layer",
    "quantize_onnx",
    "training_cases",
]

#: The ``method`` of the model card's ``compression`` entry.
METHOD = "int8-static-qdq-per-channel"
#: Calibration cases by default.
DEFAULT_CALIBRATION = 8
#: At most this many windows of one case calibrate a segmentation network (drawn with :data:`SEED`), so that a
#: large image or a 2D network on a volume of many slices costs no more than a few batches.
WINDOWS_PER_CASE = 16
#: Seed of the draw of calibration cases and windows.
SEED = 0
#: Operator types left in float32 by default (see the module docstring).
FLOAT_OPS = ("InstanceNormalization", "BatchNormalization", "LayerNormalization")
#: Operators with weights: the output layer ends at the last of them before a graph output.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: The ONNX metadata key that marks a quantised network (its value: :data:`METHOD`).
METADATA_KEY = "vesalius.compression"
CARD = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"


@dataclass(frozen=True)
class Int8Settings:
    """How :func:`quantize_onnx` quantises.

    Attributes:
        activations: ``uint8`` (QUInt8) or ``int8`` (QInt8) activations; weights are always int8, per channel.
        op_types: operator types to quantise (``None``: every type ONNX Runtime can quantise).
        exclude_op_types: operator types left in float32 (their nodes are excluded by name).
        float_output_layer: leave the output layer in float32 (see the module docstring).
        preprocess: run :func:`onnxruntime.quantization.shape_inference.quant_pre_process` first (ONNX shape
            inference and graph optimisation; its symbolic shape inference is skipped: it cannot follow the
            exported ``8*s41`` sizes).
        reduce_range: 7-bit weights (for CPUs without VNNI, where 8-bit products can saturate).
        extra_options: further ``quantize_static`` options (``ActivationSymmetric``, ...).
    """

    activations: str = "uint8"
    op_types: tuple[str, ...] | None = None
    exclude_op_types: tuple[str, ...] = FLOAT_OPS
    float_output_layer: bool = True
    preprocess: bool = True
    reduce_range: bool = False
    extra_options: dict[str, Any] = field(default_factory=dict)


# -- calibration data --------------------------------------------------------------------------------------------------
def _load_dataset(name: str, workspace: str | Path | Workspace | None, purpose: str) -> Dataset:
    ws = Workspace.resolve(workspace)
    folder = ws.dataset_dir(name)
    if not (folder / "dataset.json").is_file():
        raise VesaliusError(
            f"data set '{name}', which the model was trained on, is not in the workspace ({purpose} needs its cases)",
            folder,
            f"give --workspace the workspace the model was trained in, or import the data set there with "
            f"'vesalius import SRC {name}'",
        )
    return Dataset.load(folder)


def _fold_split(card: dict[str, Any], fold: str, source: Path) -> dict[str, Any]:
    split = (card.get("split") or {}).get(fold)
    if not isinstance(split, dict) or not isinstance(split.get("validation"), list):
        raise VesaliusError(
            f"the model card lists no split for {fold}, so its training cases are unknown",
            source,
            "export the model again with 'vesalius export'",
        )
    return split


def training_cases(dataset: Dataset, card: dict[str, Any], fold: str, source: Path) -> list[Case]:
    """The cases of ``dataset`` that ``fold`` trained on: those the model card lists under ``training``; for a card
    without that list (an older export), every case neither in the fold's validation list nor in the source's test
    split.

    Raises:
        VesaliusError: the card lists no split for ``fold``.
    """
    split = _fold_split(card, fold, source)
    if isinstance(split.get("training"), list):
        listed = set(split["training"])
        return [c for c in dataset.cases if c.case_id in listed]
    validation = set(split["validation"])
    return [c for c in dataset.cases if c.case_id not in validation and c.split != "test"]


def calibration_cases(dataset: Dataset, card: dict[str, Any], fold: str, count: int, source: Path) -> list[Case]:
    """``count`` of the :func:`training_cases` of ``fold``, drawn with :data:`SEED`, in data set order.

    Raises:
        VesaliusError: the card lists no split for ``fold``, or ``count`` is above the training cases there are.
    """
    training = training_cases(dataset, card, fold, source)
    if count > len(training):
        raise VesaliusError(
            f"--calibration {count} asks for more cases than the {len(training)} training cases of {fold} in data set "
            f"'{dataset.name}'",
            source,
            f"give --calibration {len(training)} or fewer" if training else "import the training cases",
        )
    chosen = np.random.default_rng(SEED).choice(len(training), size=count, replace=False)
    return [training[i] for i in sorted(chosen)]


def _segmentation_windows(image: np.ndarray, contract: SegmentationContract) -> list[np.ndarray]:
    """The windows ``(C, *patch)`` that :class:`vesalius.runtime.Predictor` feeds the network for the preprocessed
    ``image``, without mirroring (the placement, padding and slicing are the runtime's own code)."""
    from vesalius.inference.windows import predict_probabilities

    window = contract.window
    windows: list[np.ndarray] = []

    def record(batch: np.ndarray) -> np.ndarray:
        windows.extend(np.array(w) for w in batch)
        return np.zeros((batch.shape[0], 1, *batch.shape[2:]), np.float32)

    predict_probabilities(
        record,
        image,
        window.patch_size,
        np.ones(window.patch_size, np.float32),
        step=window.step,
        batch_size=window.batch_size,
        slice_axis=window.slice_axis if len(window.patch_size) < image.ndim - 1 else None,
    )
    return windows


def calibration_batches(dataset: Dataset, cases: Sequence[Case], contract: Contract) -> Iterator[np.ndarray]:
    """The float32 network inputs of ``cases``, in batches: segmentation: the windows of each case (at most
    :data:`WINDOWS_PER_CASE`, drawn with :data:`SEED`) in batches of the window batch size; classification: each
    prepared image as a batch of one. Cases are read one at a time."""
    rng = np.random.default_rng(SEED)
    for case in cases:
        image, _ = dataset.read_case(case)
        if isinstance(contract, ClassificationContract):
            from vesalius.preprocessing.classification import prepare_image

            yield np.ascontiguousarray(prepare_image(image.array, contract.normalization, contract.input_size)[None])
            continue
        from vesalius.preprocessing.pipeline import preprocess_image

        data, _, _ = preprocess_image(image, None, contract.spacing, contract.normalization, contract.filters)
        windows = _segmentation_windows(data, contract)
        if len(windows) > WINDOWS_PER_CASE:
            windows = [windows[i] for i in sorted(rng.choice(len(windows), WINDOWS_PER_CASE, replace=False))]
        size = contract.window.batch_size
        for first in range(0, len(windows), size):
            yield np.ascontiguousarray(np.stack(windows[first : first + size]), dtype=np.float32)


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` (any object with ``get_next``) over ``batches()``: one batch per call,
    ``None`` at the end; :meth:`rewind` starts a fresh pass."""

    def __init__(self, batches: Callable[[], Iterable[np.ndarray]], input_name: str) -> None:
        self._batches = batches
        self._input_name = input_name
        self._iterator: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iterator is None:
            self._iterator = iter(self._batches())
        batch = next(self._iterator, None)
        return None if batch is None else {self._input_name: batch}

    def rewind(self) -> None:
        self._iterator = None


# -- quantisation ------------------------------------------------------------------------------------------------------
def output_layer(graph: Any) -> list[str]:
    """Names of the nodes of the ONNX ``graph`` that make up its output layer: every node from which a graph output
    is reached without passing a weighted node (:data:`WEIGHTED_OPS`), and the weighted nodes where that stops."""
    producer = {output: node for node in graph.node for output in node.output}
    names: list[str] = []
    pending = [producer[o.name] for o in graph.output if o.name in producer]
    while pending:
        node = pending.pop()
        if node.name in names:
            continue
        names.append(node.name)
        if node.op_type not in WEIGHTED_OPS:
            pending += [producer[i] for i in node.input if i in producer]
    return names


def quantize_onnx(
    model: bytes, batches: Callable[[], Iterable[np.ndarray]], input_name: str, settings: Int8Settings | None = None
) -> bytes:
    """The ONNX model ``model`` quantised to int8 (QDQ, weights per channel, min-max calibration on ``batches()``),
    checked with ``onnx.checker`` and marked with :data:`METADATA_KEY` in its metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = settings or Int8Settings()
    activation = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[settings.activations]
    with tempfile.TemporaryDirectory(prefix="vesalius-int8-") as tmp:
        source = Path(tmp) / "model.onnx"
        source.write_bytes(model)
        if settings.preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(source, prepared, skip_symbolic_shape=True)
            source = prepared
        graph = onnx.load(source).graph
        excluded = [n.name for n in graph.node if n.op_type in settings.exclude_op_types]
        if settings.float_output_layer:
            excluded += [n for n in output_layer(graph) if n not in excluded]
        target = Path(tmp) / "int8.onnx"
        quantize_static(
            source,
            target,
            _Reader(batches, input_name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types) if settings.op_types is not None else None,
            per_channel=True,
            reduce_range=settings.reduce_range,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=dict(settings.extra_options),
        )
        quantized = onnx.load(target)
    properties = {p.key: p.value for p in quantized.metadata_props}
    onnx.helper.set_model_props(quantized, properties | {METADATA_KEY: METHOD})
    onnx.checker.check_model(quantized)
    return quantized.SerializeToString()


# -- validation --------------------------------------------------------------------------------------------------------
def _validation_cases(dataset: Dataset, card: dict[str, Any], limit: int | None) -> tuple[list[Case], int]:
    """The cases of every fold's validation list that the data set holds with a label (or target), in data set
    order (at most ``limit``), and how many listed cases are missing."""
    listed = {case for split in (card.get("split") or {}).values() for case in split.get("validation", [])}
    found = [c for c in dataset.cases if c.case_id in listed and (c.label is not None or c.target is not None)]
    return (found if limit is None else found[:limit]), len(listed) - len(found)


def _segmentation_figures(
    original: Any, compressed: Any, dataset: Dataset, cases: Sequence[Case], labels: dict[int, str]
) -> dict[str, Any]:
    from vesalius.metrics.segmentation import dice_per_class

    foreground = [k for k in sorted(labels) if k != 0]
    fp32, int8, agreement = [], [], []
    for case in cases:
        image, reference = dataset.read_case(case)
        if reference is None:
            continue
        a, b = original.segment(image).array[0], compressed.segment(image).array[0]
        fp32.append(dice_per_class(a, reference.array[0], foreground))
        int8.append(dice_per_class(b, reference.array[0], foreground))
        agreement.append(np.mean(list(dice_per_class(b, a, foreground).values())))
    figures: dict[str, Any] = {"validation_cases": len(fp32)}
    if not fp32:
        return figures
    means = {}
    for name, scores in (("dice_fp32", fp32), ("dice_int8", int8)):
        per_class = {labels[k]: float(np.mean([s[k] for s in scores])) for k in foreground}
        means[name] = float(np.mean(list(per_class.values())))
        figures[name] = _round(means[name])
        figures.update({f"{name}_{n}": _round(v) for n, v in per_class.items()})
    figures["ratio"] = _round(means["dice_int8"] / means["dice_fp32"]) if means["dice_fp32"] else None
    figures["dice_int8_vs_fp32"] = _round(float(np.mean(agreement)))
    return figures


def _classification_figures(
    original: Any, compressed: Any, dataset: Dataset, cases: Sequence[Case], contract: ClassificationContract
) -> dict[str, Any]:
    from vesalius.metrics.classification import binary_auc, classification_metrics

    targets, fp32, int8 = [], [], []
    for case in cases:
        image, _ = dataset.read_case(case)
        targets.append(case.target)
        fp32.append(original.classify(image))
        int8.append(compressed.classify(image))
    y, p32, p8 = np.asarray(targets), np.asarray(fp32), np.asarray(int8)
    figures: dict[str, Any] = {"validation_cases": len(targets)}
    auc: dict[str, float] = {}
    if contract.target_type == "multilabel":
        for name, p in (("fp32", p32), ("int8", p8)):
            decided = p >= contract.threshold
            figures[f"accuracy_{name}"] = _round(float(np.mean(decided == y.astype(bool))))
            auc[name] = float(np.nanmean([binary_auc(y[:, k], p[:, k]) for k in range(y.shape[1])]))
        figures["agreement"] = _round(float(np.mean((p32 >= contract.threshold) == (p8 >= contract.threshold))))
    else:
        for name, p in (("fp32", p32), ("int8", p8)):
            metrics = classification_metrics(y, p, bootstrap=0)
            figures[f"accuracy_{name}"], auc[name] = _round(metrics["accuracy"]), float(metrics["auc"])
        figures["agreement"] = _round(float(np.mean(p32.argmax(1) == p8.argmax(1))))
    figures["auc_fp32"], figures["auc_int8"] = _round(auc["fp32"]), _round(auc["int8"])
    figures["ratio"] = _round(auc["int8"] / auc["fp32"]) if figures["auc_fp32"] else None
    return figures


def _round(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


# -- the command -------------------------------------------------------------------------------------------------------
def compress_package(
    package: str | Path,
    output: str | Path,
    *,
    int8: bool = False,
    calibration: int = DEFAULT_CALIBRATION,
    workspace: str | Path | Workspace | None = None,
    validation: int | None = None,
    settings: Int8Settings | None = None,
) -> Path:
    """Write ``package`` with int8 ONNX networks to ``output`` (see the module docstring).

    Args:
        package: an exported package (``NAME.vpkg`` or its folder); it is not changed.
        output: the new package, ``OUT.vpkg``.
        int8: quantise the ONNX networks to int8 (the only compression so far; required).
        calibration: training cases that calibrate the activation ranges of each fold's network.
        workspace: the workspace that holds the model's data set (default: ``$VESALIUS_HOME``).
        validation: validate on at most this many of the model card's validation cases (``None``: all).
        settings: how to quantise (default: :class:`Int8Settings`).

    Returns:
        The written package.
    """
    import onnxruntime

    from vesalius.runtime import Predictor

    package = Path(package)
    output = check_output(output, [package], kind="file", suffixes=(SUFFIX,))
    if not int8:
        raise VesaliusError("no compression asked for", package, "give --int8")
    if isinstance(calibration, bool) or not isinstance(calibration, int) or calibration < 1:
        raise VesaliusError(f"--calibration must be a whole number of cases >= 1, not {calibration!r}")
    with Package(package) as opened:
        contract = opened.contract
        members = {member: opened.read(member) for member in opened.members}
        card = opened.json(CARD) if CARD in members else None
        name = opened.manifest.get("name", contract.name)
    if not isinstance(card, dict):
        raise VesaliusError("the package has no model card (model_card.json)", package, "export the model again")
    if card.get("compression"):
        raise VesaliusError(
            f"the package is already compressed ({card['compression'].get('method')})",
            package,
            "compress the package that 'vesalius export' wrote",
        )
    dataset = _load_dataset(contract.dataset, workspace, "int8 calibration")
    settings = settings or Int8Settings()
    network = contract.network
    calibrated: dict[str, list[str]] = {}
    size_fp32 = round(sum(len(members[m]) for m in network.onnx) / 2**20, 2)
    notes = []
    for member in network.onnx:
        fold = PurePosixPath(member).stem
        cases = calibration_cases(dataset, card, fold, calibration, package)
        found, counted = len(training_cases(dataset, card, fold, package)), card["split"][fold].get("train_cases")
        if counted is not None and found != counted:
            notes.append(
                f"{fold}: the data set holds {found} cases outside the validation list, the card counts {counted} "
                "training cases (the data set changed after training?)."
            )
        calibrated[fold] = [c.case_id for c in cases]
        members[member] = quantize_onnx(
            members[member],
            lambda cases=cases: calibration_batches(dataset, cases, contract),  # type: ignore[misc]
            network.input_name,
            settings,
        )
    with tempfile.TemporaryDirectory(prefix="vesalius-compress-") as tmp:
        candidate = write_package(members, Path(tmp) / f"candidate{SUFFIX}", info={"name": name})
        cases, missing = _validation_cases(dataset, card, validation)
        figures: dict[str, Any] = {}
        if cases:
            original, compressed = Predictor(package), Predictor(candidate)
            if isinstance(contract, SegmentationContract):
                figures = _segmentation_figures(original, compressed, dataset, cases, contract.labels)
            else:
                figures = _classification_figures(original, compressed, dataset, cases, contract)
    figures["onnx_mb_fp32"] = size_fp32
    figures["onnx_mb_int8"] = round(sum(len(members[m]) for m in network.onnx) / 2**20, 2)
    card["compression"] = {
        "method": METHOD,
        "calibration_cases": calibration,
        "calibration": calibrated,
        "description": " ".join(
            [_description(contract, settings, calibration, figures, missing, len(network.onnx)), *notes]
        ),
        "figures": figures,
        "onnxruntime": onnxruntime.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    members[CARD] = (json.dumps(card, indent=2) + "\n").encode("utf-8")
    members[CARD_MARKDOWN] = render_markdown(card).encode("utf-8")
    return write_package(members, output, info={"created": card["compression"]["created"], "name": name})


def _description(
    contract: Contract, settings: Int8Settings, calibration: int, figures: dict[str, Any], missing: int, folds: int
) -> str:
    ops = ", ".join(settings.op_types) if settings.op_types is not None else "every operator ONNX Runtime quantises"
    kept = [*settings.exclude_op_types, *(["the output layer"] if settings.float_output_layer else [])]
    if kept:
        ops += f", except {', '.join(kept)}"
    inputs = (
        f"at most {WINDOWS_PER_CASE} sliding windows per case"
        if isinstance(contract, SegmentationContract)
        else "the prepared images"
    )
    text = (
        f"The ONNX network{'s' if folds > 1 else ''} ({ops}) quantised to int8 by ONNX Runtime static quantisation "
        f"(QDQ; weights int8 per output channel, activations {settings.activations} per tensor, min-max ranges) "
        f"calibrated on {inputs} of {calibration} training case{'s' if calibration > 1 else ''} per fold. "
        "The torch.export programs (models/*.pt2) stay float32: the torch backend predicts in float32."
    )
    if not figures.get("validation_cases"):
        return text + " Not validated: the model card lists no validation case that the data set holds."
    metric = "mean Dice over the foreground classes" if isinstance(contract, SegmentationContract) else "AUC"
    text += (
        f" Validated on {figures['validation_cases']} validation cases of the model card with the runtime "
        f"(Predictor, defaults); ratio: int8 over float32 {metric}."
    )
    if missing:
        text += f" {missing} listed validation case(s) are not in the data set."
    if folds > 1:
        text += (
            " An ensemble's validation cases were training cases of the other folds: the figures compare int8 with "
            "float32, they do not estimate accuracy."
        )
    return text
