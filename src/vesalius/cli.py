"""The ``vesalius`` command: one thin command per step, each calling the Python API of its module.

Heavy modules (torch, MONAI, SimpleITK) load inside the commands, so ``vesalius --help`` answers at once.
A :class:`~vesalius.errors.VesaliusError` is printed as one line and exits with code 2; ``--debug`` (or
``VESALIUS_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from vesalius.errors import VesaliusError
from vesalius.pacs.commands import PasswordOption, TimeoutOption, TokenOption, UserOption, pacs_app
from vesalius.serving.commands_models import models_app
from vesalius.serving.commands_serve import monitor_app, serve_app
from vesalius.units import format_duration, parse_duration

app = typer.Typer(
    name="vesalius",
    help="Deep learning on medical images: import, verify, plan, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)  # no hard line breaks inside paths: output is often piped or grepped
err = Console(stderr=True)
_state = {"debug": bool(os.environ.get("VESALIUS_DEBUG"))}

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Workspace folder (default: $VESALIUS_HOME or ./vesalius_work)."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    if debug:
        _state["debug"] = True


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[str], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda _case: progress.advance(task)


def _print_report(report, limit: int = 200) -> None:  # type: ignore[no-untyped-def]
    lines = report.lines()
    for line in lines[:limit]:
        style = "red" if line.startswith("ERROR") else "yellow"
        out.print(line, style=style, markup=False, highlight=False, soft_wrap=True)
    if len(lines) > limit:
        out.print(f"... and {len(lines) - limit} more", markup=False)
    out.print(report.summary(), markup=False, highlight=False)


@app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(help="Folder, CSV or MedMNIST .npz to import.")],
    name: Annotated[str, typer.Argument(help="Name of the data set in the workspace.")],
    layout: Annotated[str, typer.Option(help="auto, msd, pairs, classes, csv or npz.")] = "auto",
    labels: Annotated[str | None, typer.Option("--labels", help="Label folder (pairs layout).")] = None,
    label_threshold: Annotated[
        str, typer.Option(help="Pairs: binarise labels at this value; 'auto' (0/255 masks) or 'none'.")
    ] = "auto",
    invert_labels: Annotated[
        bool, typer.Option("--invert-labels", help="Pairs: the foreground is below the threshold (dark on white).")
    ] = False,
    modality: Annotated[
        str | None, typer.Option(help="Modality per channel, comma-separated (e.g. CT or FLAIR,T1c).")
    ] = None,
    targets: Annotated[
        str, typer.Option(help="Classification targets: auto, binary, multiclass, multilabel or ordinal.")
    ] = "auto",
    force: Annotated[bool, typer.Option(help="Import despite errors, leaving out broken cases.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a data set of the same name.")] = False,
    workspace: WorkspaceOption = None,
    deid: Annotated[
        bool,
        typer.Option(
            "--deidentify",
            help="De-identify on the way in: DICOM as 'vesalius deidentify' does, case ids as keyed pseudonyms, "
            "no source paths kept.",
        ),
    ] = False,
    key: Annotated[
        str | None, typer.Option("--key", help="--deidentify: key of the pseudonyms, UIDs and date shift.")
    ] = None,
    retain_dates: Annotated[bool, typer.Option(help="--deidentify: keep dates, shifted per patient.")] = False,
    retain_patient_characteristics: Annotated[
        bool, typer.Option(help="--deidentify: keep sex, age, size, weight...")
    ] = False,
    clean_descriptors: Annotated[
        bool, typer.Option(help="--deidentify: keep descriptions, free text replaced.")
    ] = False,
    retain_safe_private: Annotated[bool, typer.Option(help="--deidentify: keep safe private tags (none are).")] = False,
    allow_burned_in: Annotated[
        bool, typer.Option(help="--deidentify: import images that may show burned-in text.")
    ] = False,
    linkage: Annotated[
        Path | None, typer.Option(help="--deidentify: write original ids and identifiers here, outside the workspace.")
    ] = None,
) -> None:
    """Import a data set into the workspace (sources are never modified), then verify it."""
    from vesalius.data.importers import ImportRefused, import_dataset

    options = None
    flags = (key, retain_dates, retain_patient_characteristics, clean_descriptors, retain_safe_private, allow_burned_in)
    if not deid and (any(flags) or linkage):
        raise VesaliusError("--key, --linkage and the de-identification options need --deidentify", remedy="add it")
    if deid:
        options = _deidentify_options(key, *flags[1:])
    threshold: int | str | None = {"auto": "auto", "none": None}.get(label_threshold.lower(), label_threshold)
    if isinstance(threshold, str) and threshold != "auto":
        if not threshold.isdigit():
            raise VesaliusError(f"--label-threshold '{label_threshold}'", remedy="give a number, 'auto' or 'none'")
        threshold = int(threshold)
    try:
        with _progress(f"importing {name}", total=None) as advance:
            dataset, report = import_dataset(
                source,
                name,
                layout=layout,  # type: ignore[arg-type]
                labels_dir=labels,
                label_threshold=threshold,  # type: ignore[arg-type]
                invert_labels=invert_labels,
                modalities=modality.split(",") if modality else None,
                target_type=targets,
                workspace=workspace,
                force=force,
                overwrite=overwrite,
                on_case=advance,
                deidentify=options,
                linkage=linkage,
            )
    except ImportRefused as e:
        _print_report(e.report)
        raise
    _print_report(report)
    for note in dataset.notes:
        out.print(f"note: {note}", markup=False)
    out.print(
        f"imported '{name}': {len(dataset.cases)} cases, {dataset.task}, {dataset.spatial_dims}D, "
        f"channels {dataset.channels}, labels {dataset.labels} -> {dataset.root}",
        markup=False,
        highlight=False,
    )


@app.command()
def verify(
    name: Annotated[str, typer.Argument(help="Data set name in the workspace.")],
    workspace: WorkspaceOption = None,
) -> None:
    """Check every case of an imported data set; exit code 2 when errors are found."""
    from vesalius.data.dataset import Dataset
    from vesalius.data.verify import verify_dataset
    from vesalius.workspace import Workspace

    folder = Workspace.resolve(workspace).dataset_dir(name)
    if not folder.is_dir():
        raise VesaliusError(f"no data set '{name}'", folder, "import it first with 'vesalius import SRC NAME'")
    dataset = Dataset.load(folder)
    with _progress(f"verifying {name}", total=len(dataset.cases)) as advance:
        report = verify_dataset(dataset, on_case=advance)
    _print_report(report)
    if not report.ok:
        raise typer.Exit(2)


@app.command()
def plan(
    name: Annotated[str, typer.Argument(help="Data set name in the workspace.")],
    device: Annotated[str, typer.Option(help="Device the plan is sized for: cpu or cuda.")] = "cpu",
    time_budget: Annotated[str | None, typer.Option(help="Training time budget, e.g. 30m, 2h, 900s.")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Memory available for training, GB.")] = None,
    n4: Annotated[
        bool, typer.Option("--n4", help="N4 bias-field correction of the MRI-like (z-scored) channels.")
    ] = False,
    denoise: Annotated[
        str | None, typer.Option(help="Edge-preserving denoising of every channel: curvature_flow or anisotropic.")
    ] = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="Keep each subject's cases in one cross-validation fold; the subject is the first group of this "
            "regular expression in the case id, e.g. 'Image_(\\d+)' or '^(.+)_scan'."
        ),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Fingerprint a data set and write its plan (JSON): spacing, patch, batch, network, normalisation, intensity
    filters (classification: input size, network, batch, optimiser, augmentation); with --group-by, its
    cross-validation folds."""
    import vesalius
    from vesalius.planning.plan import ClassificationPlan
    from vesalius.workspace import Workspace

    budget = parse_duration(time_budget) if time_budget else None
    result = vesalius.plan(
        name,
        workspace,
        device=device,
        time_budget_s=budget,
        memory_gb=memory_gb,
        n4=n4,
        denoise=denoise,
        group_by=group_by,
    )
    ws = Workspace.resolve(workspace)
    if isinstance(result, ClassificationPlan):
        out.print(
            f"classification ({result.target_type}): input {list(result.input_size)}, network {result.network.name}, "
            f"batch {result.batch_size}, {result.optimizer} lr {result.lr:g}, {result.epochs} epochs, "
            f"balance {result.balance}",
            markup=False,
            highlight=False,
        )
        out.print(f"plan written to {ws.classification_plan_path(name)}", markup=False, highlight=False)
        return
    for key, configuration in result.configurations.items():
        out.print(
            f"{key}: spacing {list(configuration.spacing)}, patch {list(configuration.patch_size)}, "
            f"batch {configuration.batch_size}, features {list(configuration.features)}, "
            f"{_iterations_and_need(configuration)}",
            markup=False,
            highlight=False,
        )
    out.print(f"normalisation: {[n.scheme for n in result.normalization]}", markup=False)
    if result.filters is not None:
        described = [
            " + ".join(f.method for f in (channel.bias_field, channel.denoise) if f is not None) or "none"
            for channel in result.filters
        ]
        out.print(f"filters: {described}", markup=False)
    out.print(f"plan written to {ws.plan_path(name)}", markup=False, highlight=False)
    if group_by:
        out.print(f"folds keep each subject's cases together: {ws.splits_path(name)}", markup=False, highlight=False)


