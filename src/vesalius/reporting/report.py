"""One self-contained HTML report of a training run or an evaluation folder (pictures embedded, no network).

Sources:

- a **segmentation run** folder (``runs/NAME/CONFIG/fold_K``, :mod:`vesalius.model_package`): the data set (from
  the workspace the run lies in), the trained configuration and training settings, learning curves, and the fold's
  validation predictions (``validation/CASE.EXT``) scored against the data set's references on their original
  grids;
- an **evaluation** folder (``metrics.csv`` and ``summary.json`` of
  :func:`vesalius.evaluation.segmentation.evaluate_folder`):
  the predictions and references named in its summary, and optionally a folder of the images;
- a **classification run** folder: learning curves, and
  from ``validation/predictions.csv`` (as ``vesalius predict`` writes it; the true classes from a ``target``
  column, else from the data set) the metrics of
  :func:`vesalius.metrics.classification.classification_metrics`, the confusion matrix,
  one-vs-rest ROC curves and a calibration plot; the PNG files in ``validation/gradcam/`` form a Grad-CAM gallery.

Runs show what training did next to what its settings planned: the epochs and iterations run and why the run
stopped (its :class:`~vesalius.model_package.TrainingOutcome`; "not recorded" for runs of an older Vesalius), the
last validation pseudo-Dice (or AUC), and learning curves against the iteration: the training loss every few
iterations (``log_iterations.csv``) with the per-epoch validation figures of ``log.csv`` at the iteration each epoch
ended.

Segmentation reports show per-class metric tables (mean, median, standard deviation over the cases) and box plots,
the best, median and worst case by mean Dice over the classes as overlays (:mod:`vesalius.reporting.overlay`), and
their measurements (volumes, connected components). Every section is present; one without data says why.
Only the report file is written (atomically); sources are read.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.evaluation.review import reviews_of_cases
from vesalius.io import Geometry, Image, image_suffix, read_image, strip_suffix
from vesalius.io.atomic import write_bytes_atomic
from vesalius.io.schema import to_json
from vesalius.metrics.classification import roc_curve
from vesalius.model_package import (
    ModelPackage,
    TrainedClassification,
    TrainedSegmentation,
    TrainingOutcome,
    is_model_package,
)
from vesalius.outputs import check_output

__all__ = ["SECTIONS", "build_report", "build_report_or_warn"]

SECTIONS: dict[str, tuple[str, ...]] = {
    "segmentation": ("dataset", "plan", "training", "metrics", "cases", "measurements", "review"),
    "evaluation": ("dataset", "metrics", "cases", "measurements"),
    "classification": ("dataset", "plan", "training", "classification", "gradcam"),
}
"""The ``id`` of each ``<section>`` of a report, by kind of source."""

_TABLE_METRICS = ("dice", "iou", "hd95", "assd", "surface_dice", "precision", "recall")
_BOX_METRICS = ("dice", "hd95", "surface_dice")


@dataclass
class _Case:
    """A scored case: its files and ``scores[label name][metric]``."""

    case_id: str
    prediction: Path
    reference: Path | None
    image: Path | None
    scores: dict[str, dict[str, float]]

    @property
    def mean_dice(self) -> float:
        values = [s["dice"] for s in self.scores.values() if not math.isnan(s["dice"])]
        return float(np.mean(values)) if values else float("nan")


def build_report(
    source: str | Path,
    output: str | Path | None = None,
    *,
    workspace: str | Path | None = None,
    images: str | Path | None = None,
) -> Path:
    """Write the HTML report of ``source`` (a run folder or an evaluation folder) and return its path.

    Args:
        source: a run folder or an evaluation folder (``metrics.csv`` + ``summary.json``).
        output: the HTML file; ``SOURCE/report.html`` by default.
        workspace: the workspace of a run (default: the one the run folder lies in, else ``$VESALIUS_HOME``).
        images: evaluation folders: the folder of the images the predictions were made from (files named by case
            id), drawn under the overlays.

    Raises:
        VesaliusError: ``source`` is neither kind of folder, or its files are unreadable.
    """
    source = Path(source)
    if output is None:
        output = source / "report.html"
    else:  # a report of its own sources goes next to them, never over one of them
        output = check_output(output, [source / "log.csv", images], kind="file", suffixes=(".html", ".htm"))
    if is_model_package(source):
        package = ModelPackage(source)
        if package.task == "classification":
            context = _classification_context(package, workspace)
        else:
            context = _segmentation_run_context(package, workspace)
    elif (source / "metrics.csv").is_file() and (source / "summary.json").is_file():
        if images is not None and not Path(images).is_dir():
            raise VesaliusError("image folder not found", images, "give --images the folder of the images")
        context = _evaluation_context(source, None if images is None else Path(images))
    else:
        raise VesaliusError(
            "neither a run folder nor an evaluation folder (metrics.csv, summary.json)",
            source,
            "give a fold folder such as runs/NAME/3d/fold_0, or the output folder of 'vesalius evaluate'",
        )
    context["generated"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    context["source"] = str(source.absolute())
    context["sections"] = SECTIONS[context["kind"]]
    write_bytes_atomic(output, _render(context).encode("utf-8"))
    return output


def build_report_or_warn(source: str | Path, output: str | Path | None = None, **kwargs: Any) -> Path | None:
    """:func:`build_report`, but any failure becomes a warning and ``None``: for the end of training and the demo,
    where the report is a by-product that must never cost the result it describes."""
    try:
        return build_report(source, output, **kwargs)
    except Exception as e:
        warnings.warn(f"{source}: the report could not be written ({type(e).__name__}: {e})", stacklevel=2)
        return None


# ------------------------------------------------------------------------------------------------ sources


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VesaliusError(f"cannot read JSON ({type(e).__name__})", path, "write it again with Vesalius") from None
    if not isinstance(data, dict):
        raise VesaliusError("not a JSON object", path, "write it again with Vesalius")
    return data


def _workspace_of(run_dir: Path, workspace: str | Path | None) -> Any:
    """The workspace of a run: given, else the one ``runs/NAME/CONFIG/fold_K`` lies in, else the default."""
    from vesalius.workspace import Workspace

    if workspace is not None:
        return Workspace.resolve(workspace)
    return Workspace.of_run(run_dir) or Workspace.default()


def _dataset(ws: Any, name: str) -> Any:
    """The imported data set ``name``, or ``None`` when the workspace does not hold it."""
    from vesalius.data.dataset import Dataset

    folder = ws.dataset_dir(name)
    return Dataset.load(folder) if (folder / "dataset.json").is_file() else None


def _dataset_rows(dataset: Any, split: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    rows = [
        ("name", dataset.name),
        ("task", dataset.task),
        ("dimensions", f"{dataset.spatial_dims}D"),
        ("cases", str(len(dataset.cases))),
        ("channels", ", ".join(dataset.channels)),
        ("modalities", ", ".join(dataset.modalities) or "-"),
        ("labels", ", ".join(f"{k}: {v}" for k, v in sorted(dataset.labels.items()))),
        ("source", f"{dataset.source.get('layout', '')} {dataset.source.get('path', '')}".strip() or "-"),
    ]
    if split is not None:
        rows.append(("this fold", f"{len(split.get('train', []))} training, {len(split.get('val', []))} validation"))
    return rows


def _settings_rows(settings: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, _short(value)) for key, value in settings.items() if value is not None]


def _training_rows(package: ModelPackage, log: list[dict[str, float]]) -> list[tuple[str, str]]:
    """The training table: what the run did (epochs and iterations run, why it stopped, its last validation
    figures), then the settings, whose ``epochs`` is only what was planned (a time budget may end a run sooner)."""
    settings = package.settings
    rows = _outcome_rows(package, log) + _validation_rows(package, log)
    return rows + [("epochs (planned)" if key == "epochs" else key, text) for key, text in _settings_rows(settings)]


def _outcome_rows(package: ModelPackage, log: list[dict[str, float]]) -> list[tuple[str, str]]:
    """Rows from the run's :class:`TrainingOutcome`; "not recorded" (with what ``log.csv`` shows) without one."""
    try:
        outcome: TrainingOutcome | None = package.outcome
    except VesaliusError as e:
        return [("stopped", f"unreadable record: {e.one_line()}")]
    if outcome is None:
        epochs = f" (log.csv holds {len(log)} epochs)" if log else ""
        last = log[-1].get("iteration", math.nan) if log else math.nan
        iterations = "" if math.isnan(last) else f" (log.csv ends at iteration {last:.0f})"
        return [
            ("stopped", "not recorded (a run of an older Vesalius)"),
            ("epochs run", "not recorded" + epochs),
            ("iterations run", "not recorded" + iterations),
        ]
    iterations = f"{outcome.iterations} of {outcome.planned_iterations} planned ({outcome.iterations_per_epoch}"
    iterations += " per epoch)"
    if outcome.budget_iterations is not None and outcome.budget_iterations < outcome.planned_iterations:
        iterations += f"; the time budget allowed {outcome.budget_iterations}"
    rows = [
        ("stopped", outcome.reason),
        ("epochs run", f"{outcome.epochs} of {outcome.planned_epochs} planned"),
        ("iterations run", iterations),
        ("training time", f"{outcome.elapsed_s:.0f} s ({outcome.elapsed_s / 60:.1f} min)"),
    ]
    if outcome.best_epoch is not None:
        rows.append(("best epoch", str(outcome.best_epoch)))
    if outcome.resumed:
        rows.append(("resumed", ", ".join(f"at epoch {r.epoch} (iteration {r.iteration})" for r in outcome.resumed)))
    return rows


