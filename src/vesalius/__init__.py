"""Vesalius: deep learning on medical images.

The Python API mirrors the command-line tool, one call per step::

    import vesalius
    vesalius.import_dataset("Task04_Hippocampus", "hippo")
    vesalius.plan("hippo")
    vesalius.preprocess("hippo", "3d")
    vesalius.train("hippo", "3d", fold=0, time_budget_s=1800)

Heavy dependencies load on first use, so ``import vesalius`` is cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["import_dataset", "plan", "preprocess", "train", "train_classifier", "verify"]


def import_dataset(source: Any, name: str, **kwargs: Any) -> Any:
    """Import a data set into the workspace; see :func:`vesalius.data.importers.import_dataset`."""
    from vesalius.data.importers import import_dataset as run

    return run(source, name, **kwargs)


def verify(name: str, workspace: Any = None) -> Any:
    """Verify an imported data set; returns a :class:`~vesalius.data.verify.VerificationReport`."""
    from vesalius.data.dataset import Dataset
    from vesalius.data.verify import verify_dataset
    from vesalius.workspace import Workspace

    return verify_dataset(Dataset.load(Workspace.resolve(workspace).dataset_dir(name)))


def plan(name: str, workspace: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Fingerprint and plan a data set; see :func:`vesalius.planning.planner.plan_dataset` (classification:
    :func:`vesalius.training.classification.plan_classification_dataset`)."""
    from vesalius.data.dataset import dataset_task
    from vesalius.planning.planner import plan_dataset
    from vesalius.workspace import Workspace

    if dataset_task(Workspace.resolve(workspace).dataset_dir(name)) == "classification":
        from vesalius.training.classification import plan_classification_dataset

        return plan_classification_dataset(name, workspace, **kwargs)[0]
    return plan_dataset(name, workspace, **kwargs)[0]


def preprocess(name: str, config: str = "3d", workspace: Any = None, **kwargs: Any) -> Any:
    """Preprocess a planned data set; see :func:`vesalius.preprocessing.pipeline.preprocess_dataset`."""
    from vesalius.preprocessing.pipeline import preprocess_dataset

    return preprocess_dataset(name, config, workspace, **kwargs)


def train(
    name: str,
    config: str = "3d",
    fold: int | str = 0,
    workspace: Any = None,
    *,
    resume: bool = False,
    force: bool = False,
    validate: bool = True,
    show_progress: bool = False,
    report: bool = True,
    **settings: Any,
) -> Any:
    """Train one fold (or ``"all"``) and, for a fold, score its validation cases on their original grids.

    ``settings`` are :class:`vesalius.training.TrainingConfig` fields (``epochs``, ``time_budget_s``, ``lr``,
    ...). Returns a :class:`vesalius.training.TrainingResult` whose ``validation`` holds the summary of
    :func:`vesalius.evaluation.cross_validation.validate_fold` (``None`` for ``"all"`` or ``validate=False``).
    With ``report``, the run folder then gets ``report.html`` (:func:`vesalius.reporting.report.build_report`); a
    failure to write it is a warning, never a lost run.
    """
    from vesalius.training import TrainingConfig, train_segmentation

    cfg = TrainingConfig(dataset=name, config=config, fold=fold, **settings)
    result = train_segmentation(cfg, workspace, resume=resume, force=force, show_progress=show_progress)
    if validate and fold != "all":
        from vesalius.evaluation.cross_validation import validate_fold

        result.validation = validate_fold(result.run_dir, workspace, device=cfg.device)
    if report:
        from vesalius.reporting.report import build_report_or_warn

        build_report_or_warn(result.run_dir, workspace=workspace)
    return result


def train_classifier(
    name: str,
    fold: int | str = "auto",
    workspace: Any = None,
    *,
    resume: bool = False,
    force: bool = False,
    validate: bool = True,
    show_progress: bool = False,
    report: bool = True,
    **settings: Any,
) -> Any:
    """Train a classifier on a classification data set's split and score its validation cases.

    ``fold``: ``"auto"`` (the source's official train/val split, else fold 0), ``"official"``, 0-4 (stratified
    folds) or ``"all"``. ``settings`` are :class:`vesalius.training.classification_config.ClassificationConfig`
    fields (``network``, ``epochs``, ``time_budget_s``, ``lr``, ``balance``, ...). Returns a
    :class:`vesalius.training.classification.ClassificationResult` whose ``validation`` holds the metrics of
    :func:`vesalius.evaluation.classification_eval.validate_classifier` (``None`` without validation cases or with
    ``validate=False``); with ``report``, the run folder gets ``report.html`` (a failure is only a warning).
    """
    from vesalius.training.classification import train_classification
    from vesalius.training.classification_config import ClassificationConfig

    cfg = ClassificationConfig(dataset=name, fold=fold, **settings)
    result = train_classification(cfg, workspace, resume=resume, force=force, show_progress=show_progress)
    if validate:
        from vesalius.evaluation.classification_eval import validate_classifier

        result.validation = validate_classifier(result.run_dir, workspace, device=cfg.device)
    if report:
        from vesalius.reporting.report import build_report_or_warn

        build_report_or_warn(result.run_dir, workspace=workspace)
    return result
