"""Vesalius: deep learning on medical images.

The Python API mirrors the command-line tool, one call per step, for segmentation and classification alike (the
data set or the model says which task; the dispatch happens here, once)::

    import vesalius
    vesalius.import_dataset("Task04_Hippocampus", "hippo")
    vesalius.plan("hippo")
    vesalius.preprocess("hippo", "3d")
    result = vesalius.train("hippo", fold=0, time_budget_s=1800)
    vesalius.predict("images/", "predictions/", result.run_dir)
    vesalius.evaluate("predictions/", "labels/")

Heavy dependencies load on first use, so ``import vesalius`` is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "compress",
    "evaluate",
    "export",
    "import_dataset",
    "plan",
    "predict",
    "preprocess",
    "train",
    "validate",
    "verify",
]


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


def _task(name: str, workspace: Any, requested: str = "auto") -> str:
    from vesalius.data.dataset import dataset_task
    from vesalius.workspace import Workspace

    return dataset_task(Workspace.resolve(workspace).dataset_dir(name), requested)


def _check_options(task: str, given: dict[str, Any], accepted: Any) -> None:
    """Refuse options that the task does not take (``accepted``: a settings class or a function), in one line."""
    import dataclasses
    import inspect

    from vesalius.errors import VesaliusError

    if dataclasses.is_dataclass(accepted):
        known = {f.name for f in dataclasses.fields(accepted)}
    else:  # the options: keyword parameters with a default (not the inputs, not the progress callback)
        parameters = inspect.signature(accepted).parameters.values()
        known = {p.name for p in parameters if p.default is not p.empty and p.name != "on_case"} | {"on_case"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise VesaliusError(
            f"{', '.join(unknown)} does not apply to {task}",
            remedy=f"the options of {task}: {', '.join(sorted(known - {'on_case'}))}",
        )


def plan(name: str, workspace: Any = None, **kwargs: Any) -> Any:
    """Plan a data set and save the plan: a :class:`~vesalius.planning.plan.Plan` for segmentation
    (:func:`vesalius.planning.planner.plan_dataset`: ``device``, ``time_budget_s``, ``memory_gb``, ``n4``,
    ``denoise``), a :class:`~vesalius.planning.plan.ClassificationPlan` for classification
    (:func:`vesalius.planning.classification.plan_classification_dataset`: ``device``, ``time_budget_s``).

    ``group_by``: a segmentation data set's cross-validation keeps the cases of one subject in one fold, the subject
    read from the case ids by this regular expression (:func:`vesalius.data.splits.save_subject_splits`)."""
    group_by = kwargs.pop("group_by", None)
    if _task(name, workspace) == "classification":
        from vesalius.errors import VesaliusError
        from vesalius.planning.classification import plan_classification_dataset

        kwargs.pop("memory_gb", None)
        if kwargs.pop("n4", False) or kwargs.pop("denoise", None):
            raise VesaliusError(
                "N4 and denoising are options of segmentation plans", remedy="plan the classifier without them"
            )
        if group_by:
            raise VesaliusError(
                "--group-by is an option of segmentation plans: classifiers keep stratified folds",
                remedy="plan the classifier without it",
            )
        return plan_classification_dataset(name, workspace, **kwargs)[0]
    from vesalius.planning.planner import plan_dataset

    if group_by:  # first: a refused split leaves the plan as it was
        from vesalius.data.splits import save_subject_splits

        save_subject_splits(name, group_by, workspace)
    return plan_dataset(name, workspace, **kwargs)[0]


def preprocess(name: str, config: str = "3d", workspace: Any = None, **kwargs: Any) -> Any:
    """Preprocess a planned segmentation data set; see :func:`vesalius.preprocessing.pipeline.preprocess_dataset`."""
    from vesalius.preprocessing.pipeline import preprocess_dataset

    return preprocess_dataset(name, config, workspace, **kwargs)


def train(
    name: str,
    config: str | None = None,
    fold: int | str | None = None,
    workspace: Any = None,
    *,
    task: str = "auto",
    resume: bool = False,
    force: bool = False,
    validate: bool = True,
    show_progress: bool = False,
    report: bool = True,
    nproc: int = 1,
    **settings: Any,
) -> Any:
    """Train a model on one fold of a data set (or ``"all"``), validate it and write its report.

    Segmentation data sets train a U-Net of plan configuration ``config`` (default: ``"3d"`` where the plan has
    it, else ``"2d"``); ``settings`` are :class:`vesalius.training.SegmentationSettings` fields (``network``,
    ``epochs``, ``time_budget_s``, ``lr``, ``precision``, ...); ``fold`` defaults to 0. Classification data sets train a
    classifier (``config`` must be ``None``); ``settings`` are :class:`vesalius.training.ClassificationSettings`
    fields (``network``, ``epochs``, ``balance``, ...); ``fold`` defaults to ``"auto"`` (the source's official split
    where it has one). ``task`` (``"segmentation"`` or ``"classification"``) checks the data set's; an option that
    does not apply to the task is refused.

    Returns a :class:`vesalius.training.TrainingResult` whose ``validation`` holds the summary of :func:`validate`
    (``None`` without validation cases or with ``validate=False``). ``nproc`` above 1 trains with that many
    processes on this machine (as under ``torchrun``: every process trains its share, rank 0 alone writes,
    validates and reports; :mod:`vesalius.training.distributed`) and returns rank 0's result. With ``report``, the run
    folder then gets
    ``report.html`` (:func:`vesalius.reporting.report.build_report`); a failure to write it is a warning, never a
    lost run.
    """
    if nproc != 1:
        from vesalius.training.distributed import run_processes

        arguments = {"name": name, "config": config, "fold": fold, "workspace": workspace, "task": task}
        arguments |= {"resume": resume, "force": force, "validate": validate, "report": report}
        return run_processes(nproc, _train_process, {**arguments, "show_progress": show_progress, **settings})[0]
    if _task(name, workspace, task) == "classification":
        from vesalius.training.classification import train_classification
        from vesalius.training.settings import ClassificationSettings

        if config is not None:
            from vesalius.errors import VesaliusError

            raise VesaliusError(f"'{name}' is a classification data set: it has no plan configurations (--config)")
        _check_options("classification training", settings, ClassificationSettings)
        chosen: Any = ClassificationSettings(dataset=name, fold="auto" if fold is None else fold, **settings)
        run = train_classification
    else:
        from vesalius.training.segmentation import train_segmentation
        from vesalius.training.settings import SegmentationSettings

        if config is None:
            from vesalius.planning.planner import load_plan

            config = "3d" if "3d" in load_plan(name, workspace).configurations else "2d"
        _check_options("segmentation training", settings, SegmentationSettings)
        chosen = SegmentationSettings(dataset=name, config=config, fold=0 if fold is None else fold, **settings)
        run = train_segmentation  # type: ignore[assignment]
    result = run(chosen, workspace, resume=resume, force=force, show_progress=show_progress)
    from vesalius.training.distributed import Distributed

    if not Distributed.from_environment().is_writer:
        return result  # rank 0 of a distributed run validates and reports
    if validate:
        from vesalius.evaluation.validation import validate_run

        result.validation = validate_run(result.run_dir, workspace, device=chosen.device)
    if report:
        from vesalius.reporting.report import build_report_or_warn

        build_report_or_warn(result.run_dir, workspace=workspace)
    return result


def _train_process(arguments: dict[str, Any]) -> Any:
    """One process of ``train(..., nproc=N)``: :func:`train` with the arguments (progress drawn by rank 0)."""
    from vesalius.training.distributed import Distributed

    show = bool(arguments.pop("show_progress")) and Distributed.from_environment().is_writer
    return train(**arguments, show_progress=show)


def validate(run_dir: str | Path, workspace: Any = None, **kwargs: Any) -> dict[str, Any] | None:
    """Predict and score a trained model's validation cases; see :func:`vesalius.evaluation.validation.validate_run`
    (``checkpoint``, ``device``, ``precision``: by default the training precision)."""
    from vesalius.evaluation.validation import validate_run

    return validate_run(run_dir, workspace, **kwargs)


def predict(source: str | Path, output: str | Path, model: str | Path, *, backend: str = "auto", **options: Any) -> Any:
    """Predict the images in ``source`` with a trained model into ``output``.

    ``model``: a run folder or a folder of folds (run by torch), or an exported package (``NAME.vpkg`` or its
    folder: ``backend="auto"`` runs it on ONNX Runtime without torch, :class:`vesalius.runtime.Predictor`;
    ``backend="torch"`` runs its ``torch.export`` programs). ``shard``: ``"I/N"`` or a
    :class:`~vesalius.inference.cohort.Shard`, this process's share of a cohort; a folder output keeps a manifest,
    and cases an earlier run finished with the same model and options are skipped. Segmentation
    (:func:`vesalius.inference.segmentation.segment_files`; ``fast``, ``probabilities``, ``postprocess``,
    ``fill_holes``, ...) returns the written label maps; classification
    (:func:`vesalius.inference.classification.classify_files`; ``explain``) the predictions CSV. Torch runs take
    ``device`` and ``precision`` (default: the training precision); run folders also ``checkpoint``.
    """
    from vesalius.errors import VesaliusError
    from vesalius.inference.cohort import Shard
    from vesalius.runtime.package import is_package

    if isinstance(options.get("shard"), str):
        options["shard"] = Shard.parse(options["shard"])
    if backend not in ("auto", "torch", "onnxruntime"):
        raise VesaliusError(f"unknown backend '{backend}'", remedy="use auto, torch or onnxruntime")
    if is_package(model):
        if backend == "torch":
            from vesalius.deploy.torch_backend import predict_package_files

            _check_options("a package on torch", options, predict_package_files)
            return predict_package_files(source, output, model, **options)
        from vesalius.runtime.predictor import Predictor

        given = {k: v for k, v in options.items() if k != "on_case"}
        _check_options("a package on ONNX Runtime", given, Predictor.predict_files)
        return Predictor(model).predict_files(source, output, **options)
    if backend == "onnxruntime":
        raise VesaliusError(
            "ONNX Runtime runs exported packages, not run folders", model, "export it first: vesalius export"
        )
    from vesalius.model_package import find_packages

    if find_packages(model)[0].task == "classification":
        from vesalius.inference.classification import classify_files

        _check_options("classification", options, classify_files)
        return classify_files(source, output, model, **options)
    from vesalius.inference.segmentation import segment_files

    _check_options("segmentation", options, segment_files)
    return segment_files(source, output, model, **options)


def export(model: str | Path, output: str | Path, *, format: str = "vpkg", **options: Any) -> Path:
    """Export a trained model (a run folder or a folder of folds): ``format="vpkg"``, a deployable package
    (:func:`vesalius.deploy.export.export_model`: ``as_folder``, ``checkpoint``, ``name``, ``intended_use``);
    ``format="monai-bundle"``, a MONAI Bundle of a segmentation model
    (:func:`vesalius.deploy.monai_bundle.export_monai_bundle`: ``checkpoint``, ``name``, ``intended_use``)."""
    from vesalius.errors import VesaliusError

    if format == "monai-bundle":
        from vesalius.deploy.monai_bundle import export_monai_bundle

        _check_options("a MONAI Bundle export", options, export_monai_bundle)
        return export_monai_bundle(model, output, **options)
    if format != "vpkg":
        raise VesaliusError(f"unknown export format '{format}'", remedy="use vpkg or monai-bundle")
    from vesalius.deploy.export import export_model

    _check_options("export", options, export_model)
    return export_model(model, output, **options)


def compress(
    model: str | Path,
    output: str | Path,
    workspace: Any = None,
    *,
    prune: float | None = None,
    time_budget_s: float = 600.0,
    int8: bool = False,
    **options: Any,
) -> Path:
    """Compress a model into a new package whose model card records what was done and the validation figures.

    ``prune`` (e.g. 0.3 or 0.5): ``model`` is a trained segmentation fold; that fraction of its channels is removed
    and the narrower network fine-tuned for ``time_budget_s`` on the same fold and validated
    (:func:`vesalius.deploy.prune.prune_run`, a new run folder ``runs/NAME/CONFIG_wXX/fold_K`` with its report),
    then exported. ``int8``: the networks of the package (``model``, or the pruned export) are quantised
    (:func:`vesalius.deploy.compress.compress_package`: ``calibration``, ``validation``). The data set must be in
    ``workspace``.
    """
    from vesalius.errors import VesaliusError

    if prune is None and not int8:
        raise VesaliusError("no compression asked for", model, "give --int8, --prune 0.3 or both")
    if prune is not None and options:
        raise VesaliusError(f"{', '.join(sorted(options))} applies to --int8 only", remedy="leave it out")
    from vesalius.deploy.compress import compress_package

    _check_options("compression", options, compress_package)
    if prune is None:
        return compress_package(model, output, workspace=workspace, int8=True, **options)
    import tempfile

    from vesalius.deploy.prune import prune_run
    from vesalius.outputs import check_output
    from vesalius.reporting.report import build_report_or_warn

    check_output(output, [model], kind="file", suffixes=(".vpkg",))
    run = prune_run(model, prune, time_budget_s=time_budget_s, workspace=workspace)
    build_report_or_warn(run, workspace=workspace)
    if not int8:
        return export(run, output)
    with tempfile.TemporaryDirectory(prefix="vesalius-prune-") as folder:
        exported = export(run, Path(folder) / Path(output).name)
        return compress_package(exported, output, workspace=workspace, int8=True)


def evaluate(predictions: str | Path, reference: str | Path, workspace: Any = None, **options: Any) -> dict:
    """Score predictions and return the summary (also written).

    A folder of label maps against a folder of references (``reference``):
    :func:`vesalius.evaluation.segmentation.evaluate_folder` (``labels``, ``tolerance_mm``, ``output_dir``). A
    predictions CSV against the targets of data set ``reference``:
    :func:`vesalius.evaluation.classification.evaluate_predictions_csv` (``output_dir``).
    """
    if Path(predictions).suffix.lower() == ".csv":
        from vesalius.evaluation.classification import evaluate_predictions_csv

        return evaluate_predictions_csv(predictions, str(reference), workspace, **options)
    from vesalius.evaluation.segmentation import evaluate_folder

    return evaluate_folder(predictions, reference, **options)