def _validation_rows(package: ModelPackage, log: list[dict[str, float]]) -> list[tuple[str, str]]:
    """The validation figures of training's last epoch and its best: the pseudo-Dice (segmentation: mean, then per
    class, on the fixed validation patches) or the AUC and accuracy (classification); none without validation."""
    segmentation = package.task == "segmentation"
    name, key = ("validation pseudo-Dice", "dice_mean") if segmentation else ("validation AUC", "val_auc")
    logged = [r for r in log if key in r]
    if not logged:
        if package.split["val"]:
            return [(name, "none: not in log.csv")]
        return [(name, f"none: no validation cases (fold {package.settings.get('fold')})")]
    last = logged[-1]
    if segmentation:
        per_class = [k for k in last if k.startswith("dice_") and k != key]  # and dice_ema, the smoothed mean
        others = [f"{k.removeprefix('dice_')} {_number(last[k])}" for k in per_class]
    else:
        others = [f"accuracy {_number(last.get('val_accuracy', math.nan))}"]
    rows = [(f"{name}, last epoch", f"{_number(last[key])} ({', '.join(others)})")]
    scored = [r for r in logged if not math.isnan(r[key])]
    if scored:
        best = max(scored, key=lambda r: r[key])
        rows.append((f"{name}, best epoch", f"{_number(best[key])} (epoch {best.get('epoch', math.nan):.0f})"))
    return rows


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _segmentation_run_context(package: ModelPackage, workspace: str | Path | None) -> dict:
    from vesalius.metrics.segmentation import segmentation_metrics

    settings, trained, split = package.settings, package.trained, package.split
    assert isinstance(trained, TrainedSegmentation)
    ws = _workspace_of(package.root, workspace)
    dataset = _dataset(ws, trained.dataset)
    names = {k: v for k, v in trained.labels.items() if k != 0}
    cases: list[_Case] = []
    notes = []
    validation = package.validation_dir
    if dataset is None:
        notes.append(f"the data set '{trained.dataset}' is not in the workspace {ws.root}: no scores")
    else:
        for case_id in split["val"]:
            prediction = _case_file(validation, case_id)
            case = dataset.case(case_id)
            reference = dataset.label_path(case)
            if prediction is None or reference is None or not reference.exists():
                continue
            pred, ref = read_image(prediction), read_image(reference)
            scores = segmentation_metrics(pred.array[0], ref.array[0], names, ref.geometry.spacing)
            image = dataset.image_paths(case)[0]
            cases.append(_Case(case_id, prediction, reference, image, {names[k]: dict(s) for k, s in scores.items()}))
        if not cases:
            notes.append(f"no validation predictions in {validation}")
    return {
        "kind": "segmentation",
        "title": f"{trained.dataset} {trained.config} fold {settings.get('fold')}",
        "dataset_rows": _dataset_rows(dataset, split) if dataset else [],
        "plan_rows": _settings_rows(to_json(trained.configuration)),
        "normalization": _short(to_json(trained.normalization)),
        **_training_context(package),
        **_scores_context(cases, names, tolerance_mm=1.0),
        "reviews": reviews_of_cases(ws.root, set(split["val"]), trained.dataset),
        "notes": notes,
    }