def _iterations_and_need(configuration: Any) -> str:
    """A segmentation configuration's iterations, and what it expects the data set to need."""
    needed, seconds = configuration.iterations_needed, configuration.expected_training_s
    if needed is None or seconds is None:  # a plan of an earlier version
        return f"~{configuration.iterations} iterations in the budget"
    expected = f"~{format_duration(seconds)} on the planned device"
    if configuration.iterations < needed:
        return f"~{configuration.iterations} iterations in the budget; the data set needs ~{needed} ({expected})"
    return f"~{configuration.iterations} iterations, what the data set needs ({expected}; the budget allows more)"


@app.command()
def preprocess(
    name: Annotated[str, typer.Argument(help="Data set name in the workspace.")],
    config: Annotated[str, typer.Option(help="Plan configuration: 2d or 3d.")] = "3d",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    workspace: WorkspaceOption = None,
) -> None:
    """Crop, resample, normalise and cache every case for a plan configuration (resumable)."""
    from vesalius.preprocessing.pipeline import preprocess_dataset

    if workers < 1:
        raise VesaliusError(f"--workers {workers}: at least one worker is needed", remedy="give --workers 1 or more")
    with _progress(f"preprocessing {name} ({config})", total=None) as advance:
        folder = preprocess_dataset(name, config, workspace, workers=workers, on_case=advance)
    out.print(f"preprocessed '{name}' ({config}) -> {folder}", markup=False, highlight=False)


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="Data set name in the workspace (segmentation: planned).")],
    config: Annotated[
        str | None, typer.Option(help="Segmentation plan configuration: 3d or 2d (default: 3d where planned).")
    ] = None,
    fold: Annotated[
        str | None,
        typer.Option(
            help="Fold 0-4, 'all' (every case, no validation), or 'official' (classification: the source's "
            "train/val split). Default: 0; classification: the official split where there is one."
        ),
    ] = None,
    task: Annotated[str, typer.Option(help="auto (the data set's), segmentation or classification.")] = "auto",
    network: Annotated[
        str | None,
        typer.Option(
            help="Segmentation: resunet, attention or resenc; classification: cnn, resnet18, resnet50 or "
            "densenet121 (default: planned)."
        ),
    ] = None,
    balance: Annotated[
        str | None, typer.Option(help="Classification imbalance: none, weights or sampling (default: planned).")
    ] = None,
    early_stopping: Annotated[
        int | None, typer.Option(help="Classification: stop after N epochs without a better validation AUC.")
    ] = None,
    stop_on_plateau: Annotated[
        int | None,
        typer.Option(
            help="Segmentation: stop once the smoothed validation Dice of the last N epochs gains 0.002 or less on "
            "the N before (judged from epoch 3N; default 10; 0: never)."
        ),
    ] = None,
    pretrained: Annotated[
        Path | None, typer.Option(help="Classification: start from these weights (a state-dict file you supply).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: from the plan's budget).")] = None,
    iters_per_epoch: Annotated[
        int | None, typer.Option(help="Segmentation: iterations per epoch (default 250).")
    ] = None,
    time_budget: Annotated[
        str | None, typer.Option(help="Wall budget of the training loop, e.g. 30m (default: the plan's).")
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="sgd or adamw (default: the plan's; CPU plans adamw, GPU plans sgd).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate (default per optimizer).")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Decay: poly, cosine, or step (classification); default: the plan's.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: the plan's).")] = None,
    adversarial: Annotated[
        float | None,
        typer.Option(
            help="Segmentation: weight of an adversarial loss from a PatchGAN discriminator trained alongside "
            "(a training aid, not part of the model), e.g. 0.01; default 0 (off)."
        ),
    ] = None,
    adversarial_warmup: Annotated[
        float | None,
        typer.Option(help="Segmentation: fraction of the run before the adversarial loss starts (default 0.2)."),
    ] = None,
    adversarial_lr: Annotated[
        float | None, typer.Option(help="Segmentation: the discriminator's learning rate (default 0.0002).")
    ] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (CUDA).")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    nproc: Annotated[
        int,
        typer.Option(
            help="Train with N processes on this machine (DistributedDataParallel; gloo on CPUs, NCCL with one GPU "
            "per process). Several machines: torchrun ... -m vesalius train."
        ),
    ] = 1,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads of each process (default: the cores, shared by the processes).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its latest checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over where a run exists.")] = False,
    validate: Annotated[bool, typer.Option(help="Predict and score the fold's validation cases at the end.")] = True,
    workspace: WorkspaceOption = None,
) -> None:
    """Train a U-Net on a fold of a planned data set, or a classifier on a classification data set (checkpoints,
    logs and progress.png in the run folder)."""
    import vesalius
    from vesalius.model_package import ModelPackage
    from vesalius.training.distributed import Distributed

    options = {
        "epochs": epochs,
        "iterations_per_epoch": iters_per_epoch,
        "time_budget_s": parse_duration(time_budget) if time_budget else None,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "schedule": schedule,
        "network": network,
        "balance": balance,
        "early_stopping": early_stopping,
        "stop_on_plateau": stop_on_plateau,
        "pretrained": str(pretrained) if pretrained else None,
        "adversarial": adversarial,
        "adversarial_warmup": adversarial_warmup,
        "adversarial_lr": adversarial_lr,
        "threads": threads,
    }
    arguments = {
        "name": name,
        "config": config,
        "fold": None if fold is None else (fold if fold in ("all", "official", "auto") else _fold_number(fold)),
        "workspace": workspace,
        "task": task,
        "resume": resume,
        "force": force,
        "validate": validate,
        "show_progress": err.is_terminal,
        "precision": precision,
        "device": device,
        "seed": seed,
        "nproc": nproc,
        **{key: value for key, value in options.items() if value is not None},
    }
    result = vesalius.train(**arguments)
    if not Distributed.from_environment().is_writer:
        return  # under torchrun, rank 0 speaks for the run
    if ModelPackage(result.run_dir).task == "segmentation":
        done = f"trained {result.iterations} iterations ({result.epochs} epochs) in {result.elapsed_s:.0f} s"
    else:
        done = f"trained {result.epochs} epochs ({result.iterations} iterations, stopped by {result.stopped})"
        done += f" in {result.elapsed_s:.0f} s"
        if result.best_epoch is not None:
            done += f", best validation AUC {result.best_score:.3f} at epoch {result.best_epoch}"
    out.print(f"{done} -> {result.run_dir}", markup=False, highlight=False)
    outcome = ModelPackage(result.run_dir).outcome
    if outcome is not None:
        out.print(f"stopped: {outcome.reason}", markup=False, highlight=False)
    summary = result.validation
    if summary and "dice" in summary:
        dice = ", ".join(f"{k} {v:.3f}" for k, v in summary["dice"].items())
        out.print(
            f"validation Dice ({len(summary['cases'])} cases): mean {summary['dice_mean']:.3f} ({dice})",
            markup=False,
            highlight=False,
        )
    elif summary:
        _print_classification_metrics(summary, "validation")
    if (result.run_dir / "report.html").is_file():
        out.print(f"report: {result.run_dir / 'report.html'}", markup=False, highlight=False)


