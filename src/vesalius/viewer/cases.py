"""What the viewer shows: a list of cases, each an image with an optional prediction and reference.

Cases come from a workspace (every imported data set's cases with their reference labels, and for segmentation
sets the validation predictions and per-case Dice of the first run fold, in name order, that predicted the case)
or from files (images, with ``--seg`` and ``--ref`` as files or folders matched by case id, i.e. by file name
without its image suffix). A prediction folder that holds ``metrics.csv`` (from ``vesalius evaluate``) adds each
case's ``dice NAME`` and ``hd95 NAME`` per label. The label names of files come from ``labels`` (``--labels``), else
from a ``dataset.json`` next to the reference (or prediction) folder, as in a data set's ``labelsTr``; without one
the page names the values it finds. Nothing here writes anything.

A workspace data set whose description cannot be read (or whose run results are malformed) is skipped with a
warning naming it, so that one broken data set does not keep the viewer from showing the others. Whether a case's
files can be read is the app's business (it marks such cases in the list).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vesalius.errors import VesaliusError
from vesalius.io import image_suffix, strip_suffix

if TYPE_CHECKING:
    from vesalius.workspace import Workspace

__all__ = ["ViewerCase", "collect_cases", "file_cases", "workspace_cases"]


@dataclass(frozen=True)
class ViewerCase:
    """One case of the viewer.

    Attributes:
        case_id: the case id (file name without suffix).
        group: where it comes from (data set name, or the folder of the files).
        image: the image file (first channel file for multi-channel data sets).
        prediction: a predicted label map on the image's grid, or ``None``.
        reference: the reference label map, or ``None``.
        labels: ``{value: name}`` of the label values.
        metrics: per-case figures shown in the case list (numbers or short text).
    """

    case_id: str
    group: str
    image: Path
    prediction: Path | None = None
    reference: Path | None = None
    labels: dict[int, str] = field(default_factory=dict)
    metrics: dict[str, float | str] = field(default_factory=dict)


def collect_cases(
    paths: list[Path], seg: Path | None = None, ref: Path | None = None, labels: dict[int, str] | None = None
) -> list[ViewerCase]:
    """The cases of one workspace folder (``datasets/`` or ``runs/`` inside), or of image files and folders."""
    from vesalius.workspace import Workspace

    if len(paths) == 1 and paths[0].is_dir() and Workspace.holds_workspace(paths[0]):
        if seg is not None or ref is not None:
            raise VesaliusError(
                "--seg and --ref go with image files, not a workspace",
                paths[0],
                "view the workspace without them (it shows its runs' predictions), or give image files",
            )
        cases = workspace_cases(paths[0])
        if not cases:
            if Workspace(paths[0].absolute()).dataset_names():
                raise VesaliusError("no data set could be read (see the warnings above)", paths[0], "re-import them")
            raise VesaliusError("no imported data sets", paths[0], "import one with 'vesalius import SRC NAME'")
        return cases
    return file_cases(paths, seg, ref, labels)


def workspace_cases(root: Path) -> list[ViewerCase]:
    """Every case of every imported data set in the workspace ``root``, with run predictions where there are any.

    A data set that cannot be read is skipped with a warning (see the module's docstring).
    """
    from vesalius.workspace import Workspace

    ws = Workspace(root.absolute())
    cases = []
    for name in ws.dataset_names():
        try:
            cases += _dataset_cases(ws, name)
        except Exception as e:  # any malformed description (VesaliusError, or a wrong JSON type deeper down)
            reason = e.one_line() if isinstance(e, VesaliusError) else f"{type(e).__name__}: {e}"
            warnings.warn(f"data set '{name}' skipped in the viewer: {reason}", stacklevel=2)
    return cases


def _dataset_cases(ws: Workspace, name: str) -> list[ViewerCase]:
    """The cases of the workspace's data set ``name``, with the predictions of its runs (skipped with a warning
    when they cannot be read: the data set itself is still worth showing)."""
    from vesalius.data.dataset import Dataset

    dataset = Dataset.load(ws.dataset_dir(name))
    labels = {int(k): v for k, v in dataset.labels.items() if int(k) != 0}
    predictions: dict[str, tuple[Path, dict[str, float | str]]] = {}
    if dataset.task == "segmentation":
        try:
            predictions = _run_predictions(ws.runs_dir(name))
        except Exception as e:  # a malformed summary.json or package of a run
            reason = e.one_line() if isinstance(e, VesaliusError) else f"{type(e).__name__}: {e}"
            warnings.warn(f"run predictions of data set '{name}' skipped in the viewer: {reason}", stacklevel=3)
    cases = []
    for case in dataset.cases:
        reference = dataset.label_path(case)
        prediction, metrics = predictions.get(case.case_id, (None, {}))
        if dataset.task == "classification" and case.target is not None:
            metrics = {"class": dataset.labels.get(case.target, str(case.target))}
        cases.append(
            ViewerCase(
                case.case_id,
                name,
                dataset.image_paths(case)[0],
                prediction,
                reference if reference is not None and reference.exists() else None,
                labels if dataset.task == "segmentation" else {},
                metrics,
            )
        )
    return cases


def _run_predictions(runs: Path) -> dict[str, tuple[Path, dict[str, float | str]]]:
    """``{case_id: (prediction file, metrics)}`` from the validation folders of a data set's runs."""
    from vesalius.model_package import ModelPackage

    found: dict[str, tuple[Path, dict[str, float | str]]] = {}
    for folder in sorted(runs.glob("*/fold_*")):
        package = ModelPackage(folder)
        validation = package.validation_dir
        if not validation.is_dir():
            continue
        scores = (package.validation_summary() or {}).get("cases", {})
        run = f"{folder.parent.name}/{folder.name}"
        for path in sorted(validation.iterdir()):
            case_id = strip_suffix(path) if path.is_file() and image_suffix(path) else None
            if case_id is None or case_id in found:
                continue
            metrics: dict[str, float | str] = {"run": run}
            metrics.update({f"dice {k}": float(v) for k, v in scores.get(case_id, {}).items()})
            found[case_id] = (path, metrics)
    return found