def _evaluation_context(folder: Path, images: Path | None) -> dict:
    summary = _read_json(folder / "summary.json")
    names = {int(k): v for k, v in summary.get("labels", {}).items()}
    pred_dir, ref_dir = Path(summary.get("pred_dir", folder)), Path(summary.get("ref_dir", folder))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for row in _read_csv(folder / "metrics.csv"):
        if "case" not in row or "name" not in row:
            raise VesaliusError(
                "not a metrics table (case and name columns)", folder / "metrics.csv", "run 'vesalius evaluate' again"
            )
        scores.setdefault(row["case"], {})[row["name"]] = {k: _float(v) for k, v in row.items() if k in _NUMERIC}
    notes = [] if images else ["no image folder given (--images DIR): overlays are drawn on a black background"]
    cases = []
    for case_id, case_scores in scores.items():
        prediction = _case_file(pred_dir, case_id)
        if prediction is None:
            notes.append(f"{case_id}: no prediction file in {pred_dir}")
            continue
        image = _case_file(images, case_id) if images else None
        cases.append(_Case(case_id, prediction, _case_file(ref_dir, case_id), image, case_scores))
    measurements = folder / "measurements.csv"
    return {
        "kind": "evaluation",
        "title": f"evaluation of {pred_dir.name}",
        "dataset_rows": [
            ("predictions", str(pred_dir)),
            ("references", str(ref_dir)),
            ("cases", str(summary.get("num_cases", len(cases)))),
            ("labels", ", ".join(f"{k}: {v}" for k, v in sorted(names.items()))),
            ("volume unit", summary.get("volume_unit", "")),
        ],
        **_scores_context(cases, names, tolerance_mm=summary.get("tolerance_mm", 1.0)),
        "measurement_file": _csv_table(measurements) if measurements.is_file() else None,
        "notes": notes,
    }


