"""``vesalius demo``: the whole pipeline on built-in synthetic phantoms, so that it needs no download.

Today it generates the phantom data sets (3D segmentation, MSD layout; 2D classification, class folders),
imports and verifies them, then plans and preprocesses the segmentation set. Each later step of the pipeline
adds itself here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset
from vesalius.data.synthetic import write_classification_dataset, write_segmentation_dataset
from vesalius.planning.planner import plan_dataset
from vesalius.preprocessing.pipeline import preprocess_dataset
from vesalius.workspace import Workspace

DEMO_SEGMENTATION = "demo_phantom"
DEMO_CLASSIFICATION = "demo_lesion_cls"
DEMO_TIME_BUDGET_S = 120.0


def run_demo(
    workspace: str | Path | None = None,
    num_cases: int = 12,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> dict[str, Dataset]:
    """Generate, import and verify the demo data sets; returns them by name."""
    ws = Workspace.resolve(workspace)
    sources = ws.root / "demo_sources" / f"seed{seed}_n{num_cases}"
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
    plan, plan_path = plan_dataset(DEMO_SEGMENTATION, ws, device="cpu", time_budget_s=DEMO_TIME_BUDGET_S)
    config = plan["configurations"]["3d"]
    echo(
        f"planned '{DEMO_SEGMENTATION}' (3d): spacing {config['spacing']}, patch {config['patch_size']}, "
        f"batch {config['batch_size']} -> {plan_path}"
    )
    folder = preprocess_dataset(DEMO_SEGMENTATION, "3d", ws)
    echo(f"preprocessed '{DEMO_SEGMENTATION}' (3d) -> {folder}")
    echo(f"demo finished; workspace: {ws.root}")
    return result
