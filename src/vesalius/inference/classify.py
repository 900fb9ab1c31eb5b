"""``vesalius predict`` with a classifier: per-image class probabilities as a CSV, optionally Grad-CAM overlays.

Models: a classification run folder (``runs/NAME/NETWORK/fold_F``, its ``training.json`` says ``"task":
"classification"``) or a folder holding several (``runs/NAME/NETWORK``: every ``fold_*`` with a final checkpoint;
their probabilities are averaged). Inputs as for segmentation (:func:`vesalius.inference.predictor.list_inputs`):
an image file, a DICOM series folder, or a folder of images (``CASE_0000``, ``CASE_0001``, ... for several channels).

The CSV (``predictions.csv`` in the output folder, or the output path itself when it ends in ``.csv``) has one row
per image: ``case_id``, ``file``, ``predicted`` (the class name; multi-label: the names of the labels with
probability >= 0.5 joined by ``;``) and ``p_NAME`` per class (or label). With ``explain``, Grad-CAM overlays of
the predicted class (multi-label and ordinal: the most confident output) are written next to it in ``gradcam/``:
``CASE.png`` (2D; 3D: the three slices through the map's peak) and, for 3D images, ``CASE_gradcam.nii.gz`` (the
map on the image's own grid).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.inference.predictor import InputCase, _read_case, list_inputs
from vesalius.io import write_image
from vesalius.io.atomic import write_bytes_atomic
from vesalius.models.classifiers import build_classifier, gradcam_layer, num_outputs, to_probabilities
from vesalius.preprocessing.classification import prepare_image
from vesalius.training.checkpoint import load_checkpoint

__all__ = [
    "Classifier",
    "classify_files",
    "find_classifier_runs",
    "gradcam_for",
    "is_classification_model",
    "load_classifier",
    "predict_probabilities",
    "write_explanation",
    "write_predictions_csv",
]


@dataclass
class Classifier:
    """A trained classifier in eval mode with its plan, its network entry and its run folder."""

    network: nn.Module
    plan: dict[str, Any]
    network_entry: dict[str, Any]
    run_dir: Path

    @property
    def class_names(self) -> list[str]:
        """Output ``k``'s class (or label) name, in output order."""
        return [self.plan["labels"][k] for k in sorted(self.plan["labels"], key=int)]


def _training(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None


def find_classifier_runs(model: str | Path) -> list[Path]:
    """The classification runs in ``model``: itself when it is one, else its ``fold_*`` runs with final weights."""
    model = Path(model)
    if _training(model) is not None:
        return [model]
    return sorted(p for p in model.glob("fold_*") if (p / "checkpoint_final.pt").is_file())


def is_classification_model(model: str | Path) -> bool:
    """Whether ``model`` is a classification run, or a folder of them."""
    runs = find_classifier_runs(model)
    return bool(runs) and all((_training(r) or {}).get("task") == "classification" for r in runs)


def load_classifier(run_dir: str | Path, checkpoint: str = "final", device: str | torch.device = "cpu") -> Classifier:
    """Load ``checkpoint_{checkpoint}.pt`` of a classification run (``weights_only``)."""
    run_dir = Path(run_dir)
    training = _training(run_dir)
    if training is None or training.get("task") != "classification" or not (run_dir / "plan.json").is_file():
        raise VesaliusError("not a classification run", run_dir, "give the folder of a trained classifier")
    plan = json.loads((run_dir / "plan.json").read_text())
    outputs = num_outputs(plan["target_type"], len(plan["labels"]))
    network = build_classifier(training["network"], plan["spatial_dims"], len(plan["channels"]), outputs)
    network.load_state_dict(load_checkpoint(run_dir / f"checkpoint_{checkpoint}.pt")["model"])
    network.to(device).eval()
    return Classifier(network, plan, training["network"], run_dir)


@torch.inference_mode()
def predict_probabilities(
    models: Sequence[Classifier], images: np.ndarray, batch_size: int = 32, device: str = "cpu"
) -> np.ndarray:
    """Probabilities ``(N, K)`` of prepared images ``(N, C, *input_size)``, averaged over ``models``."""
    total = np.zeros((len(images), len(models[0].plan["labels"])), dtype=np.float64)
    for m in models:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size].astype(np.float32, copy=False)).to(device)
            total[start : start + len(x)] += to_probabilities(m.network(x), m.plan["target_type"]).cpu().numpy()
    return (total / len(models)).astype(np.float32)


def _predicted(probabilities: np.ndarray, names: list[str], target_type: str) -> str:
    if target_type == "multilabel":
        return ";".join(n for n, p in zip(names, probabilities, strict=True) if p >= 0.5)
    return names[int(np.argmax(probabilities))]