_NUMERIC = {*_TABLE_METRICS, "volume_pred", "volume_ref", "volume_difference"}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _case_file(folder: Path | None, case_id: str) -> Path | None:
    """The image file of ``case_id`` in ``folder`` (any format; ``CASE`` or the first channel ``CASE_0000``)."""
    if folder is None or not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if path.is_file() and image_suffix(path) and strip_suffix(path) in (case_id, f"{case_id}_0000"):
            return path
    return None


def _numeric_rows(path: Path) -> list[dict[str, float]]:
    """The rows of a CSV file of numbers (a training log), each value a float (NaN where it is not a number); a
    row cut short (a log being written) is left out."""
    if not path.is_file():
        return []
    return [{k: _float(v) for k, v in r.items()} for r in _read_csv(path) if None not in r and None not in r.values()]


def _read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file written by Vesalius; an unreadable one is a one-line error."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise VesaliusError(f"unreadable CSV ({type(e).__name__})", path, "write it again with Vesalius") from None


def _csv_table(path: Path, limit: int = 50) -> dict[str, Any]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise VesaliusError(f"unreadable CSV ({type(e).__name__})", path, "write it again with Vesalius") from None
    return {
        "name": path.name,
        "header": rows[0] if rows else [],
        "rows": rows[1 : limit + 1],
        "more": len(rows) > limit + 1,
    }


# ------------------------------------------------------------------------------------------------ segmentation


