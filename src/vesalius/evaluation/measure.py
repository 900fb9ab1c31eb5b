"""What a clinician asks of a segmentation: how big, how many, where.

:func:`measure_segmentation` measures every non-zero label of a label map: its total size, and each of its
connected components (size, centroid, bounding box, and the intensity of an image inside it).

Conventions:

* Size is a volume in millilitres (``mL``) for 3D images and an area in square millimetres (``mm^2``) for 2D
  images: voxel count times the product of the spacing (divided by 1000 for mL). The unit is part of every
  output (``Measurements.unit``, the column ``volume_mL`` or ``area_mm2``).
* Voxel indices follow the array axes of :class:`~vesalius.io.Image` (ITK index order ``i, j[, k]``); index
  ``(0, ..., 0)`` is the centre of the first voxel. Bounding boxes are half-open ``[start, stop)`` in voxel
  indices; their extent in mm is ``(stop - start) * spacing`` along each array axis (whole voxels, edge to edge).
* World coordinates are millimetres in the ITK/LPS frame (``x`` to the patient's left, ``y`` posterior,
  ``z`` superior): ``world = origin + direction @ (spacing * index)``, as SimpleITK's
  ``TransformContinuousIndexToPhysicalPoint``.
* Connectivity ``"full"`` joins voxels that share a face, edge or corner (26-neighbourhood in 3D, 8 in 2D);
  ``"face"`` joins only voxels that share a face (6 in 3D, 4 in 2D).
* Components of a label are sorted by size, largest first (ties in raster order of their first voxel) and
  numbered from 1 in that order. Intensity statistics are per image channel; the standard deviation is the
  population one (``ddof=0``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from vesalius.errors import VesaliusError
from vesalius.inference.postprocess import neighbourhood
from vesalius.io.atomic import write_bytes_atomic
from vesalius.io.image import Image

__all__ = [
    "CONNECTIVITIES",
    "ComponentMeasurement",
    "IntensityStats",
    "LabelMeasurement",
    "Measurements",
    "measure_segmentation",
]

CONNECTIVITIES = ("full", "face")
_WORLD_AXES = ("x", "y", "z")
_INDEX_AXES = ("i", "j", "k")
_STATS = ("mean", "std", "min", "max")


@dataclass(frozen=True)
class IntensityStats:
    """Image intensity inside a component, one value per image channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]


@dataclass(frozen=True)
class ComponentMeasurement:
    """One connected component of a label.

    Attributes:
        voxels: number of voxels (pixels in 2D).
        size: volume in mL (3D) or area in mm^2 (2D).
        centroid_index: mean voxel index, length ``ndim``, array axis order.
        centroid_world: ``centroid_index`` in world LPS coordinates (mm), length ``ndim``.
        bbox_start: first voxel index of the bounding box along each array axis (inclusive).
        bbox_stop: end of the bounding box along each array axis (exclusive).
        extent_mm: ``(bbox_stop - bbox_start) * spacing``, along each array axis.
        intensity: image intensity inside the component, or ``None`` when no image was given.
    """

    voxels: int
    size: float
    centroid_index: tuple[float, ...]
    centroid_world: tuple[float, ...]
    bbox_start: tuple[int, ...]
    bbox_stop: tuple[int, ...]
    extent_mm: tuple[float, ...]
    intensity: IntensityStats | None = None


@dataclass(frozen=True)
class LabelMeasurement:
    """All voxels of one label value, and its connected components (largest first).

    Attributes:
        label: the label value in the segmentation.
        name: its name (from the ``labels`` mapping, else the value as text).
        voxels: total number of voxels.
        size: total volume in mL (3D) or area in mm^2 (2D).
        components: the connected components, largest first.
    """

    label: int
    name: str
    voxels: int
    size: float
    components: tuple[ComponentMeasurement, ...]

    @property
    def num_components(self) -> int:
        return len(self.components)


