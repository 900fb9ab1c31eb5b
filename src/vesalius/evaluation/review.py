"""What a reviewer records in the viewer: a verdict and a note per case, and corrected segmentations.

Layout (one folder per review, ``NAME`` from ``vesalius view --review NAME``, ``default`` otherwise)::

    <workspace>/reviews/<NAME>/review.json         {"cases": {"<group>/<case>": {"verdict", "note", "corrected",
                                                   and once corrected "case_id", "image" (its path)}}}
    <workspace>/reviews/<NAME>/review.csv          group, case, verdict, note, corrected (the same, one row a case)
    <workspace>/reviews/<NAME>/corrections/<case>.nii.gz   a corrected label map, on the case image's exact grid

``vesalius corrections export`` (:meth:`Review.export_corrections`) copies the corrected cases (image and
correction) into a folder of the ``pairs`` layout, which ``vesalius import`` takes as a new data set.

The workspace is the one viewed, or (for ``vesalius view`` on plain files) the default workspace
(``$VESALIUS_HOME``, else ``./vesalius_work``): reviews never go next to the inputs, and a correction never
replaces an input. Every file is written atomically (:mod:`vesalius.io.atomic`), so a crash leaves the previous
version. ``corrections/`` holds label maps named by case id, so that it can be paired with the images (and scored
or imported) like any folder of label maps.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io import Image, read_image, write_image
from vesalius.io.atomic import write_bytes_atomic, write_json_atomic

__all__ = ["MAX_NOTE", "REVIEWS", "VERDICTS", "Review", "drawing_to_labels", "reviews_of_cases"]

VERDICTS = ("accept", "needs correction", "reject")
"""The verdicts a case can get (or none)."""

MAX_NOTE = 2000
"""The longest note, in characters."""

REVIEWS = "reviews"
"""The workspace's folder of reviews (one sub-folder per review name)."""