@app.command()
def predict(
    model: Annotated[
        Path,
        typer.Option("--model", "-m", help="Fold folder, configuration folder (all folds), or exported NAME.vpkg."),
    ],
    input: Annotated[
        Path | None, typer.Option("--input", "-i", help="Image file, DICOM series folder, or folder of images.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (or file, for one input case).")
    ] = None,
    fast: Annotated[
        bool, typer.Option("--fast", help="Segmentation: no mirroring test-time augmentation, larger window step.")
    ] = False,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write class probabilities.")] = False,
    checkpoint: Annotated[str, typer.Option(help="final, best or latest.")] = "final",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    postprocess: Annotated[
        bool, typer.Option(help="Apply the post-processing decided on the validation folds.")
    ] = True,
    fill_holes: Annotated[bool, typer.Option("--fill-holes", help="Fill the holes of every class.")] = False,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (bf16 where the CPU has it natively), fp32, bf16 or fp16 (default: as trained)."),
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="Classification: Grad-CAM overlays (PNG; 3D: slices and a NIfTI map).")
    ] = False,
    tta: Annotated[
        bool,
        typer.Option("--tta", help="Classification: average each model over flips of the axes it trained mirrored."),
    ] = False,
    backend: Annotated[
        str,
        typer.Option(help="auto (packages: onnxruntime, without torch; run folders: torch), torch or onnxruntime."),
    ] = "auto",
    from_pacs: Annotated[
        str | None,
        typer.Option("--from-pacs", envvar="VESALIUS_PACS_URL", help="DICOMweb root of a PACS to predict from."),
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="--from-pacs: the StudyInstanceUID.")] = None,
    series: Annotated[
        str | None, typer.Option("--series", help="--from-pacs: the SeriesInstanceUID (default: the only image one).")
    ] = None,
    push: Annotated[
        bool, typer.Option("--push", help="--from-pacs: store the DICOM-SEG and the SR report into the study.")
    ] = False,
    user: UserOption = None,
    password: PasswordOption = None,
    token: TokenOption = None,
    timeout: TimeoutOption = 60.0,
    shard: Annotated[
        str | None,
        typer.Option(help="Predict shard I/N of the cases (1-based; under torchrun: the rank's share)."),
    ] = None,
) -> None:
    """Segment images with a trained model (each output on its input's grid), or classify them with a trained
    classifier (a CSV of class probabilities). Exported packages run on ONNX Runtime without torch. With
    --from-pacs, a series is retrieved from a PACS (DICOMweb), segmented, measured, and with --push the DICOM-SEG
    and a DICOM SR measurement report are stored back into its study."""
    import vesalius

    # only the options given (not at their default) go on: the Python API refuses those of the other task
    chosen = {
        "fast": fast,
        "probabilities": probabilities,
        "postprocess": postprocess,
        "fill_holes": fill_holes,
        "explain": explain,
        "tta": tta,
        "checkpoint": checkpoint,
        "device": device,
        "precision": precision,
    }
    defaults = {
        "fast": False,
        "probabilities": False,
        "postprocess": True,
        "fill_holes": False,
        "explain": False,
        "tta": False,
        "checkpoint": "final",
        "device": "cpu",
        "precision": None,
    }
    given = {key: value for key, value in chosen.items() if value != defaults[key]}
    if from_pacs is not None:
        if input is not None or not study:
            raise VesaliusError(
                "--from-pacs takes the series from the PACS", remedy="give --study UID (and no --input)"
            )
        from vesalius.pacs.commands import connect

        pacs = connect(from_pacs, user, password, token, timeout)
        _predict_from_pacs(
            pacs,
            study,
            series,
            push,
            output,
            lambda source, target: vesalius.predict(source, target, model, backend=backend, **given),
        )
        return
    if input is None or output is None:
        raise VesaliusError("no images to predict", remedy="give --input and --output (or --from-pacs URL --study)")
    if study or series or push:
        raise VesaliusError("--study, --series and --push go with --from-pacs", remedy="give --from-pacs URL")
    from vesalius.inference.cohort import Shard

    part = Shard.parse(shard) if shard else Shard.from_environment()  # under torchrun: the ranks split the cases
    if part is not None:
        given["shard"] = part
    done, skipped, start = [], [], time.perf_counter()
    with _progress(f"predicting{f' (shard {part})' if part else ''}", total=None) as advance:

        def report(case) -> None:  # type: ignore[no-untyped-def]
            (skipped if case.skipped else done).append(case.seconds)
            advance(case.case_id)
            if not case.skipped and not err.is_terminal:  # a log file gets each case's time
                err.print(f"{case.case_id}: {case.seconds:.2f} s", markup=False, highlight=False)

        written = vesalius.predict(input, output, model, backend=backend, on_case=report, **given)
    seconds = time.perf_counter() - start
    rate = f"{len(done) / seconds:.2f} cases/s" if done and seconds > 0 else "nothing predicted"
    earlier = f", {len(skipped)} done by an earlier run" if skipped else ""
    out.print(f"{len(done)} case(s) predicted in {seconds:.1f} s ({rate}){earlier}", markup=False, highlight=False)
    if isinstance(written, Path):
        out.print(f"class probabilities written to {written}", markup=False, highlight=False)
    else:
        out.print(f"{len(written)} segmentation(s) written to {written[0].parent}", markup=False, highlight=False)