def _scores_context(cases: list[_Case], names: dict[int, str], tolerance_mm: float) -> dict[str, Any]:
    """Metric tables, box plots, best/median/worst overlays and measurements of scored cases."""
    if not cases:
        return {"metric_table": [], "boxplots": [], "shown_cases": [], "measurements": [], "case_table": []}
    label_names = list(names.values())
    table = []
    for name in label_names:
        row: dict[str, Any] = {"name": name}
        for metric in _TABLE_METRICS:
            values = np.array([c.scores[name][metric] for c in cases if name in c.scores], dtype=float)
            kept = values[~np.isnan(values)]
            row[metric] = (
                f"{np.mean(kept):.3f} / {np.median(kept):.3f} / {np.std(kept):.3f}" if kept.size else "n/a"
            ) + (f" ({values.size - kept.size} NaN)" if kept.size < values.size else "")
        table.append(row)
    ranked = sorted((c for c in cases if not math.isnan(c.mean_dice)), key=lambda c: c.mean_dice)
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]} if ranked else {}
    shown, measurements = [], []
    for role in ("best", "median", "worst"):
        if role not in picks:
            continue
        case = picks[role]
        overlay, measured = _case_pictures(case, names)
        shown.append({"role": role, "case": case.case_id, "dice": f"{case.mean_dice:.3f}", "png": overlay})
        for row in measured:
            measurements.append({"case": case.case_id, "role": role, **row})
    case_table = [
        {
            "case": c.case_id,
            "mean_dice": c.mean_dice,
            **{n: c.scores.get(n, {}).get("dice", float("nan")) for n in label_names},
        }
        for c in sorted(cases, key=lambda c: c.case_id)
    ]
    return {
        "metric_table": table,
        "metric_columns": _TABLE_METRICS,
        "tolerance_mm": tolerance_mm,
        "boxplots": [_boxplot(cases, label_names, metric) for metric in _BOX_METRICS],
        "shown_cases": shown,
        "measurements": measurements,
        "case_table": case_table,
        "label_names": label_names,
    }


def _case_pictures(case: _Case, names: dict[int, str]) -> tuple[str, list[dict[str, Any]]]:
    """The overlay of a case (data URI) and its measurements, one row per label of prediction and reference."""
    from vesalius.evaluation.measure import measure_segmentation
    from vesalius.reporting.overlay import render_overlay

    prediction = read_image(case.prediction)
    reference = read_image(case.reference) if case.reference else None
    image = read_image(case.image) if case.image else None
    if image is None or image.spatial_shape != prediction.spatial_shape:
        image = Image(np.zeros((1, *prediction.spatial_shape), np.float32), prediction.geometry)
    overlay = render_overlay(image, prediction, reference, labels=names)
    rows = []
    for what, seg in (("prediction", prediction), ("reference", reference)):
        if seg is None:
            continue
        measured = measure_segmentation(_on_grid(seg, image.geometry), labels=names)
        for row in measured.label_rows():
            rows.append(
                {
                    "of": what,
                    "label": row["name"],
                    "size": f"{row[measured.size_column]:.3g} {measured.unit}",
                    "components": row["components"],
                }
            )
    return _data_uri(overlay.png()), rows


def _on_grid(seg: Image, geometry: Geometry) -> Image:
    """``seg`` with ``geometry`` (the prediction's grid; an image of the same shape may carry rounding noise)."""
    return Image(np.rint(seg.array).astype(np.int32), geometry)


# ------------------------------------------------------------------------------------------------ classification