def write_predictions_csv(
    path: Path,
    case_ids: Sequence[str],
    probabilities: np.ndarray,
    names: list[str],
    target_type: str,
    files: Sequence[str] | None = None,
) -> Path:
    """The predictions CSV (see the module docstring), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "file", "predicted", *(f"p_{n}" for n in names)])
    for i, case_id in enumerate(case_ids):
        row = probabilities[i]
        file = files[i] if files is not None else ""
        writer.writerow([case_id, file, _predicted(row, names, target_type), *(f"{p:.6f}" for p in row)])
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def _check_models(models: list[Classifier]) -> None:
    first = models[0]
    for other in models[1:]:
        if other.plan != first.plan or other.network_entry != first.network_entry:
            raise VesaliusError(
                "the folds were trained with different plans or networks", other.run_dir, "ensemble one network's folds"
            )


def classify_files(
    source: str | Path,
    output: str | Path,
    model: str | Path,
    *,
    checkpoint: str = "final",
    explain: bool = False,
    device: str = "cpu",
    on_case: Callable[[InputCase], None] | None = None,
) -> Path:
    """Classify every image in ``source``; returns the predictions CSV (see the module docstring)."""
    runs = find_classifier_runs(model)
    if not runs:
        raise VesaliusError("no trained classifier here", model, "give a run folder (runs/NAME/NETWORK/fold_F)")
    models = [load_classifier(r, checkpoint, device) for r in runs]
    _check_models(models)
    first = models[0]
    plan = first.plan
    cases = list_inputs(source, len(plan["channels"]))
    output = Path(output)
    csv_path = output if output.suffix.lower() == ".csv" else output / "predictions.csv"
    names = first.class_names
    rows = []
    cams = [(m, gradcam_for(m)) for m in models] if explain else []
    for case in cases:
        image = _read_case(case)
        if image.num_channels != len(plan["channels"]) or image.ndim != plan["spatial_dims"]:
            raise VesaliusError(
                f"a {image.ndim}D image with {image.num_channels} channel(s) for a {plan['spatial_dims']}D model "
                f"with {len(plan['channels'])}",
                case.files[0],
                "give images like those the model was trained on",
            )
        prepared = prepare_image(image.array, plan)[None]
        probabilities = predict_probabilities(models, prepared, device=device)[0]
        rows.append(probabilities)
        if explain:
            write_explanation(
                cams, prepared, image, probabilities, csv_path.parent / "gradcam", case.case_id, names, device
            )
        if on_case:
            on_case(case)
    return write_predictions_csv(
        csv_path,
        [c.case_id for c in cases],
        np.asarray(rows),
        names,
        plan["target_type"],
        [str(c.files[0]) for c in cases],
    )


def gradcam_for(model: Classifier) -> Any:
    """MONAI's ``GradCAM`` on the layer of ``model`` that :func:`~vesalius.models.classifiers.gradcam_layer` picks."""
    from vesalius.inference.gradcam import make_gradcam

    shape = (len(model.plan["channels"]), *model.plan["input_size"])
    return make_gradcam(model.network, gradcam_layer(model.network, model.network_entry["name"], shape))


def write_explanation(
    cams: list[tuple[Classifier, Any]],
    prepared: np.ndarray,
    image: Any,
    probabilities: np.ndarray,
    folder: Path,
    case_id: str,
    names: list[str],
    device: str,
) -> None:
    """Grad-CAM of the predicted class, averaged over the ensemble, as an overlay (and a NIfTI map for 3D)."""
    from vesalius.inference.gradcam import gradcam_map, write_overlay

    target_type = cams[0][0].plan["target_type"]
    predicted = int(np.argmax(probabilities))
    # ordinal: the cumulative logit P(y > k) that the predicted grade passed last
    output = max(0, predicted - 1) if target_type == "ordinal" else predicted
    x = torch.from_numpy(prepared.astype(np.float32)).to(device)
    heat = np.mean([gradcam_map(cam, x, output) for _, cam in cams], axis=0)
    title = f"{case_id}: {names[predicted]} ({probabilities[predicted]:.2f})"
    write_overlay(prepared[0].astype(np.float32), heat, folder / f"{case_id}.png", title)
    if heat.ndim == 3:
        native = F.interpolate(
            torch.from_numpy(heat)[None, None], size=image.spatial_shape, mode="trilinear", align_corners=False
        )[0].numpy()
        write_image(image.with_array(native.astype(np.float32)), folder / f"{case_id}_gradcam.nii.gz")
