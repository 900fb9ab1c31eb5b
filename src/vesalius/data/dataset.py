"""One object that describes a data set: its cases, channels, labels, task and source.

A :class:`Dataset` is stored as ``dataset.json`` in its folder; case files are kept relative to that folder, so
the folder can be moved. Importers build a ``Dataset`` whose paths point into the source; after import they
point into the workspace copy (nnU-Net v2 layout: ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io import Image, read_image
from vesalius.io.atomic import write_json_atomic
from vesalius.io.schema import SchemaError, from_json

Task = Literal["segmentation", "classification"]
TargetType = Literal["binary", "multiclass", "multilabel", "ordinal"]
TARGET_TYPES: tuple[str, ...] = ("binary", "multiclass", "multilabel", "ordinal")
SCHEMA_VERSION = 1


@dataclass
class Case:
    """One case.

    Attributes:
        case_id: unique identifier, usable in file names.
        images: image files (one per channel, or one multi-channel file such as an RGB picture); relative to
            the data set root unless absolute.
        label: segmentation label file (segmentation tasks).
        target: classification tasks: the class index (binary, multi-class, ordinal), or for multi-label data one
            0/1 flag per label (``[0, 1, 0, ...]``, as long as the data set's ``labels``).
        split: a split that came with the source (``"train"``, ``"val"``, ``"test"``), if any.
        source: where the case came from (file paths or ``file.npz:train[12]``), for messages and provenance.
    """

    case_id: str
    images: list[str]
    label: str | None = None
    target: int | list[int] | None = None
    split: str | None = None
    source: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_case_id(self.case_id, strict=False)
        if not self.images:
            raise SchemaError("images", "a case needs at least one image file")


@dataclass
class Dataset:
    """A data set: cases plus what they mean.

    Attributes:
        name: the workspace name.
        task: ``"segmentation"`` or ``"classification"``.
        spatial_dims: 2 or 3.
        channels: channel names in order (``["MRI"]``, ``["FLAIR", "T1c"]``, ``["R", "G", "B"]``).
        labels: segmentation label values, or classification class indices, mapped to names.
        cases: the cases.
        source: the folder or file it was imported from, and its layout.
        root: the folder that case paths are relative to (not stored).
        modalities: per channel, the kind of intensities (``"CT"``, ``"MRI"``, ``"RGB"``, ...), used to choose
            normalisation.
        notes: conversions applied on import (label thresholds, channel splits), for the record.
        stray_files: files in the source that belong to no case (reported by verification).
        target_type: classification tasks: ``"binary"``, ``"multiclass"``, ``"multilabel"`` (several labels per
            case, ChestMNIST-style) or ``"ordinal"`` (ordered grades, RetinaMNIST-style); ``None`` for segmentation.
    """

    name: str
    task: Task
    spatial_dims: int
    channels: list[str]
    labels: dict[int, str]
    cases: list[Case]
    source: dict[str, str] = field(default_factory=dict)
    root: Path | None = None
    modalities: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)
    target_type: TargetType | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise SchemaError("spatial_dims", f"expected 2 or 3, got {self.spatial_dims!r}")

    def path(self, relative: str) -> Path:
        """Absolute path of a case file."""
        p = Path(relative)
        return p if p.is_absolute() or self.root is None else self.root / p

    def image_paths(self, case: Case) -> list[Path]:
        return [self.path(p) for p in case.images]

    def label_path(self, case: Case) -> Path | None:
        return None if case.label is None else self.path(case.label)

    def read_case(self, case: Case) -> tuple[Image, Image | None]:
        """The channels of a case stacked into one ``(C, *spatial)`` image, and its label (if there is one)."""
        images = [read_image(p) for p in self.image_paths(case)]
        image = Image(np.concatenate([im.array for im in images], axis=0), images[0].geometry)
        label_path = self.label_path(case)
        return image, (read_image(label_path) if label_path is not None and label_path.exists() else None)

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise VesaliusError(f"no case '{case_id}' in data set '{self.name}'")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return {"vesalius_dataset": SCHEMA_VERSION, **d}

    @classmethod
    def from_json(cls, d: Any, root: Path | None = None, *, file: str | Path | None = None) -> Dataset:
        """A data set from the content of ``dataset.json``, every key and type checked.

        A hand-edited or damaged file must fail in one line that names the key (``cases[3].label``), not with a
        ``KeyError`` later in training; case ids are checked because later steps build file names from them.

        Raises:
            VesaliusError: a missing or unknown key, a value of the wrong type, or an unsafe case id; ``file``
                (default ``root/dataset.json``) is named in the message.
        """
        where = file if file is not None else (root / "dataset.json" if root is not None else "dataset.json")
        body = {k: v for k, v in d.items() if k != "vesalius_dataset"} if isinstance(d, dict) else d
        try:
            if isinstance(body, dict) and "root" in body:  # where the data set lies is never stored
                raise SchemaError("root", "unknown key")
            dataset = from_json(cls, body)
        except SchemaError as e:
            raise VesaliusError(str(e), where, "correct it, or re-import the data set") from None
        dataset.root = root
        return dataset

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/dataset.json`` atomically."""
        path = Path(folder) / "dataset.json"
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Dataset:
        """Read ``folder/dataset.json`` written by :meth:`save`."""
        path = Path(folder) / "dataset.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VesaliusError("no dataset.json", Path(folder), "import the data set with 'vesalius import'") from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise VesaliusError(f"invalid JSON ({e})", path, "re-import the data set") from None
        except (OSError, UnicodeDecodeError) as e:
            raise VesaliusError(f"cannot read the file ({e})", path, "re-import the data set") from None
        if not isinstance(raw, dict):
            raise VesaliusError(
                f"the file holds a JSON {_json_type(raw)}, not an object", path, "re-import the data set"
            )
        if "vesalius_dataset" not in raw:
            raise VesaliusError("not a Vesalius data set description", path, "import it with 'vesalius import'")
        return cls.from_json(raw, root=Path(folder), file=path)


def dataset_task(folder: str | Path, requested: str = "auto") -> Task:
    """The task of the data set in ``folder``, checked against ``requested`` (``"auto"`` takes the data set's)."""
    task = Dataset.load(folder).task
    if requested not in ("auto", task):
        raise VesaliusError(
            f"the data set is a {task} data set, not {requested}", Path(folder), f"use --task {task} or auto"
        )
    return task


_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_case_id(case_id: str, file: str | Path | None = None, where: str = "", *, strict: bool = True) -> str:
    """A case id: letters, digits, ``_ . -``, at most 64 characters, starting with a letter or digit (the rule of
    data set names, :func:`vesalius.workspace.check_name`), and no ``..``.

    Case ids become file names (``imagesTr/CASE_0000.nii.gz``, preprocessed ``CASE.npy``), so a separator or
    ``..`` would write outside the data set's folder; they are refused rather than rewritten, so that the ids
    stay those of the source.

    Args:
        case_id: the id.
        file: the file it came from, for the message.
        where: where in that file (``"row 3"``, ``"training[2]"``), for the message.
        strict: ``False`` checks only that the id is one safe file name (no separator, not hidden, no ``..``,
            at most 255 characters): the ids that the pairs and classes layouts take from file names (which
            may hold spaces or accents) and that data sets imported before the strict rule hold.
    """
    if strict:
        ok = isinstance(case_id, str) and bool(_CASE_ID.match(case_id)) and ".." not in case_id
    else:
        ok = (
            isinstance(case_id, str)
            and 0 < len(case_id) <= 255
            and not case_id.startswith((".", " "))
            and not any(c in case_id for c in "/\\\0")
            and ".." not in case_id
        )
    if not ok:
        at = f" ({where})" if where else ""
        raise VesaliusError(
            f"invalid case id {case_id!r}{at}",
            file,
            "use letters, digits, '_', '.' or '-' (at most 64, starting with a letter or digit, no '..')",
        )
    return case_id


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