def _classification_context(package: ModelPackage, workspace: str | Path | None) -> dict:
    from vesalius.metrics.classification import classification_metrics

    settings, trained = package.settings, package.trained
    assert isinstance(trained, TrainedClassification)
    ws = _workspace_of(package.root, workspace)
    dataset = _dataset(ws, trained.dataset)
    notes, figures, metrics_rows, cm = [], [], [], None
    predictions = package.validation_predictions_csv
    case_ids: list[str] = []
    if predictions.is_file():
        try:
            case_ids, y, p, class_names = _read_probabilities(predictions, dataset)
        except VesaliusError as e:
            notes.append(f"no metrics: {e.one_line()}")
    else:
        notes.append(f"no validation predictions ({predictions}): no metrics")
    if case_ids:
        metrics = classification_metrics(y, p, bootstrap=200)
        metrics_rows = [
            (key, _fmt_metric(value))
            for key, value in metrics.items()
            if key not in ("confusion_matrix",) and not key.endswith("_per_class")
        ]
        metrics_rows += [
            (f"{key} ({name})", _fmt_metric(v))
            for key in ("sensitivity_per_class", "specificity_per_class", "auc_per_class")
            for name, v in zip(class_names, metrics[key], strict=True)
        ]
        cm = {"names": class_names, "rows": metrics["confusion_matrix"]}
        figures = [
            ("confusion matrix", _confusion_png(np.asarray(metrics["confusion_matrix"]), class_names)),
            ("ROC curves (one class against the rest)", _roc_png(y, p, class_names)),
            ("calibration (reliability diagram)", _calibration_png(y, p)),
        ]
        notes.append(f"{len(case_ids)} validation cases from {predictions}")
    gradcam_dir = package.validation_gradcam_dir
    gallery = (
        [{"name": path.stem, "png": _data_uri(path.read_bytes())} for path in sorted(gradcam_dir.glob("*.png"))[:24]]
        if gradcam_dir.is_dir()
        else []
    )
    return {
        "kind": "classification",
        "title": f"{trained.dataset} classification fold {settings.get('fold', '')}",
        "dataset_rows": _dataset_rows(dataset, package.split) if dataset else [],
        "plan_rows": _settings_rows(to_json(trained.network)),
        "normalization": _short(to_json(trained.normalization)),
        **_training_context(package),
        "classification_rows": metrics_rows,
        "confusion": cm,
        "classification_figures": [(title, _data_uri(png)) for title, png in figures],
        "gradcam": gallery,
        "notes": notes,
    }


def _read_probabilities(path: Path, dataset: Any) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """``(case ids, y_true (N,), probabilities (N, K), class names)`` from a predictions CSV
    (:func:`~vesalius.evaluation.classification.read_predictions_csv`); the true class comes from a ``target``
    column, else from the data set's cases."""
    from vesalius.evaluation.classification import read_predictions_csv

    case_ids, names, p = read_predictions_csv(path)
    with open(path, newline="", encoding="utf-8") as f:
        given = [row.get("target") for row in csv.DictReader(f)]
    if all(t is not None for t in given):
        targets: list[Any] = given
    elif dataset is not None:
        targets = [dataset.case(c).target for c in case_ids]
    else:
        raise VesaliusError("no target column and no data set to take the true classes from", path)
    if not all(isinstance(t, int) or (isinstance(t, str) and t.isdigit()) for t in targets):
        raise VesaliusError("the targets are not single class indices (multi-label?)", path)
    return case_ids, np.array([int(t) for t in targets]), p, names


def _fmt_metric(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt_metric(v) for v in value) + "]"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


# ------------------------------------------------------------------------------------------------ figures


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    _figure().close(fig)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _training_context(package: ModelPackage) -> dict[str, Any]:
    """The training table and the learning curves of a run."""
    log = _numeric_rows(package.log_csv)
    points = _numeric_rows(package.log_iterations_csv)
    curves, caption = _curves(log, points) if log else (None, "")
    return {"training_rows": _training_rows(package, log), "curves": curves, "curves_caption": caption}


