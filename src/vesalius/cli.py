"""The ``vesalius`` command: one thin command per step, each calling the Python API of its module.

Heavy modules (torch, MONAI, SimpleITK) load inside the commands, so ``vesalius --help`` answers at once.
A :class:`~vesalius.errors.VesaliusError` is printed as one line and exits with code 2; ``--debug`` (or
``VESALIUS_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from vesalius.errors import VesaliusError

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
    modality: Annotated[
        str | None, typer.Option(help="Modality per channel, comma-separated (e.g. CT or FLAIR,T1c).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Import despite errors, leaving out broken cases.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a data set of the same name.")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Import a data set into the workspace (sources are never modified), then verify it."""
    from vesalius.data.importers import ImportRefused, import_dataset

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
                modalities=modality.split(",") if modality else None,
                workspace=workspace,
                force=force,
                overwrite=overwrite,
                on_case=advance,
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
    name: Annotated[str, typer.Argument(help="Segmentation data set name in the workspace.")],
    device: Annotated[str, typer.Option(help="Device the plan is sized for: cpu or cuda.")] = "cpu",
    time_budget: Annotated[str | None, typer.Option(help="Training time budget, e.g. 30m, 2h, 900s.")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="Memory available for training, GB.")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Fingerprint a data set and write its plan (JSON): spacing, patch, batch, network, normalisation."""
    from vesalius.planning.planner import plan_dataset

    budget = parse_duration(time_budget) if time_budget else None
    result, path = plan_dataset(name, workspace, device=device, time_budget_s=budget, memory_gb=memory_gb)
    for key, config in result["configurations"].items():
        out.print(
            f"{key}: spacing {config['spacing']}, patch {config['patch_size']}, batch {config['batch_size']}, "
            f"features {config['features']}, ~{config['iterations']} iterations in the budget",
            markup=False,
            highlight=False,
        )
    out.print(f"normalisation: {[n['scheme'] for n in result['normalization']]}", markup=False)
    out.print(f"plan written to {path}", markup=False, highlight=False)


@app.command()
def preprocess(
    name: Annotated[str, typer.Argument(help="Data set name in the workspace.")],
    config: Annotated[str, typer.Option(help="Plan configuration: 2d or 3d.")] = "3d",
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    workspace: WorkspaceOption = None,
) -> None:
    """Crop, resample, normalise and cache every case for a plan configuration (resumable)."""
    from vesalius.preprocessing.pipeline import preprocess_dataset

    with _progress(f"preprocessing {name} ({config})", total=None) as advance:
        folder = preprocess_dataset(name, config, workspace, workers=workers, on_case=advance)
    out.print(f"preprocessed '{name}' ({config}) -> {folder}", markup=False, highlight=False)


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="Planned segmentation data set name in the workspace.")],
    config: Annotated[str, typer.Option(help="Plan configuration: 3d or 2d.")] = "3d",
    fold: Annotated[str, typer.Option(help="Cross-validation fold 0-4, or 'all' (every case, no validation).")] = "0",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: from the plan's budget).")] = None,
    iters_per_epoch: Annotated[int, typer.Option(help="Iterations per epoch.")] = 250,
    time_budget: Annotated[
        str | None, typer.Option(help="Wall budget of the training loop, e.g. 30m (default: the plan's).")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="sgd (Nesterov, poly decay) or adamw.")] = "sgd",
    lr: Annotated[float | None, typer.Option(help="Initial learning rate (default per optimizer).")] = None,
    schedule: Annotated[str, typer.Option(help="Learning-rate decay: poly or cosine.")] = "poly",
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: the plan's).")] = None,
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16 (CUDA).")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its latest checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over where a run exists.")] = False,
    validate: Annotated[bool, typer.Option(help="Predict and score the fold's validation cases at the end.")] = True,
    workspace: WorkspaceOption = None,
) -> None:
    """Train a U-Net on one fold of a planned data set (checkpoints, logs and progress.png in the run folder)."""
    import vesalius

    result = vesalius.train(
        name,
        config=config,
        fold=fold if fold == "all" else _fold_number(fold),
        workspace=workspace,
        resume=resume,
        force=force,
        validate=validate,
        show_progress=err.is_terminal,
        epochs=epochs,
        iterations_per_epoch=iters_per_epoch,
        time_budget_s=parse_duration(time_budget) if time_budget else None,
        optimizer=optimizer,
        lr=lr,
        schedule=schedule,
        batch_size=batch_size,
        precision=precision,
        device=device,
        seed=seed,
    )
    out.print(
        f"trained {result.iterations} iterations ({result.epochs} epochs) in {result.elapsed_s:.0f} s -> "
        f"{result.run_dir}",
        markup=False,
        highlight=False,
    )
    if result.validation:
        dice = ", ".join(f"{k} {v:.3f}" for k, v in result.validation["dice"].items())
        out.print(
            f"validation Dice ({len(result.validation['cases'])} cases): mean {result.validation['dice_mean']:.3f}"
            f" ({dice})",
            markup=False,
            highlight=False,
        )


@app.command()
def predict(
    input: Annotated[Path, typer.Option("--input", "-i", help="Image file, DICOM series folder, or folder of images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (or file, for one input case).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Fold folder, or configuration folder (all folds).")],
    fast: Annotated[
        bool, typer.Option("--fast", help="No mirroring test-time augmentation, larger window step.")
    ] = False,
    probabilities: Annotated[bool, typer.Option("--probabilities", help="Also write class probabilities.")] = False,
    checkpoint: Annotated[str, typer.Option(help="final, best or latest.")] = "final",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Segment images with a trained model; the output has each input's shape, spacing, origin and direction."""
    from vesalius.inference.predictor import predict_files

    def report(case) -> None:  # type: ignore[no-untyped-def]
        err.print(f"{case.case_id}: {case.seconds:.2f} s", markup=False, highlight=False)

    written = predict_files(
        input,
        output,
        model,
        fast=fast,
        probabilities=probabilities,
        checkpoint=checkpoint,
        device=device,
        on_case=report,
    )
    out.print(f"{len(written)} segmentation(s) written to {written[0].parent}", markup=False, highlight=False)


