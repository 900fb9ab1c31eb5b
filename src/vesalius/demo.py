"""``vesalius demo``: the whole pipeline on built-in synthetic phantoms, so that it needs no download.

It generates the phantom data sets (3D segmentation, MSD layout; 2D classification, class folders), imports and
verifies them, plans and preprocesses the segmentation set, trains fold 0 for a short wall budget (validating it
on its held-out cases), predicts those cases with ``vesalius predict``'s code path into
``predictions/demo_phantom/``, measures the first prediction (volumes, components, centroids), evaluates all
of them against their references, exports the model (``exports/demo_phantom.vpkg``) and predicts the same cases
with it on ONNX Runtime (``predictions/demo_phantom_onnxruntime/``), and writes the HTML report of the run to
``reports/demo_phantom.html``. Each later step of the pipeline adds itself here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset
from vesalius.data.synthetic import write_classification_dataset, write_segmentation_dataset
from vesalius.planning.planner import plan_dataset
from vesalius.preprocessing.pipeline import preprocess_dataset
from vesalius.reporting.report import build_report_or_warn
from vesalius.workspace import Workspace

DEMO_SEGMENTATION = "demo_phantom"
DEMO_CLASSIFICATION = "demo_lesion_cls"
DEMO_TIME_BUDGET_S = 60.0


def run_demo(
    workspace: str | Path | None = None,
    num_cases: int = 12,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    time_budget_s: float = DEMO_TIME_BUDGET_S,
) -> dict[str, Dataset]:
    """Run the demo (see the module docstring) with ``time_budget_s`` seconds of training; returns the data sets."""
    ws = Workspace.resolve(workspace)
    sources = ws.demo_dir("sources") / f"seed{seed}_n{num_cases}"
    seg_src, cls_src = sources / "phantom_msd", sources / "lesion_classes"
    if not (seg_src / "dataset.json").exists():
        echo(f"generating {num_cases} synthetic 3D phantoms -> {seg_src}")
        write_segmentation_dataset(seg_src, num_cases=num_cases, ndim=3, seed=seed)
    if not cls_src.exists():
        echo(f"generating a synthetic 2D lesion classification set -> {cls_src}")
        write_classification_dataset(cls_src, num_cases=2 * num_cases, ndim=2, seed=seed)
    result = {}
    for name, src in ((DEMO_SEGMENTATION, seg_src), (DEMO_CLASSIFICATION, cls_src)):
        dataset, report = import_dataset(src, name, workspace=ws, overwrite=True)  # raises with the report
        echo(f"imported and verified '{name}': {report.summary()}")
        result[name] = dataset
    plan, plan_path = plan_dataset(DEMO_SEGMENTATION, ws, device="cpu", time_budget_s=time_budget_s)
    configuration = plan.configuration("3d")
    echo(
        f"planned '{DEMO_SEGMENTATION}' (3d): spacing {list(configuration.spacing)}, "
        f"patch {list(configuration.patch_size)}, batch {configuration.batch_size} -> {plan_path}"
    )
    folder = preprocess_dataset(DEMO_SEGMENTATION, "3d", ws)
    echo(f"preprocessed '{DEMO_SEGMENTATION}' (3d) -> {folder}")
    run_dir = _train_predict_evaluate(ws, result[DEMO_SEGMENTATION], time_budget_s, echo)
    report = build_report_or_warn(run_dir, ws.reports_dir() / f"{DEMO_SEGMENTATION}.html", workspace=ws)
    echo(f"demo finished; workspace: {ws.root}")
    if report is not None:
        echo(f"report: {report} (open it in a browser; 'vesalius view -w {ws.root}' browses the cases)")
    return result


def _train_predict_evaluate(ws: Workspace, dataset: Dataset, time_budget_s: float, echo: Callable[[str], None]) -> Path:
    """Train fold 0, validate it, predict and measure its validation cases; returns the run folder."""
    import shutil

    from vesalius.evaluation.measure import measure_segmentation
    from vesalius.evaluation.segmentation import evaluate_folder
    from vesalius.evaluation.validation import validate_fold
    from vesalius.inference.segmentation import segment_files
    from vesalius.io import read_image
    from vesalius.training.segmentation import train_segmentation
    from vesalius.training.settings import SegmentationSettings

    echo(f"training '{DEMO_SEGMENTATION}' fold 0 for {time_budget_s:.0f} s ...")
    settings = SegmentationSettings(DEMO_SEGMENTATION, "3d", 0, time_budget_s=time_budget_s, iterations_per_epoch=50)
    run = train_segmentation(settings, ws, force=True)
    validation = validate_fold(run.run_dir, ws)
    dice = ", ".join(f"{k} {v:.3f}" for k, v in validation["dice"].items())
    echo(f"trained {run.iterations} iterations -> {run.run_dir}; validation Dice {dice}")
    inputs, references = ws.demo_dir("inputs") / DEMO_SEGMENTATION, ws.demo_dir("references") / DEMO_SEGMENTATION
    for folder in (inputs, references):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for case_id in validation["cases"]:
        case = dataset.case(case_id)
        shutil.copy(dataset.image_paths(case)[0], inputs / f"{case_id}.nii.gz")
        shutil.copy(dataset.label_path(case), references / f"{case_id}.nii.gz")  # type: ignore[arg-type]
    predictions = ws.predictions_dir(DEMO_SEGMENTATION)
    written = segment_files(inputs, predictions, run.run_dir)
    echo(f"predicted {len(written)} held-out cases -> {predictions}")
    first = written[0]
    measured = measure_segmentation(read_image(first), read_image(inputs / first.name), labels=_names(dataset))
    measured.write_csv(predictions / "measurements.csv")
    for row in measured.label_rows():
        echo(
            f"  {first.name}: {row['name']} {row[measured.size_column]:.2f} {measured.unit}, "
            f"{row['components']} part(s)"
        )
    summary = evaluate_folder(predictions, references, labels=_names(dataset))
    for name, metrics in summary["metrics"].items():
        echo(f"  evaluation {name}: Dice {metrics['dice']['mean']:.3f} over {summary['num_cases']} cases")
    echo(f"metrics -> {predictions / 'metrics.csv'}, {predictions / 'summary.json'}")
    _export_and_run(ws, run.run_dir, inputs, written, echo)
    return run.run_dir


def _export_and_run(
    ws: Workspace, run_dir: Path, inputs: Path, torch_written: list[Path], echo: Callable[[str], None]
) -> None:
    """Export the run as a package and predict the same cases with it on ONNX Runtime (the torch-free runtime)."""
    import numpy as np

    from vesalius.deploy.export import export_model
    from vesalius.io import read_image
    from vesalius.runtime import Predictor

    package = export_model(run_dir, ws.exports_dir() / f"{DEMO_SEGMENTATION}.vpkg")
    output = ws.predictions_dir(f"{DEMO_SEGMENTATION}_onnxruntime")
    written = Predictor(package).predict_files(inputs, output)
    pairs = zip(written, torch_written, strict=True)
    equal = [float(np.mean(read_image(a).array == read_image(b).array)) for a, b in pairs]
    echo(f"exported -> {package}; on ONNX Runtime without torch: {len(written)} cases -> {output}")
    echo(f"  the same labels as torch for {100 * min(equal):.2f}% of the voxels or more")


def _names(dataset: Dataset) -> dict[int, str]:
    return {int(k): v for k, v in dataset.labels.items() if int(k) != 0}
