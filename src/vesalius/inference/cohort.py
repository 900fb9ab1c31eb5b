"""Predicting a cohort: shards of the case list, a manifest of finished cases, and resuming a killed run.

A cohort of thousands of scans is split between processes or machines by **shards**: shard ``i`` of ``N`` takes
every ``N``-th case of the case list sorted by id, starting at the ``i``-th (1-based, as people count them). The
split depends on the case ids alone, so every process computes its own share without talking to the others, and
shards of one cohort never overlap. Under ``torchrun`` the shard comes from the ranks (``RANK``, ``WORLD_SIZE``).

Each finished case appends one line to ``OUT/manifest.jsonl``: the case, the SHA-256 of its input files, the model's
key (:func:`model_key`: the SHA-256 of its weights and the options that change the result), the output files and the
seconds. A line is appended with a single ``write`` on a file opened with ``O_APPEND``, which Linux keeps whole
even when several shards write to the same manifest at once; the outputs themselves are written atomically before
the line. A case whose line matches its current input and model, and whose outputs exist, is skipped: a killed job
run again continues where it stopped, and a new model or changed input is predicted again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vesalius.errors import VesaliusError
from vesalius.inference.inputs import InputCase

__all__ = ["MANIFEST_NAME", "Manifest", "Shard", "file_sha256", "input_sha256", "model_key"]

MANIFEST_NAME = "manifest.jsonl"
#: Files of a model whose bytes decide its predictions (weights, their configuration, post-processing).
MODEL_FILE_SUFFIXES = (".pt", ".onnx", ".json", ".vpkg", ".pt2")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise VesaliusError(
                f"shard {self.index}/{self.count} does not exist",
                remedy=f"shards are numbered 1 to N: give --shard 1/{max(self.count, 1)} ... "
                f"{max(self.count, 1)}/{max(self.count, 1)}",
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/8"`` -> shard 2 of 8."""
        index, _, count = text.partition("/")
        if not (index.strip().isdigit() and count.strip().isdigit()):
            raise VesaliusError(f"--shard '{text}' is not I/N", remedy="give e.g. --shard 1/4 (the first of four)")
        return cls(int(index), int(count))

    @classmethod
    def from_environment(cls) -> Shard | None:
        """The shard of this process under ``torchrun`` (rank + 1 of the world size), else ``None``."""
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None or not (rank.isdigit() and world.isdigit()) or int(world) < 2:
            return None
        return cls(int(rank) + 1, int(world))

    def select(self, cases: Sequence[InputCase]) -> list[InputCase]:
        """This shard's cases: every ``count``-th of ``cases`` sorted by id, from the ``index``-th."""
        ordered = sorted(cases, key=lambda c: c.case_id)
        return ordered[self.index - 1 :: self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def file_sha256(path: Path, digest: Any = None) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks); with ``digest``, fed into it instead."""
    h = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files_of(paths: Iterable[Path], keep: Any = None) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and (keep is None or keep(p)))
        elif path.is_file():
            found.append(path)
    return found


def input_sha256(case: InputCase) -> str:
    """SHA-256 over the case's input files (a DICOM folder: every file in it, by name), names and bytes."""
    h = hashlib.sha256()
    for path in _files_of(case.files):
        h.update(path.name.encode())
        file_sha256(path, h)
    return h.hexdigest()


def model_key(model: Path, options: Mapping[str, Any]) -> str:
    """What decides a model's predictions: SHA-256 over its weight and configuration files (a package file, or the
    ``.pt``/``.onnx``/``.json`` files of a run or package folder) and the options that change the result."""
    h = hashlib.sha256(json.dumps(dict(options), sort_keys=True, default=str).encode())
    root = model if model.is_dir() else model.parent
    for path in _files_of([model], lambda p: p.suffix in MODEL_FILE_SUFFIXES and "validation" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        file_sha256(path, h)
    return h.hexdigest()


class Manifest:
    """``OUT/manifest.jsonl``: one line per finished case (see the module docstring)."""

    def __init__(self, folder: Path, model: str) -> None:
        self.path = folder / MANIFEST_NAME
        self.model = model
        self.finished: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: that case is simply done again
                if isinstance(entry, dict) and "case" in entry:
                    self.finished[str(entry["case"])] = entry

    def done(self, case_id: str, input_sha: str, folder: Path) -> dict[str, Any] | None:
        """The manifest entry of ``case_id`` when it was predicted from the same input by the same model and its
        outputs are all still there; else ``None``."""
        entry = self.finished.get(case_id)
        if not entry or entry.get("input_sha256") != input_sha or entry.get("model") != self.model:
            return None
        if not all((folder / name).is_file() for name in entry.get("outputs", [])):
            return None
        return entry

    def record(self, case_id: str, input_sha: str, outputs: Sequence[str], seconds: float, **extra: Any) -> None:
        """Append the line of a finished case (after its outputs are written)."""
        entry = {
            "case": case_id,
            "input_sha256": input_sha,
            "model": self.model,
            "outputs": list(outputs),
            "seconds": round(seconds, 3),
            **extra,
        }
        line = (json.dumps(entry) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)  # not before: a refused input leaves no output folder
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        self.finished[case_id] = entry
