"""``vesalius demo``: the whole pipeline on built-in synthetic phantoms, so that it needs no download.

Today it generates the phantom data sets (3D segmentation, MSD layout; 2D classification, class folders),
imports and verifies them. Each later step of the pipeline adds itself here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset
from vesalius.data.synthetic import write_classification_dataset, write_segmentation_dataset
from vesalius.workspace import Workspace

DEMO_SEGMENTATION = "demo_phantom"
DEMO_CLASSIFICATION = "demo_lesion_cls"


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
        dataset, report = import_dataset(src, name, workspace=ws, overwrite=True)
        echo(f"imported and verified '{name}': {report.summary()}")
        result[name] = dataset
    echo(f"demo finished; workspace: {ws.root}")
    return result