def _predict_from_pacs(  # type: ignore[no-untyped-def]
    pacs, study: str, series: str | None, push: bool, output: Path | None, predict
) -> None:
    """``vesalius predict --from-pacs``: :func:`vesalius.pacs.workflow.predict_from_pacs`, and what it did."""
    from vesalius.pacs.workflow import predict_from_pacs

    say = lambda step: err.print(step, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    result = predict_from_pacs(pacs, study, predict, series_uid=series, push=push, output=output, on_step=say)
    for name, figures in result.measurements.items():
        size = next(iter(figures.values()))
        out.print(f"{name}: {size:.4g} in {int(figures['components'])} component(s)", markup=False)
    if result.pushed:
        out.print(
            f"stored into study {study}: DICOM-SEG {result.seg_uid}, SR {result.sr_uid} on {pacs.url}",
            markup=False,
            highlight=False,
        )
    if result.files:
        out.print(f"written to {output}", markup=False, highlight=False)


@app.command()
def evaluate(
    predictions: Annotated[
        Path, typer.Argument(help="Folder of predicted label maps, or a classification predictions CSV.")
    ],
    references: Annotated[
        Path, typer.Argument(help="Folder of reference label maps (same names); for a CSV, the data set's name.")
    ],
    tolerance_mm: Annotated[float, typer.Option(help="Tolerance of the normalised surface Dice, mm.")] = 1.0,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for metrics.csv and summary.json (default: PREDICTIONS)."),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="Label names from a dataset.json, a data set's name or a run folder (default: values)."),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Dice, IoU, HD95, ASSD, surface Dice, precision, recall, volumes per case and class (distances in mm); for a
    predictions CSV: accuracy, balanced accuracy, AUC, F1, sensitivity, specificity, confusion matrix, ECE and
    bootstrap 95% intervals (summary.json)."""
    import vesalius
    from vesalius.evaluation.segmentation import label_names

    if predictions.suffix.lower() == ".csv":
        scores = vesalius.evaluate(predictions, str(references), workspace, output_dir=output)
        _print_classification_metrics(scores, "predictions")
        out.print(f"metrics written to {output or predictions.parent}", markup=False, highlight=False)
        return

    names = label_names(labels, workspace) if labels else None
    summary = vesalius.evaluate(
        predictions, references, workspace, labels=names, tolerance_mm=tolerance_mm, output_dir=output
    )
    for name, metrics in summary["metrics"].items():
        out.print(
            f"{name}: Dice {_number(metrics['dice']['mean'], '.3f')}, "
            f"HD95 {_number(metrics['hd95']['mean'], '.2f')} mm, "
            f"surface Dice {_number(metrics['surface_dice']['mean'], '.3f')} ({summary['num_cases']} cases)",
            markup=False,
        )
    out.print(f"metrics written to {output or predictions}", markup=False, highlight=False)


@app.command()
def measure(
    seg: Annotated[Path, typer.Argument(help="Segmentation (label map) file or DICOM folder.")],
    image: Annotated[Path | None, typer.Option(help="The image on the same grid, for intensities.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the table: .csv (one row per component) or .json.")
    ] = None,
    connectivity: Annotated[str, typer.Option(help="full (26/8 neighbours) or face (6/4).")] = "full",
    source: Annotated[
        Path | None, typer.Option(help="With a DICOM-SEG: the folder of the series it was made from.")
    ] = None,
    sr: Annotated[
        Path | None,
        typer.Option("--sr", help="Also write a DICOM SR (TID 1500) of the measurements; needs a DICOM-SEG."),
    ] = None,
) -> None:
    """Volumes (mL; 2D: mm^2), connected components, centroids (world mm) and intensities per label.

    A DICOM-SEG is measured on the grid of its series (--source); --sr then writes the measurements as a DICOM
    Structured Report that references the SEG and the series.
    """
    from rich.table import Table

    from vesalius.evaluation.measure import measure_segmentation
    from vesalius.io import read_image
    from vesalius.io.dicom_seg import is_dicom_seg, read_dicom_seg
    from vesalius.outputs import check_output

    if output:
        check_output(output, [seg, image, source], kind="file", suffixes=(".csv", ".json"))
    if sr:
        check_output(sr, [seg, image, source, output], kind="file", suffixes=(".dcm",), option="--sr")
    dicom_seg, names = None, None
    if is_dicom_seg(seg):
        if source is None:
            raise VesaliusError(
                "a DICOM-SEG is measured on the grid of the series it was made from",
                seg,
                "give that series' folder with --source SERIES_DIR",
            )
        dicom_seg = read_dicom_seg(seg, source)
        label_map, names = dicom_seg.labels, dicom_seg.names
    else:
        if (sr or source) and seg.exists():
            raise VesaliusError(
                f"{'--sr' if sr else '--source'} needs the segmentation as a DICOM-SEG file",
                seg,
                "give the CASE_seg.dcm that vesalius predict writes for a DICOM series, with --source SERIES_DIR",
            )
        label_map = read_image(seg)
    picture = read_image(image) if image else None
    if picture is not None and image is not None:
        _check_same_grid(picture, label_map, image, "the image the segmentation was made on")
    try:
        result = measure_segmentation(label_map, picture, labels=names, connectivity=connectivity)
    except VesaliusError as e:
        raise VesaliusError(e.problem, e.file or seg, e.remedy) from None  # name the segmentation file
    table = Table("label", "name", "component", result.size_column, "centroid (mm)", "mean intensity")
    for row in result.to_rows():
        centroid = ", ".join(f"{row[k]:.1f}" for k in row if k.startswith("centroid_") and k.endswith("_mm"))
        mean = row.get("mean_intensity")
        table.add_row(
            str(row["label"]),
            row["name"],
            str(row["component"]),
            f"{row[result.size_column]:.4g}",
            centroid,
            "" if mean is None else f"{mean:.1f}",
        )
    out.print(table)
    for row in result.label_rows():
        out.print(
            f"{row['name']}: {row[result.size_column]:.4g} {result.unit} in {row['components']} component(s)",
            markup=False,
        )
    if output:
        written = result.write_json(output) if output.suffix.lower() == ".json" else result.write_csv(output)
        out.print(f"written to {written}", markup=False, highlight=False)
    if sr and dicom_seg is not None:
        import pydicom

        from vesalius.evaluation.structured_report import write_structured_report

        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_seg.series.files]
        try:
            report = write_structured_report(dicom_seg.dataset, sources, result, sr)
        except VesaliusError as e:
            raise VesaliusError(e.problem, e.file or seg, e.remedy) from None
        out.print(f"structured report written to {report}", markup=False, highlight=False)


@app.command()
def overlay(
    image: Annotated[Path, typer.Argument(help="The image (file or DICOM folder).")],
    seg: Annotated[Path, typer.Argument(help="Segmentation (label map) on the image's grid.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The PNG to write.")],
    reference: Annotated[Path | None, typer.Option(help="Reference label map, drawn as outlines.")] = None,
    window: Annotated[
        str | None, typer.Option(help="CT window: lung, mediastinum, abdomen, liver, brain, bone, or LEVEL,WIDTH.")
    ] = None,
    percentiles: Annotated[str, typer.Option(help="Without --window: LOW,HIGH percentiles of non-zero voxels.")] = (
        "1,99"
    ),
    slice_index: Annotated[
        int | None, typer.Option("--slice", help="3D: the axial slice (last array axis) to show.")
    ] = None,
    label: Annotated[int | None, typer.Option(help="3D: centre on the largest part of this label.")] = None,
    montage: Annotated[int, typer.Option(help="3D: show N axial slices across the segmentation instead.")] = 0,
    alpha: Annotated[float, typer.Option(help="Opacity of the segmentation fill.")] = 0.5,
    size: Annotated[int, typer.Option(help="Longest panel side, pixels.")] = 256,
) -> None:
    """Draw a segmentation (and a reference) over an image: three planes through the largest lesion, or a montage."""
    from vesalius.io import read_image
    from vesalius.outputs import check_output
    from vesalius.reporting.overlay import focus_point, parse_window, render_overlay

    try:
        low, high = (float(v) for v in percentiles.split(","))
    except ValueError:
        raise VesaliusError(f"--percentiles '{percentiles}'", remedy="give two numbers, e.g. 1,99") from None
    if not 0 <= low < high <= 100:
        raise VesaliusError(
            f"--percentiles {percentiles}", remedy="give LOW,HIGH with 0 <= LOW < HIGH <= 100, e.g. 1,99"
        )
    for name, value, fits, hint in (
        ("--alpha", alpha, 0 <= alpha <= 1, "between 0 and 1"),
        ("--size", size, 16 <= size <= 8192, "between 16 and 8192 pixels"),
        ("--montage", montage, 0 <= montage <= 100, "between 0 (three planes) and 100 slices"),
    ):
        if not fits:
            raise VesaliusError(f"{name} {value} is out of range", remedy=f"give {name} {hint}")
    chosen_window = parse_window(window)
    check_output(output, [image, seg, reference], kind="file", suffixes=(".png",))
    picture, segmentation = read_image(image), read_image(seg)
    _check_same_grid(segmentation, picture, seg, "a segmentation of the image")
    ref = read_image(reference) if reference else None
    if ref is not None and reference is not None:
        _check_same_grid(ref, picture, reference, "a reference label map of the image")
    if label is not None and not (segmentation.array == label).any():
        raise VesaliusError(f"--label {label} is not in the segmentation", seg, "give a label value it holds")
    point = None
    if slice_index is not None and picture.ndim == 3:
        if not 0 <= slice_index < picture.spatial_shape[2]:
            raise VesaliusError(
                f"--slice {slice_index} is outside 0-{picture.spatial_shape[2] - 1}",
                remedy=f"give --slice between 0 and {picture.spatial_shape[2] - 1}",
            )
        centre = focus_point(segmentation.array[0], label)
        point = (centre[0], centre[1], slice_index)
    result = render_overlay(
        picture,
        segmentation,
        ref,
        window=chosen_window,
        percentiles=(low, high),
        point=point,
        focus_label=label,
        montage=montage,
        alpha=alpha,
        size=size,
    )
    out.print(f"overlay written to {result.save(output)}", markup=False, highlight=False)


@app.command()
def report(
    source: Annotated[Path, typer.Argument(help="Run folder (runs/NAME/CONFIG/fold_K) or evaluation folder.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The HTML file (default: SOURCE/report.html).")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Evaluation folders: the images the predictions were made from.")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Write one self-contained HTML report (pictures embedded; opens without network)."""
    from vesalius.reporting.report import build_report

    path = build_report(source, output, workspace=workspace, images=images)
    out.print(f"report written to {path}", markup=False, highlight=False)


@app.command()
def view(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="A workspace folder (default: the workspace), or images/folders.")
    ] = None,
    seg: Annotated[Path | None, typer.Option(help="Prediction: a file, or a folder matched by case id.")] = None,
    ref: Annotated[Path | None, typer.Option(help="Reference: a file, or a folder matched by case id.")] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="Label names for files: a dataset.json, a data set's name or a run folder."),
    ] = None,
    review: Annotated[
        str, typer.Option(help="Name of the review: verdicts and corrections go to WORKSPACE/reviews/NAME.")
    ] = "default",
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8765,
    workspace: WorkspaceOption = None,
) -> None:
    """Browse and review cases in a local web viewer (NiiVue): overlays, metrics, verdicts, corrections.

    Verdicts, notes and corrected label maps go to WORKSPACE/reviews/NAME (the workspace viewed, else the default
    workspace), never next to the inputs.
    """
    from vesalius.evaluation.review import Review
    from vesalius.evaluation.segmentation import label_names
    from vesalius.viewer.app import NIIVUE_BUNDLE, create_app, install_hint, serve
    from vesalius.viewer.cases import collect_cases
    from vesalius.workspace import Workspace

    if not review or not review.replace("-", "").replace("_", "").isalnum():
        raise VesaliusError(f"invalid review name '{review}'", remedy="use letters, digits, '-' and '_'")
    roots = list(paths) if paths else [Workspace.resolve(workspace).root]
    names = label_names(labels, workspace) if labels is not None else None
    cases = collect_cases(roots, seg, ref, names)
    viewed = roots[0] if len(roots) == 1 and Workspace.holds_workspace(roots[0]) else None
    ws = Workspace.resolve(viewed if viewed is not None else workspace)
    if not NIIVUE_BUNDLE.is_file():
        err.print(f"warning: NiiVue is not installed, the page cannot draw images: {install_hint()}", markup=False)
    serve(
        create_app(cases, review=Review.of(ws.root, review)),
        host,
        port,
        on_ready=lambda url: out.print(f"Vesalius viewer: {url} ({len(cases)} cases; Ctrl+C stops)", markup=False),
    )


