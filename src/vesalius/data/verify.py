"""Check every case of a data set and list every problem found, not only the first.

Errors make a data set unusable as it is (unreadable or truncated files, image/label shape or geometry
mismatch, undeclared label values, NaN/Inf voxels, wrong dimensionality, channel count mismatch, missing
label, duplicate case ids); warnings deserve a look (labels with background only, stray files).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vesalius.data.dataset import Case, Dataset
from vesalius.errors import VesaliusError
from vesalius.io import Image, read_image

Severity = Literal["error", "warning"]
GEOMETRY_TOLERANCE = 1e-3
"""Largest difference (mm for spacing and origin, cosine for direction) accepted between image and label."""


@dataclass(frozen=True)
class Problem:
    """One finding: how bad, which file, what is wrong."""

    severity: Severity
    file: str
    message: str
    case_id: str | None = None

    def line(self) -> str:
        where = f"[{self.case_id}] " if self.case_id else ""
        return f"{self.severity.upper():7s} {where}{self.file}: {self.message}"


@dataclass
class VerificationReport:
    """All problems of a data set; ``ok`` when there is no error (warnings allowed)."""

    dataset: str
    num_cases: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def files_with(self, text: str) -> list[str]:
        """Files of the problems whose message contains ``text`` (for tests and scripts)."""
        return [p.file for p in self.problems if text in p.message]

    def summary(self) -> str:
        return f"{self.dataset}: {self.num_cases} cases, {len(self.errors)} errors, {len(self.warnings)} warnings"

    def lines(self) -> list[str]:
        order = sorted(self.problems, key=lambda p: (p.severity != "error", p.case_id or "", p.file))
        return [p.line() for p in order]


def verify_dataset(
    dataset: Dataset,
    *,
    atol: float = GEOMETRY_TOLERANCE,
    workers: int = 2,
    on_case: Callable[[str], None] | None = None,
) -> VerificationReport:
    """Check every case of ``dataset``.

    Args:
        dataset: the data set; its case paths must resolve (``dataset.root``).
        atol: geometry tolerance between the channels and the label of a case.
        workers: threads reading files in parallel.
        on_case: called with each case id when its check is done (progress).
    """
    report = VerificationReport(dataset.name, len(dataset.cases))
    if not dataset.cases:
        report.problems.append(Problem("error", str(dataset.root), "no cases found"))
    counts = Counter(c.case_id for c in dataset.cases)
    for case_id, n in counts.items():
        if n > 1:
            same = [c for c in dataset.cases if c.case_id == case_id]
            files = [f for c in same for f in (c.source or [str(p) for p in dataset.image_paths(c)])]
            report.problems.append(
                Problem("error", ", ".join(files), f"duplicate case id '{case_id}' ({n} cases)", case_id)
            )
    for stray in dataset.stray_files:
        report.problems.append(Problem("warning", stray, "stray file, belongs to no case (ignored)"))

    def check(case: Case) -> list[Problem]:
        found = list(_check_case(dataset, case, atol))
        if on_case:
            on_case(case.case_id)
        return found

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for found in pool.map(check, dataset.cases):
            report.problems.extend(found)
    return report


def _check_case(ds: Dataset, case: Case, atol: float) -> Iterable[Problem]:
    def problem(severity: Severity, path: Path | str, message: str) -> Problem:
        return Problem(severity, str(path), message, case.case_id)

    images: list[tuple[Path, Image]] = []
    for path in ds.image_paths(case):
        try:
            images.append((path, read_image(path)))
        except VesaliusError as e:
            yield problem("error", path, f"unreadable: {e.problem}")
    for path, image in images:
        yield from (problem("error", path, m) for m in _voxel_problems(image, ds.spatial_dims, "image"))
    if len(images) == len(case.images):
        channels = sum(im.num_channels for _, im in images)
        if channels != len(ds.channels):
            yield problem(
                "error", ds.image_paths(case)[0], f"{channels} channels, the data set declares {len(ds.channels)}"
            )
    reference = images[0] if images else None
    if reference:
        for path, image in images[1:]:
            yield from (
                problem("error", path, f"channel differs from {reference[0].name}: {d}")
                for d in _grid_differences(image, reference[1], atol)
            )
    if ds.task == "classification":
        if ds.target_type == "multilabel":
            flags = case.target
            if not isinstance(flags, list) or len(flags) != len(ds.labels) or not set(flags) <= {0, 1}:
                yield problem("error", ds.image_paths(case)[0], f"target {flags} is not {len(ds.labels)} 0/1 flags")
        elif case.target is None or case.target not in ds.labels:
            yield problem("error", ds.image_paths(case)[0], f"class {case.target} not among {sorted(ds.labels)}")
        return
    label_path = ds.label_path(case)
    if label_path is None or not label_path.exists():
        yield problem("error", label_path or case.case_id, "missing label file")
        return
    try:
        label = read_image(label_path)
    except VesaliusError as e:
        yield problem("error", label_path, f"unreadable: {e.problem}")
        return
    yield from (problem("error", label_path, m) for m in _voxel_problems(label, ds.spatial_dims, "label"))
    if label.num_channels != 1:
        yield problem("error", label_path, f"label has {label.num_channels} channels, expected 1")
        return
    if reference:
        yield from (
            problem("error", label_path, f"label differs from image {reference[0].name}: {d}")
            for d in _grid_differences(label, reference[1], atol)
        )
    values = np.unique(label.array)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        yield problem("error", label_path, "label holds non-integer values; labels must be whole numbers")
        return
    undeclared = sorted(set(values.astype(np.int64).tolist()) - set(ds.labels))
    if undeclared:
        yield problem(
            "error",
            label_path,
            f"label values {undeclared} not declared (declared: {sorted(ds.labels)}); fix the label or add them "
            "to dataset.json",
        )
    if values.size and np.all(values == 0):
        yield problem("warning", label_path, "empty label (background only)")


def _voxel_problems(image: Image, spatial_dims: int, what: str) -> Iterable[str]:
    if image.ndim != spatial_dims:
        yield f"{what} is {image.ndim}D, expected {spatial_dims}D"
    if image.array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(image.array)))
        if bad:
            yield f"{bad} NaN/Inf voxels; replace them (e.g. with 0) before import"


def _grid_differences(a: Image, b: Image, atol: float) -> list[str]:
    if a.spatial_shape != b.spatial_shape:
        return [f"shape {a.spatial_shape} vs {b.spatial_shape}"]
    return a.geometry.differences(b.geometry, atol)