def file_cases(
    paths: list[Path], seg: Path | None = None, ref: Path | None = None, labels: dict[int, str] | None = None
) -> list[ViewerCase]:
    """Cases from image files and folders of images; ``seg``/``ref``: a file (one image) or a folder by case id;
    ``labels``: ``{value: name}`` (default: from a ``dataset.json`` beside ``ref`` or ``seg``, see above)."""
    images: list[Path] = []
    for path in paths:
        if path.is_dir():
            images += [p for p in sorted(path.iterdir()) if p.is_file() and image_suffix(p)]
        elif path.is_file():
            images.append(path)
        else:
            raise VesaliusError("file not found", path, "check the path")
    if not images:
        raise VesaliusError("no images found", paths[0] if paths else None, "give image files or folders of images")
    metrics = _metrics_csv(seg / "metrics.csv") if seg is not None and seg.is_dir() else {}
    if labels is None:
        labels = _nearby_labels([p for p in (ref, seg) if p is not None])
    cases = []
    for image in images:
        case_id = strip_suffix(image)
        cases.append(
            ViewerCase(
                case_id,
                image.parent.name,
                image,
                _match(seg, case_id, len(images)),
                _match(ref, case_id, len(images)),
                labels=dict(labels),
                metrics=metrics.get(case_id, {}),
            )
        )
    return cases


def _match(source: Path | None, case_id: str, count: int) -> Path | None:
    """The label map of ``case_id``: ``source`` itself when it is a file (and there is one image), else the file
    of that case id in the folder ``source``."""
    if source is None:
        return None
    if source.is_file():
        if count != 1:
            raise VesaliusError("one label file for several images", source, "give a folder of label maps")
        return source
    if not source.is_dir():
        raise VesaliusError("file not found", source, "check the path")
    for path in sorted(source.iterdir()):
        if path.is_file() and image_suffix(path) and strip_suffix(path) == case_id:
            return path
    return None


def _nearby_labels(sources: list[Path]) -> dict[int, str]:
    """The labels of the first readable ``dataset.json`` in, or beside, the label folders ``sources``."""
    from vesalius.evaluation.segmentation import label_names

    for source in sources:
        folder = source if source.is_dir() else source.parent
        for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
            if candidate.is_file():
                try:
                    return label_names(candidate)
                except VesaliusError:
                    continue
    return {}


def _metrics_csv(path: Path) -> dict[str, dict[str, float | str]]:
    """``{case: {"dice NAME": value, "hd95 NAME": value}}`` from an evaluation's ``metrics.csv`` (empty when
    absent)."""
    if not path.is_file():
        return {}
    found: dict[str, dict[str, float | str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for metric in ("dice", "hd95"):
                try:
                    found.setdefault(row["case"], {})[f"{metric} {row['name']}"] = float(row[metric])
                except (KeyError, ValueError):
                    continue
    return found