corrections_app = typer.Typer(help="Corrections drawn in the viewer: export them as a data set.", no_args_is_help=True)
app.add_typer(corrections_app, name="corrections")


@corrections_app.command("export")
def corrections_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The data set folder to write (pairs layout).")],
    review: Annotated[str, typer.Option(help="The review's name (vesalius view --review NAME).")] = "default",
    workspace: WorkspaceOption = None,
) -> None:
    """Write the cases corrected in the viewer (their images and corrected label maps) as a folder that
    'vesalius import' takes as a new data set."""
    from vesalius.evaluation.review import Review
    from vesalius.workspace import Workspace

    found = Review.of(Workspace.resolve(workspace).root, review)
    if not found.entries:
        raise VesaliusError("no review of this name", found.folder, "check --review and --workspace (vesalius view)")
    written, count = found.export_corrections(output)
    out.print(f"{count} corrected case(s) written to {written}; import them with: vesalius import {written} NAME")


def _check_same_grid(image: Any, other: Any, path: Path, what: str) -> None:
    """Refuse ``image`` (read from ``path``) unless it has the spatial shape of ``other``."""
    if image.spatial_shape != other.spatial_shape:
        raise VesaliusError(
            f"shape {list(image.spatial_shape)} is not on the image's grid ({list(other.spatial_shape)})",
            path,
            f"give {what}",
        )