@app.command()
def evaluate(
    predictions: Annotated[Path, typer.Argument(help="Folder of predicted label maps.")],
    references: Annotated[Path, typer.Argument(help="Folder of reference label maps (same names).")],
    tolerance_mm: Annotated[float, typer.Option(help="Tolerance of the normalised surface Dice, mm.")] = 1.0,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for metrics.csv and summary.json (default: PREDICTIONS)."),
    ] = None,
) -> None:
    """Dice, IoU, HD95, ASSD, surface Dice, precision, recall, volumes per case and class (distances in mm)."""
    from vesalius.evaluation.evaluate import evaluate_folder

    summary = evaluate_folder(predictions, references, tolerance_mm=tolerance_mm, output_dir=output)
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
) -> None:
    """Volumes (mL; 2D: mm^2), connected components, centroids (world mm) and intensities per label."""
    from rich.table import Table

    from vesalius.evaluation.measure import measure_segmentation
    from vesalius.io import read_image

    result = measure_segmentation(read_image(seg), read_image(image) if image else None, connectivity=connectivity)
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


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _fold_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise VesaliusError(f"invalid fold '{text}'", remedy="use 0-4 or 'all'") from None


def parse_duration(text: str) -> float:
    """Seconds in ``"30m"``, ``"2h"``, ``"90s"`` or ``"1800"``."""
    units = {"s": 1, "m": 60, "h": 3600}
    value, unit = (text[:-1], text[-1]) if text[-1:].lower() in units else (text, "s")
    try:
        return float(value) * units[unit.lower()]
    except ValueError:
        raise VesaliusError(f"cannot read the duration '{text}'", remedy="write it like 30m, 2h or 900s") from None


@app.command()
def datasets(workspace: WorkspaceOption = None) -> None:
    """List the data sets in the workspace."""
    from vesalius.data.dataset import Dataset
    from vesalius.workspace import Workspace

    ws = Workspace.resolve(workspace)
    for name in ws.dataset_names():
        d = Dataset.load(ws.dataset_dir(name))
        out.print(f"{name}\t{d.task}\t{d.spatial_dims}D\t{len(d.cases)} cases\t{d.source.get('layout', '')}")


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
        err.print(
            f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback and report it)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
