"""Do the plan's intensity filters (N4 bias-field correction, edge-preserving denoising) make real MRI more uniform,
and what do they cost? A cheap proxy, no training.

Run it from the project's root::

    python benchmarks/bias_and_denoise.py                    # every Hippocampus training case, the 6 BraTS cases
    python benchmarks/bias_and_denoise.py --hippocampus 40

Each filter is the one ``vesalius plan --n4`` / ``--denoise METHOD`` records (parameters from
``vesalius/planning/rules.json``), applied as preprocessing applies it (:func:`vesalius.preprocessing.filters.
apply_filters` on the image cropped to its non-zero region, with its spacing). Figures:

- MSD ``Task04_Hippocampus`` (raw 8-bit T1 crops around the hippocampus): the coefficient of variation (std / mean)
  of the intensities inside the label (both hippocampus classes), before and after each filter; median over cases.
- ``BraTS2013_DeepMedicSample`` (6 glioma cases, FLAIR and T1c, skull-stripped): those files were z-scored inside
  the brain by the DeepMedic authors, so the background holds the minimum; subtracting it gives back the raw
  intensities up to a scale (air was 0), which is what N4 needs. Inside the normal-appearing brain (brain mask
  without the tumour labels): the intensities' CV, and the CV of the mean intensity of the brain's eight octants
  (split at the brain's centroid) as a measure of slow intensity drift across the brain, which is what a bias field
  is; inside the tumour (labels > 0), the CV.

Lower is more uniform; tissue contrast (grey / white matter, tumour parts) keeps every CV well above 0, so only the
change matters. Times are seconds per channel image. Prints readable lines and one ``BENCHMARK_JSON {...}`` line;
exits 0 when ``../shared/data`` lacks the data sets.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import emit_json, machine_and_date, shared_data
from vesalius.io import read_image
from vesalius.io.image import nonzero_box
from vesalius.io.schema import from_json
from vesalius.planning.plan import ChannelFilters
from vesalius.planning.rules import intensity_filters, load_rules
from vesalius.preprocessing.filters import apply_filters

VARIANTS = (("n4", True, None), ("curvature_flow", False, "curvature_flow"), ("anisotropic", False, "anisotropic"))


def _filters(n4: bool, denoise: str | None) -> ChannelFilters:
    entry = intensity_filters([{"scheme": "zscore"}], n4, denoise, load_rules())
    assert entry is not None
    return from_json(ChannelFilters, entry[0])


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def _octant_cv(array: np.ndarray, region: np.ndarray) -> float:
    """CV of the mean intensity of ``region``'s eight octants (split at its centroid)."""
    coords = np.nonzero(region)
    centre = [c.mean() for c in coords]
    octant = sum((c > m).astype(int) << i for i, (c, m) in enumerate(zip(coords, centre, strict=True)))
    values = array[coords]
    return _cv(np.array([values[octant == k].mean() for k in range(8)]))


def _filtered(array: np.ndarray, spacing: tuple[float, ...], filters: ChannelFilters) -> tuple[np.ndarray, float]:
    """``array`` (one channel, spatial axes) filtered inside its non-zero box as preprocessing does, and the time."""
    box = nonzero_box(array[None])
    out = array.astype(np.float32, copy=True)
    start = time.perf_counter()
    out[box] = apply_filters(array[box][None], spacing, (filters,))[0]
    return out, time.perf_counter() - start


def _measure(
    cases: list[tuple[np.ndarray, tuple[float, ...], dict[str, np.ndarray]]],
    figures: Callable[[np.ndarray, dict[str, np.ndarray]], dict[str, float]],
) -> dict[str, Any]:
    """Median figures over ``cases`` (image, spacing, regions) for the original and each filter, and median times."""
    rows: dict[str, list[dict[str, float]]] = {"none": []}
    times: dict[str, list[float]] = {}
    for array, spacing, regions in cases:
        rows["none"].append(figures(array, regions))
        for name, n4, denoise in VARIANTS:
            out, seconds = _filtered(array, spacing, _filters(n4, denoise))
            rows.setdefault(name, []).append(figures(out, regions))
            times.setdefault(name, []).append(seconds)
    result: dict[str, Any] = {}
    for name, values in rows.items():
        result[name] = {k: round(statistics.median(v[k] for v in values), 4) for k in values[0]}
        if name in times:
            result[name]["seconds"] = round(statistics.median(times[name]), 3)
    return result


def hippocampus(folder: Path, limit: int | None) -> dict[str, Any]:
    cases = []
    for image_path in sorted((folder / "imagesTr").glob("hippocampus_*.nii.gz"))[:limit]:
        image = read_image(image_path)
        label = read_image(folder / "labelsTr" / image_path.name).array[0] > 0
        cases.append((image.array[0].astype(np.float32), image.geometry.spacing, {"label": label}))

    def figures(array: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
        return {"cv_label": _cv(array[regions["label"]])}

    return {"cases": len(cases), **_measure(cases, figures)}


def brats(folder: Path, channel: int) -> dict[str, Any]:
    cases = []
    for mask_path in sorted((folder / "brainmasksTr").glob("*.nii.gz")):
        case_id = mask_path.name.removesuffix(".nii.gz")
        image = read_image(folder / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz")
        raw = image.array[0] - image.array[0].min()  # the background held the minimum: back to air = 0
        brain = read_image(mask_path).array[0] > 0
        tumour = read_image(folder / "labelsTr" / mask_path.name).array[0] > 0
        cases.append((raw, image.geometry.spacing, {"normal": brain & ~tumour, "tumour": tumour}))

    def figures(array: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, float]:
        normal = regions["normal"]
        return {
            "cv_normal_brain": _cv(array[normal]),
            "octant_cv_normal_brain": _octant_cv(array, normal),
            "cv_tumour": _cv(array[regions["tumour"]]),
        }

    return {"cases": len(cases), **_measure(cases, figures)}


def _print(title: str, result: dict[str, Any]) -> None:
    print(f"{title} ({result['cases']} cases; medians)")
    for name in ("none", *(v[0] for v in VARIANTS)):
        print(f"  {name:15s} " + "  ".join(f"{k} {v:g}" for k, v in result[name].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hippocampus", type=int, default=None, help="at most this many Hippocampus cases")
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "bias_and_denoise", **machine_and_date()}
    hippo, brats_dir = shared_data("Task04_Hippocampus"), shared_data("BraTS2013_DeepMedicSample")
    if hippo is None and brats_dir is None:
        print("../shared/data holds neither Task04_Hippocampus nor BraTS2013_DeepMedicSample: nothing to measure")
        return
    if hippo is not None:
        report["hippocampus"] = hippocampus(hippo, args.hippocampus)
        _print("Hippocampus, CV inside the label", report["hippocampus"])
    if brats_dir is not None:
        for channel, name in enumerate(("flair", "t1c")):
            report[f"brats_{name}"] = brats(brats_dir, channel)
            _print(f"BraTS {name.upper()}", report[f"brats_{name}"])
    emit_json(report)


if __name__ == "__main__":
    main()