@dataclass(frozen=True)
class Measurements:
    """Measurements of a segmentation; see the module docstring for units and coordinate conventions.

    Attributes:
        ndim: number of spatial dimensions (2 or 3).
        spacing: voxel size along each array axis, mm.
        connectivity: ``"full"`` or ``"face"``.
        num_channels: channels of the intensity image, 0 when none was given.
        labels: label value -> its measurement, for each non-zero label present, in increasing label order.
    """

    ndim: int
    spacing: tuple[float, ...]
    connectivity: str
    num_channels: int
    labels: dict[int, LabelMeasurement] = field(default_factory=dict)

    @property
    def quantity(self) -> str:
        """``"volume"`` (3D) or ``"area"`` (2D)."""
        return "volume" if self.ndim == 3 else "area"

    @property
    def unit(self) -> str:
        """``"mL"`` (3D) or ``"mm^2"`` (2D)."""
        return "mL" if self.ndim == 3 else "mm^2"

    @property
    def size_column(self) -> str:
        """Name of the size column: ``"volume_mL"`` or ``"area_mm2"``."""
        return "volume_mL" if self.ndim == 3 else "area_mm2"

    @property
    def neighbourhood(self) -> int:
        """Number of neighbours a voxel is joined to: 26 or 6 in 3D, 8 or 4 in 2D."""
        return 3**self.ndim - 1 if self.connectivity == "full" else 2 * self.ndim

    def columns(self) -> list[str]:
        """Column names of :meth:`to_rows`, in order."""
        world, index = _WORLD_AXES[: self.ndim], _INDEX_AXES[: self.ndim]
        cols = ["label", "name", "component", "voxels", self.size_column]
        cols += [f"centroid_{a}_mm" for a in world] + [f"centroid_{a}" for a in index]
        cols += [f"bbox_start_{a}" for a in index] + [f"bbox_stop_{a}" for a in index]
        cols += [f"extent_{a}_mm" for a in index]
        for stat in _STATS:
            if self.num_channels == 1:
                cols.append(f"{stat}_intensity")
            else:
                cols += [f"{stat}_intensity_c{c}" for c in range(self.num_channels)]
        return cols

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per component (labels in increasing order, components largest first), keys :meth:`columns`."""
        columns, rows = self.columns(), []
        for lab in self.labels.values():
            for rank, comp in enumerate(lab.components, start=1):
                values: list[Any] = [lab.label, lab.name, rank, comp.voxels, comp.size]
                values += [*comp.centroid_world, *comp.centroid_index, *comp.bbox_start, *comp.bbox_stop]
                values += list(comp.extent_mm)
                if comp.intensity is not None:
                    for stat in _STATS:
                        values += list(getattr(comp.intensity, stat))
                rows.append(dict(zip(columns, values, strict=True)))
        return rows

    def label_rows(self) -> list[dict[str, Any]]:
        """One row of totals per label: ``label, name, voxels, <size column>, components``."""
        return [
            {
                "label": lab.label,
                "name": lab.name,
                "voxels": lab.voxels,
                self.size_column: lab.size,
                "components": lab.num_components,
            }
            for lab in self.labels.values()
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: conventions, then per label its totals and components. Non-finite numbers become
        ``None``."""
        labels = []
        for lab in self.labels.values():
            components = []
            for comp in lab.components:
                entry: dict[str, Any] = {
                    "voxels": comp.voxels,
                    self.size_column: comp.size,
                    "centroid_world_mm": list(comp.centroid_world),
                    "centroid_index": list(comp.centroid_index),
                    "bbox_start": list(comp.bbox_start),
                    "bbox_stop": list(comp.bbox_stop),
                    "extent_mm": list(comp.extent_mm),
                }
                if comp.intensity is not None:
                    entry["intensity"] = {stat: [_finite(v) for v in getattr(comp.intensity, stat)] for stat in _STATS}
                components.append(entry)
            labels.append(
                {
                    "label": lab.label,
                    "name": lab.name,
                    "voxels": lab.voxels,
                    self.size_column: lab.size,
                    "num_components": lab.num_components,
                    "components": components,
                }
            )
        return {
            "quantity": self.quantity,
            "unit": self.unit,
            "spacing_mm": list(self.spacing),
            "connectivity": self.connectivity,
            "neighbourhood": self.neighbourhood,
            "coordinates": "world: LPS mm (ITK); index: array axes in ITK order, voxel centres at integers; "
            "bbox: [start, stop) voxel indices",
            "intensity_channels": self.num_channels,
            "labels": labels,
        }

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_rows` as CSV (header always, even with no components) atomically; returns the path."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.to_rows())
        write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
        return Path(path)

    def write_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON atomically; returns the path."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        write_bytes_atomic(path, text.encode("utf-8"))
        return Path(path)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def measure_segmentation(
    seg: Image,
    image: Image | None = None,
    labels: Mapping[int, str] | None = None,
    connectivity: str = "full",
) -> Measurements:
    """Measure each non-zero label of a label map and its connected components.

    Args:
        seg: a single-channel label map, array ``(1, X, Y[, Z])`` of integer values (float arrays holding whole
            numbers are accepted). Zero is background.
        image: an image on the same grid (spatial shape and geometry) whose intensity is summarised inside each
            component, per channel; array ``(C, X, Y[, Z])``.
        labels: label value -> name; labels not in it are named by their value.
        connectivity: ``"full"`` (26-neighbourhood in 3D, 8 in 2D) or ``"face"`` (6 in 3D, 4 in 2D).

    Returns:
        :class:`Measurements`; an empty segmentation gives no labels.

    Raises:
        VesaliusError: a multi-channel or non-integer segmentation, an image on another grid, or an unknown
            connectivity.
    """
    if connectivity not in CONNECTIVITIES:
        raise VesaliusError(f"unknown connectivity '{connectivity}'", None, f"use one of {', '.join(CONNECTIVITIES)}")
    label_map = _label_map(seg)
    values = _intensity_values(image, seg) if image is not None else None
    geometry = seg.geometry
    spacing = np.asarray(geometry.spacing)
    unit_size = float(np.prod(spacing)) / (1000.0 if seg.ndim == 3 else 1.0)
    linear = geometry.direction_matrix * spacing[None, :]  # index -> world offset
    origin = np.asarray(geometry.origin)
    structure = neighbourhood(seg.ndim, connectivity)  # type: ignore[arg-type]
    names = dict(labels or {})

    measured: dict[int, LabelMeasurement] = {}
    for value in np.unique(label_map):
        if value == 0:
            continue
        mask = label_map == value
        components, n = ndimage.label(mask, structure=structure)
        index = np.arange(1, n + 1)
        counts = np.bincount(components.ravel(), minlength=n + 1)[1:]
        boxes = ndimage.find_objects(components)
        centroids = np.asarray(ndimage.center_of_mass(mask, components, index), dtype=np.float64).reshape(n, -1)
        worlds = origin[None, :] + centroids @ linear.T
        stats = _intensity_stats(values, components, index) if values is not None else None
        order = sorted(range(n), key=lambda c: -counts[c])
        comps = []
        for c in order:
            start = tuple(int(s.start) for s in boxes[c])
            stop = tuple(int(s.stop) for s in boxes[c])
            comps.append(
                ComponentMeasurement(
                    voxels=int(counts[c]),
                    size=float(counts[c]) * unit_size,
                    centroid_index=tuple(float(v) for v in centroids[c]),
                    centroid_world=tuple(float(v) for v in worlds[c]),
                    bbox_start=start,
                    bbox_stop=stop,
                    extent_mm=tuple(float((b - a) * s) for a, b, s in zip(start, stop, spacing, strict=True)),
                    intensity=None if stats is None else _component_stats(stats, c),
                )
            )
        total = int(counts.sum())
        key = int(value)
        measured[key] = LabelMeasurement(key, names.get(key, str(key)), total, total * unit_size, tuple(comps))
    return Measurements(
        ndim=seg.ndim,
        spacing=geometry.spacing,
        connectivity=connectivity,
        num_channels=0 if image is None else image.num_channels,
        labels=measured,
    )


def _label_map(seg: Image) -> np.ndarray:
    """The label map ``(X, Y[, Z])`` as int64, after checking it has one channel of whole numbers."""
    if seg.num_channels != 1:
        raise VesaliusError(
            f"the segmentation has {seg.num_channels} channels; a label map has one",
            None,
            "pass the label map (e.g. the argmax over classes), not probabilities or one-hot channels",
        )
    arr = seg.array[0]
    if arr.dtype.kind not in "biuf":
        raise VesaliusError(f"the segmentation has unsupported data type {arr.dtype}", None, "pass integer labels")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.array_equal(arr, np.round(arr))):
        raise VesaliusError(
            "the segmentation holds non-integer values",
            None,
            "pass a label map of whole numbers (e.g. the argmax over classes), not probabilities",
        )
    return arr.astype(np.int64)


def _intensity_values(image: Image, seg: Image) -> np.ndarray:
    """The image array ``(C, X, Y[, Z])`` as float64, after checking it lies on the segmentation's grid."""
    problems = []
    if image.spatial_shape != seg.spatial_shape:
        problems.append(f"shape {image.spatial_shape} vs {seg.spatial_shape}")
    problems += image.geometry.differences(seg.geometry)
    if problems:
        raise VesaliusError(
            f"the image grid differs from the segmentation grid (image vs segmentation: {'; '.join(problems)})",
            None,
            "pass the image the segmentation was made on, or resample it onto the segmentation grid",
        )
    return np.asarray(image.array, dtype=np.float64)


def _intensity_stats(values: np.ndarray, components: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """Per statistic, an array ``(C, n)``: channel by component (component ``k`` at column ``k - 1``)."""
    functions = {
        "mean": ndimage.mean,
        "std": ndimage.standard_deviation,
        "min": ndimage.minimum,
        "max": ndimage.maximum,
    }
    return {
        stat: np.asarray([fn(channel, components, index) for channel in values], dtype=np.float64).reshape(
            len(values), len(index)
        )
        for stat, fn in functions.items()
    }


def _component_stats(stats: dict[str, np.ndarray], column: int) -> IntensityStats:
    return IntensityStats(**{stat: tuple(float(v) for v in stats[stat][:, column]) for stat in _STATS})
