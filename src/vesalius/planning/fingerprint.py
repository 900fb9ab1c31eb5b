"""A data set's fingerprint: what the planner needs to know about it, computed once and saved as JSON.

Per case: spacing, shape before and after cropping to the non-zero region, foreground intensity samples per
channel, the centroid of each foreground class present; for the data set: intensity statistics per channel over
the foreground, class voxel frequencies, how much cropping shrank the images.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from vesalius.data.dataset import Case, Dataset
from vesalius.errors import VesaliusError
from vesalius.io.image import nonzero_box


@dataclass
class Fingerprint:
    """Summary of a segmentation data set (all shapes, spacings and coordinates in array axis order).

    ``class_centroids`` has one entry per case: label value (as a string) -> centroid in voxel coordinates of
    the cropped array, for the foreground classes present in that case. Fingerprints written before it existed
    load with an empty list.
    """

    spacings: list[list[float]]
    shapes_before_crop: list[list[int]]
    shapes_after_crop: list[list[int]]
    intensity: list[dict[str, float]]
    class_fraction: dict[str, float]
    crop_shrink: float
    modalities: list[str]
    num_cases: int
    class_centroids: list[dict[str, list[float]]] = field(default_factory=list)

    @property
    def median_spacing(self) -> list[float]:
        return np.median(np.asarray(self.spacings), axis=0).tolist()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(**d)


def _case_summary(args: tuple[Dataset, Case, int, int]) -> dict[str, Any]:
    dataset, case, samples, seed = args
    image, label_image = dataset.read_case(case)
    if label_image is None:
        raise VesaliusError("missing label file", dataset.label_path(case) or case.case_id, "run 'vesalius verify'")
    array = image.array.astype(np.float32)
    label = label_image.array[0]
    box = nonzero_box(array)
    cropped, cropped_label = array[(slice(None), *box)], label[box]
    foreground = cropped[:, cropped_label > 0]
    rng = np.random.default_rng(seed)
    if foreground.shape[1] > samples:
        foreground = foreground[:, rng.choice(foreground.shape[1], samples, replace=False)]
    values, counts = np.unique(cropped_label, return_counts=True)
    present = [int(v) for v in values if v > 0]
    centroids = ndimage.center_of_mass(cropped_label > 0, cropped_label, present) if present else []
    return {
        "spacing": list(image.geometry.spacing),
        "shape_before": list(image.spatial_shape),
        "shape_after": list(cropped.shape[1:]),
        "foreground": foreground,
        "classes": {int(v): int(c) for v, c in zip(values, counts, strict=True)},
        "centroids": {str(v): [round(float(x), 2) for x in c] for v, c in zip(present, centroids, strict=True)},
    }


def compute_fingerprint(
    dataset: Dataset, samples_per_case: int = 10000, workers: int = 2, seed: int = 0
) -> Fingerprint:
    """Read every case of a segmentation data set once and summarise it (see :class:`Fingerprint`)."""
    jobs = [(dataset, c, samples_per_case, seed + i) for i, c in enumerate(dataset.cases)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            summaries = list(pool.map(_case_summary, jobs, chunksize=4))
    else:
        summaries = [_case_summary(j) for j in jobs]
    pooled = np.concatenate([s["foreground"] for s in summaries], axis=1)
    intensity = []
    for c in range(pooled.shape[0]):
        v = pooled[c] if pooled.shape[1] else np.zeros(1, np.float32)
        intensity.append(
            {
                "mean": float(v.mean()),
                "std": float(v.std()),
                "median": float(np.median(v)),
                "min": float(v.min()),
                "max": float(v.max()),
                "percentile_00_5": float(np.percentile(v, 0.5)),
                "percentile_99_5": float(np.percentile(v, 99.5)),
            }
        )
    totals: dict[int, int] = {}
    for s in summaries:
        for k, n in s["classes"].items():
            totals[k] = totals.get(k, 0) + n
    all_voxels = sum(totals.values()) or 1
    shrink = [float(np.prod(s["shape_after"]) / max(1, np.prod(s["shape_before"]))) for s in summaries]
    return Fingerprint(
        spacings=[s["spacing"] for s in summaries],
        shapes_before_crop=[s["shape_before"] for s in summaries],
        shapes_after_crop=[s["shape_after"] for s in summaries],
        intensity=intensity,
        class_fraction={str(k): totals.get(k, 0) / all_voxels for k in sorted(dataset.labels)},
        crop_shrink=float(np.median(shrink)) if shrink else 1.0,
        modalities=list(dataset.modalities or dataset.channels),
        num_cases=len(summaries),
        class_centroids=[s["centroids"] for s in summaries],
    )