def _print_classification_metrics(summary: dict, what: str) -> None:
    text = f"{what} ({summary['n']} cases): accuracy {summary['accuracy']:.3f}, AUC {summary['auc']:.3f}"
    if summary.get("accuracy_ci") and summary.get("auc_ci"):
        a, u = summary["accuracy_ci"], summary["auc_ci"]
        text += f" (95% CI accuracy {a[0]:.3f}-{a[1]:.3f}, AUC {u[0]:.3f}-{u[1]:.3f})"
    if "balanced_accuracy" in summary:
        text += (
            f", balanced accuracy {summary['balanced_accuracy']:.3f}, F1 {summary['f1_macro']:.3f}, "
            f"ECE {summary['ece']:.3f}"
        )
    out.print(text, markup=False, highlight=False)


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _fold_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise VesaliusError(f"invalid fold '{text}'", remedy="use 0-4 or 'all'") from None


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(help="Fold folder, or configuration folder (a fold ensemble).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The package: NAME.vpkg (or a folder with --dir).")],
    export_format: Annotated[
        str,
        typer.Option(
            "--format", help="vpkg, or monai-bundle: a MONAI Bundle folder (or NAME.zip) of a segmentation model."
        ),
    ] = "vpkg",
    as_folder: Annotated[bool, typer.Option("--dir", help="Write the package as a folder instead of a zip.")] = False,
    checkpoint: Annotated[str, typer.Option(help="final or best.")] = "final",
    name: Annotated[str | None, typer.Option(help="The model's name (default: the output's name).")] = None,
    intended_use: Annotated[
        str | None, typer.Option("--intended-use", help="The model card's intended use (default: research use).")
    ] = None,
) -> None:
    """Export a trained model as one deployable package: ONNX and torch.export networks, the contract of its
    pre- and post-processing (vesalius.json), its model card and fingerprint, every member's SHA-256; or, with
    --format monai-bundle, as a MONAI Bundle."""
    import vesalius

    options: dict[str, Any] = {"checkpoint": checkpoint, "name": name, "intended_use": intended_use}
    if as_folder:
        options["as_folder"] = True  # a MONAI Bundle refuses it in one line: it is a folder already
    written = vesalius.export(model, output, format=export_format, **options)
    out.print(f"package written to {written}", markup=False, highlight=False)