class Review:
    """The review file of one viewer session (see the module's docstring); thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}
        path = folder / "review.json"
        if path.is_file():
            try:
                self.entries = {str(k): dict(v) for k, v in json.loads(path.read_text())["cases"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise VesaliusError("the review file cannot be read", path, "repair or remove it") from None

    @classmethod
    def of(cls, workspace_root: Path, name: str) -> Review:
        """The review ``name`` of the workspace at ``workspace_root`` (``reviews/NAME``)."""
        return cls(workspace_root / REVIEWS / name)

    @property
    def corrections(self) -> Path:
        return self.folder / "corrections"

    def get(self, key: str) -> dict[str, Any]:
        return self.entries.get(key, {})

    def set(self, key: str, **values: Any) -> dict[str, Any]:
        """Update the entry of case ``key`` (``group/case``) and write both files."""
        with self.lock:
            entry = self.entries.setdefault(key, {"verdict": None, "note": "", "corrected": False})
            entry.update(values)
            self._write()
            return dict(entry)

    def _write(self) -> None:
        write_json_atomic(self.folder / "review.json", {"cases": self.entries})
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["group", "case", "verdict", "note", "corrected"])
        for key, entry in sorted(self.entries.items()):
            group, _, case = key.rpartition("/")
            writer.writerow([group, case, entry.get("verdict") or "", entry.get("note", ""), entry.get("corrected")])
        write_bytes_atomic(self.folder / "review.csv", text.getvalue().encode("utf-8"))

    def save_correction(self, key: str, case_id: str, labels: np.ndarray, image_path: Path) -> Path:
        """Write ``labels`` (the image's spatial shape) as ``corrections/<case_id>.nii.gz`` with the geometry of
        the image at ``image_path``, and mark the case corrected."""
        image = read_image(image_path)
        if labels.shape != image.spatial_shape:
            raise ValueError(f"shape {labels.shape} differs from the image's {image.spatial_shape}")
        path = write_image(Image(labels[None].astype(np.uint8), image.geometry), self.corrections / f"{case_id}.nii.gz")
        self.set(key, corrected=True, case_id=case_id, image=str(Path(image_path).absolute()))
        return path

    def export_corrections(self, output: Path) -> tuple[Path, int]:
        """Write the corrected cases as a data set in the ``pairs`` layout, ``output/images/CASE.EXT`` (a copy of the
        case's image) and ``output/labels/CASE.nii.gz`` (its correction), for ``vesalius import OUTPUT NAME``.

        The folder is written whole and atomically (:func:`vesalius.io.atomic.write_folder_atomic`); it may not be
        or hold the review folder or any of the images. Returns the folder and the number of cases.
        """
        from vesalius.io import image_suffix
        from vesalius.io.atomic import write_folder_atomic
        from vesalius.outputs import check_output

        entries = [e for e in self.entries.values() if e.get("corrected") and e.get("image")]
        if not entries:
            raise VesaliusError("no corrected case in this review", self.folder, "draw and save a correction first")
        images = [Path(e["image"]) for e in entries]
        check_output(output, [self.folder, *images], kind="folder")
        files = {}
        for entry, image in zip(entries, images, strict=True):
            correction = self.corrections / f"{entry['case_id']}.nii.gz"
            if not image.is_file() or not correction.is_file():
                missing = image if not image.is_file() else correction
                raise VesaliusError("a corrected case's file is missing", missing, "restore it or save the case again")
            files[f"images/{entry['case_id']}{image_suffix(image)}"] = image.read_bytes()
            files[f"labels/{entry['case_id']}.nii.gz"] = correction.read_bytes()
        return write_folder_atomic(output, files), len(entries)


def drawing_to_labels(data: bytes, max_bytes: int) -> np.ndarray:
    """The label array of a NIfTI-1 drawing sent by the page (NiiVue's ``saveImage({isSaveDrawing: true})``,
    optionally gzipped), in the file's voxel order ``(X, Y[, Z])``. Raises ``ValueError`` for anything else."""
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
                data = f.read(max_bytes + 1)
        except (OSError, EOFError) as e:
            raise ValueError(f"not gzip: {e}") from None
        if len(data) > max_bytes:
            raise ValueError("too large")
    if len(data) < 352 or int.from_bytes(data[:4], "little") != 348:
        raise ValueError("not a little-endian NIfTI-1 file")
    dims = np.frombuffer(data[40:56], "<i2")
    datatype, offset = int(np.frombuffer(data[70:72], "<i2")[0]), int(np.frombuffer(data[108:112], "<f4")[0])
    if not 1 <= dims[0] <= 3 or datatype != 2 or offset < 348:  # NiiVue's drawing: uint8
        raise ValueError(f"unexpected drawing header (dims {dims[:4].tolist()}, datatype {datatype})")
    shape = tuple(int(d) for d in dims[1 : dims[0] + 1])
    while len(shape) > 2 and shape[-1] == 1:  # a 2D image is stored with Z = 1
        shape = shape[:-1]
    count = int(np.prod(shape))
    if len(data) < offset + count:
        raise ValueError("truncated drawing")
    return np.frombuffer(data, np.uint8, count, offset).reshape(shape, order="F").copy()


def reviews_of_cases(workspace_root: Path, case_ids: set[str], group: str | None = None) -> list[dict[str, Any]]:
    """What the workspace's reviews say of ``case_ids`` (of data set or folder ``group``, when given): one row per
    review and case, ``{"review", "case", "verdict", "note", "corrected"}``, sorted by review and case. A review
    file that cannot be read is skipped (the report that asks must not fail for it)."""
    rows = []
    for path in sorted((workspace_root / REVIEWS).glob("*/review.json")):
        try:
            entries = Review(path.parent).entries
        except VesaliusError:
            continue
        for key, entry in entries.items():
            key_group, _, case = key.rpartition("/")
            if case in case_ids and (group is None or key_group == group):
                rows.append({"review": path.parent.name, "case": case, **{k: entry.get(k) for k in _SHOWN}})
    return sorted(rows, key=lambda r: (r["review"], r["case"]))


_SHOWN = ("verdict", "note", "corrected")
