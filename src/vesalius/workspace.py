"""Where Vesalius keeps its files: ``$VESALIUS_HOME`` (default ``./vesalius_work``).

Layout::

    datasets/NAME/            imported data set (read-only after import): dataset.json, imagesTr/, labelsTr/
    preprocessed/NAME/CONFIG/ cached, preprocessed cases
    runs/NAME/CONFIG/fold_K/  checkpoints, logs, curves
    predictions/, reports/
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vesalius.errors import VesaliusError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    """A data set name: letters, digits, ``_ . -``; at most 64 characters."""
    if not _NAME.match(name):
        raise VesaliusError(
            f"invalid data set name '{name}'",
            remedy="use letters, digits, '_', '.' or '-' (at most 64, starting with a letter or digit)",
        )
    return name


@dataclass(frozen=True)
class Workspace:
    """The workspace folder and the paths inside it."""

    root: Path

    @classmethod
    def default(cls) -> Workspace:
        """``$VESALIUS_HOME`` if set, else ``./vesalius_work``."""
        return cls(Path(os.environ.get("VESALIUS_HOME", "vesalius_work")).absolute())

    @classmethod
    def resolve(cls, root: str | Path | Workspace | None) -> Workspace:
        """A workspace from a folder, an existing workspace, or ``None`` (the default)."""
        if isinstance(root, Workspace):
            return root
        return cls.default() if root is None else cls(Path(root).absolute())

    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / check_name(name)

    def preprocessed_dir(self, name: str, config: str) -> Path:
        return self.root / "preprocessed" / check_name(name) / config

    def run_dir(self, name: str, config: str, fold: int | str) -> Path:
        return self.root / "runs" / check_name(name) / config / f"fold_{fold}"

    def dataset_names(self) -> list[str]:
        folder = self.root / "datasets"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "dataset.json").is_file())