@app.command()
def compress(
    model: Annotated[
        Path, typer.Argument(help="An exported package (NAME.vpkg) for --int8; a trained fold for --prune.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The new package: OUT.vpkg.")],
    int8: Annotated[
        bool, typer.Option("--int8", help="Quantise the networks to INT8 (ONNX Runtime static, QDQ, per channel).")
    ] = False,
    prune: Annotated[
        float | None,
        typer.Option(help="Remove this fraction of the channels (e.g. 0.3, 0.5), then fine-tune: a trained fold."),
    ] = None,
    budget: Annotated[str, typer.Option(help="Fine-tuning time after pruning, e.g. 10m.")] = "10m",
    calibration: Annotated[int, typer.Option(help="Training cases that calibrate the INT8 ranges.")] = 8,
    validation: Annotated[
        int | None, typer.Option(help="Validate the INT8 networks on at most this many cases (default: all).")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Compress a model into a new package whose model card records what was done and the validation figures
    before and after (the training data set must be in the workspace)."""
    import vesalius

    options: dict[str, Any] = {}
    if prune is None:
        options = {"calibration": calibration, "validation": validation}
    else:
        options = {"prune": prune, "time_budget_s": parse_duration(budget)}
    written = vesalius.compress(model, output, workspace, int8=int8, **options)
    out.print(f"package written to {written}{_card_figures(written)}", markup=False, highlight=False)


def _card_figures(package: Path) -> str:
    """`` (dice 0.884 -> 0.884)``: the validation figures the compression recorded, if any."""
    from vesalius.runtime.package import Package

    with Package(package) as opened:
        card = opened.json("model_card.json") or {}
    pruning, compression = card.get("pruning") or {}, card.get("compression") or {}
    if not compression:
        before, after = (pruning.get(k) or {} for k in ("dice_before", "dice_after"))
        if not (before.get("mean") and after.get("mean")):
            return ""
        return f" (dice {before['mean']:.4f} -> {after['mean']:.4f})"
    figures = compression.get("figures") or {}
    names = [k.removesuffix("_fp32") for k in figures if k.endswith("_fp32")]
    numbers = [(n, figures[f"{n}_fp32"], figures.get(f"{n}_int8")) for n in names]
    text = ", ".join(f"{n} {a:.4f} -> {b:.4f}" for n, a, b in numbers if isinstance(a, float) and isinstance(b, float))
    return f" ({text})" if text else ""


@app.command()
def datasets(workspace: WorkspaceOption = None) -> None:
    """List the data sets in the workspace."""
    from vesalius.data.dataset import Dataset
    from vesalius.workspace import Workspace

    ws = Workspace.resolve(workspace)
    broken = []
    for name in ws.dataset_names():
        try:
            d = Dataset.load(ws.dataset_dir(name))
        except VesaliusError as e:  # one broken data set must not hide the others: listed, then reported
            broken.append(e)
            continue
        out.print(f"{name}\t{d.task}\t{d.spatial_dims}D\t{len(d.cases)} cases\t{d.source.get('layout', '')}")
    for error in broken[:-1]:
        err.print(f"error: {error.one_line()}", markup=False, highlight=False, soft_wrap=True)
    if broken:
        raise broken[-1]


@app.command()
def demo(
    cases: Annotated[int, typer.Option(help="Number of synthetic 3D cases.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 0,
    time_budget: Annotated[str, typer.Option(help="Training time, e.g. 60s or 2m.")] = "60s",
    workspace: WorkspaceOption = None,
) -> None:
    """Run the pipeline end to end on built-in synthetic phantoms (no download needed)."""
    from vesalius.demo import run_demo

    run_demo(
        workspace=workspace,
        num_cases=cases,
        seed=seed,
        echo=lambda s: out.print(s, markup=False),
        time_budget_s=parse_duration(time_budget),
    )


def _deidentify_options(key: str | None, *flags: bool) -> Any:
    """The :class:`~vesalius.io.deidentify.DeidentifyOptions` of the command-line flags (in the order of the
    profile's options: dates, patient characteristics, descriptors, safe private, burned-in), with the key from
    ``--key`` or ``$VESALIUS_DEID_KEY``."""
    from vesalius.io.deidentify import DeidentifyOptions

    key = key or os.environ.get("VESALIUS_DEID_KEY")
    if not key:  # no default: a fixed key would let anyone redo the UID mapping and date shifts
        raise VesaliusError("no de-identification key", remedy="give --key KEY or set VESALIUS_DEID_KEY")
    dates, characteristics, descriptors, safe_private, burned_in = flags
    return DeidentifyOptions(
        key=key,
        retain_dates_shifted=dates,
        retain_patient_characteristics=characteristics,
        clean_descriptors=descriptors,
        retain_safe_private=safe_private,
        allow_burned_in=burned_in,
    )


@app.command()
def deidentify(
    src: Annotated[Path, typer.Argument(help="DICOM file or folder (walked recursively).")],
    dest: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder (mirrors SRC's relative paths).")],
    key: Annotated[
        str | None, typer.Option("--key", help="Key of the UID hash and date shift (or $VESALIUS_DEID_KEY).")
    ] = None,
    retain_dates: Annotated[bool, typer.Option(help="Keep dates, shifted per patient by whole days.")] = False,
    retain_patient_characteristics: Annotated[bool, typer.Option(help="Keep sex, age, size, weight...")] = False,
    clean_descriptors: Annotated[bool, typer.Option(help="Keep descriptions, with free text replaced.")] = False,
    retain_safe_private: Annotated[bool, typer.Option(help="Keep private tags listed as safe (none are).")] = False,
    allow_burned_in: Annotated[bool, typer.Option(help="De-identify images that may show burned-in text.")] = False,
    linkage: Annotated[Path | None, typer.Option(help="Write original-to-new identifiers here (keep it safe).")] = None,
) -> None:
    """De-identify DICOM files: PS3.15 Annex E Basic Application Level Confidentiality Profile."""
    from vesalius.io.deidentify import AUDIT_NAME
    from vesalius.io.deidentify import deidentify as run_deidentify

    options = _deidentify_options(
        key, retain_dates, retain_patient_characteristics, clean_descriptors, retain_safe_private, allow_burned_in
    )
    report = run_deidentify(src, dest, options, linkage)
    for record in report.skipped:
        out.print(f"skipped {record.source}: {record.reason}", markup=False, highlight=False)
    for record in report.burned_in:
        out.print(f"may show burned-in text: {record.output}", markup=False, highlight=False)
    for record in report.refused:
        out.print(f"refused {record.source}: {record.reason}", markup=False, highlight=False)
    out.print(f"{len(report.written)} files de-identified into {dest} (audit: {dest / AUDIT_NAME})", markup=False)
    if report.refused:
        raise VesaliusError(
            f"{len(report.refused)} images may show burned-in text and were not written",
            remedy="check them and give --allow-burned-in to include them",
        )


#: Modules of the whole toolkit that ``pip install vesalius[runtime]`` does not bring.
app.add_typer(serve_app, name="serve")
app.add_typer(models_app, name="models", help="The model registry of the service: versions and aliases.")
app.add_typer(monitor_app, name="monitor")
app.add_typer(pacs_app, name="pacs")

FULL_TOOLKIT_MODULES = ("torch", "monai", "matplotlib", "jinja2", "highdicom", "tensorboard", "onnx", "onnxscript")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, print user errors as one line (exit 2), tracebacks only with --debug."""
    _state["debug"] = bool(os.environ.get("VESALIUS_DEBUG"))  # --debug of an earlier call does not stick
    try:
        app(args=argv, prog_name="vesalius")  # standalone: usage errors print and raise SystemExit
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except VesaliusError as e:
        if _state["debug"]:
            raise
        err.print(f"error: {e.one_line()}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except Exception as e:  # a bug, not a user error: say so and keep the traceback one flag away
        if _state["debug"]:
            raise
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in FULL_TOOLKIT_MODULES:
            err.print(
                f"error: this command needs '{e.name}', which the runtime-only install leaves out. Install the "
                "whole toolkit (pip install 'vesalius[all]'), or predict with an exported package.",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            return 2
        report_internal_error(e)
        return 1
    return 0


def report_internal_error(error: Exception) -> None:
    """Print a bug (an exception that is not a :class:`~vesalius.errors.VesaliusError`) as one line. The test suite
    replaces this function to fail any test in which it is reached."""
    err.print(
        f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback and report it)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


if __name__ == "__main__":
    sys.exit(main())