def _curves(rows: list[dict[str, float]], points: list[dict[str, float]]) -> tuple[str, str]:
    """Learning curves (a data URI) and their caption: losses, validation scores and learning rate.

    Against the iteration: the training loss (and learning rate) of each point of the iteration log ``points``
    (``log_iterations.csv``), and the per-epoch rows of ``log.csv`` (``rows``: validation loss, pseudo-Dice or
    AUC) as marked points at the iteration where each epoch ended; adversarial training's columns (``adv_*``:
    discriminator and generator losses, discriminator accuracies; from the iteration log) in a panel of their own.
    A log without the iteration log (a run of an older Vesalius) is drawn per epoch.
    """
    x_key = "iteration" if "iteration" in rows[0] else "epoch" if "epoch" in rows[0] else next(iter(rows[0]))
    if x_key != "iteration":
        points = []
    x = [r[x_key] for r in rows]
    adversarial = [k for k in rows[0] if k.startswith("adv_")]
    skip = {x_key, "epoch", "iteration", "elapsed_s", "lr", *adversarial}
    groups = {
        "loss": [k for k in rows[0] if "loss" in k and k not in skip],
        "score": [k for k in rows[0] if "loss" not in k and k not in skip],
        "adversarial": adversarial,
    }
    plt = _figure()
    panels = [g for g in ("loss", "score", "adversarial") if groups[g]] + (["lr"] if "lr" in rows[0] else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    every = int(max(p["iterations"] for p in points)) if points else 0
    spacing = "every iteration" if every == 1 else f"every {every} iterations"
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        for key in groups.get(panel, ["lr"]):
            if points and (key in ("train_loss", "lr") or (key in adversarial and key in points[0])):
                label = f"{key} ({spacing})" if key == "train_loss" else key
                ax.plot([p["iteration"] for p in points], [p[key] for p in points], label=label, linewidth=1)
                continue
            style = "--" if key == "dice_mean" else "-"
            ax.plot(x, [r.get(key, float("nan")) for r in rows], label=key, linestyle=style, marker=".")
        labels = {"loss": "loss", "score": "validation score", "adversarial": "adversarial", "lr": "learning rate"}
        ax.set_ylabel(labels[panel])
        if panel != "lr":
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel(x_key)
    fig.tight_layout()
    validated = bool(groups["score"]) or groups["loss"] != ["train_loss"]
    if not points:
        caption = f"Per epoch ({len(rows)} epochs, log.csv); training loss every few iterations: not recorded."
    elif validated:
        caption = (
            f"Training loss {spacing} ({len(points)} points, log_iterations.csv); validation figures after each "
            f"of the {len(rows)} epochs (log.csv), at the iteration the epoch ended."
        )
    else:
        caption = f"Training loss {spacing} ({len(points)} points, log_iterations.csv); no validation cases."
    return _data_uri(_png(fig)), caption


def _boxplot(cases: list[_Case], names: list[str], metric: str) -> dict[str, str]:
    plt = _figure()
    data = [
        [c.scores[n][metric] for c in cases if n in c.scores and not math.isnan(c.scores[n][metric])] for n in names
    ]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2))
    ax.boxplot([d if d else [float("nan")] for d in data], tick_labels=names)
    for i, values in enumerate(data, start=1):
        ax.plot(np.full(len(values), i), values, "o", color="0.3", markersize=3, alpha=0.6)
    ax.set_title(metric + (" (mm)" if metric in ("hd95", "assd") else ""))
    fig.tight_layout()
    return {"metric": metric, "png": _data_uri(_png(fig))}


def _confusion_png(cm: np.ndarray, names: list[str]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(names), 1.2 + 0.9 * len(names)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), value in np.ndenumerate(cm):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > cm.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return _png(fig)


def _roc_png(y: np.ndarray, p: np.ndarray, names: list[str]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for k, name in enumerate(names):
        if len(names) == 2 and k == 0:
            continue  # binary: the curve of the positive class says it all
        fpr, tpr = roc_curve(y == k, p[:, k])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ":", color="0.5")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _calibration_png(y: np.ndarray, p: np.ndarray, bins: int = 10) -> bytes:
    """Accuracy against mean top-class confidence in equal-width confidence bins."""
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    filled = [b for b in range(bins) if np.any(index == b)]
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], ":", color="0.5")
    ax.plot(
        [confidence[index == b].mean() for b in filled],
        [correct[index == b].mean() for b in filled],
        "o-",
        label="model",
    )
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    return _png(fig)


# ------------------------------------------------------------------------------------------------ HTML


def _render(context: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("vesalius.reporting", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["num"] = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    return env.get_template("report.html.j2").render(**context)
