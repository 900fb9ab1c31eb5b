"""Where Vesalius keeps its files: ``$VESALIUS_HOME`` (default ``./vesalius_work``).

Layout::

    datasets/NAME/            imported data set (read-only after import): dataset.json, imagesTr/, labelsTr/
    preprocessed/NAME/        fingerprint, plan, splits (segmentation); classification_{plan,splits,fingerprint}.json
    preprocessed/NAME/CONFIG/ cached, preprocessed cases of one plan configuration
    runs/NAME/CONFIG/fold_K/  a trained model (:mod:`vesalius.model_package`): plan, trained configuration,
                              checkpoints, logs, validation; CONFIG_wXX: a run of XX% width (a pruned network)
    predictions/NAME/, reports/, exports/

Every path inside the workspace is built here.
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
        """A workspace from a folder, an existing workspace, or ``None`` (the default); a path that is an existing
        file is refused."""
        if isinstance(root, Workspace):
            return root
        ws = cls.default() if root is None else cls(Path(root).absolute())
        if ws.root.exists() and not ws.root.is_dir():
            raise VesaliusError(
                "the workspace must be a folder, but this is a file",
                ws.root,
                "give --workspace (or $VESALIUS_HOME) a folder",
            )
        return ws

    @classmethod
    def of_run(cls, run_dir: Path) -> Workspace | None:
        """The workspace a run folder ``runs/NAME/CONFIG/fold_K`` lies in, or ``None`` when it lies elsewhere."""
        parents = run_dir.absolute().parents
        if len(parents) > 3 and parents[2].name == "runs":
            return cls(parents[3])
        return None

    @staticmethod
    def holds_workspace(folder: Path) -> bool:
        """Whether ``folder`` looks like a workspace (it has imported data sets or runs)."""
        return (folder / "datasets").is_dir() or (folder / "runs").is_dir()

    def dataset_dir(self, name: str) -> Path:
        """``datasets/NAME``: the imported data set."""
        return self.root / "datasets" / check_name(name)

    def planning_dir(self, name: str) -> Path:
        """``preprocessed/NAME``: the data set's fingerprint, plans, splits and preprocessed configurations."""
        return self.root / "preprocessed" / check_name(name)

    def fingerprint_path(self, name: str) -> Path:
        """The segmentation fingerprint (:class:`vesalius.planning.fingerprint.Fingerprint`)."""
        return self.planning_dir(name) / "fingerprint.json"

    def plan_path(self, name: str) -> Path:
        """The segmentation plan (:class:`vesalius.planning.plan.Plan`)."""
        return self.planning_dir(name) / "plan.json"

    def splits_path(self, name: str) -> Path:
        """The segmentation data set's 5-fold split."""
        return self.planning_dir(name) / "splits.json"

    def classification_fingerprint_path(self, name: str) -> Path:
        """The classification fingerprint (:class:`vesalius.planning.classification.ClassificationFingerprint`)."""
        return self.planning_dir(name) / "classification_fingerprint.json"

    def classification_plan_path(self, name: str) -> Path:
        """The classification plan (:class:`vesalius.planning.plan.ClassificationPlan`)."""
        return self.planning_dir(name) / "classification_plan.json"

    def classification_splits_path(self, name: str) -> Path:
        """The classification data set's stratified folds."""
        return self.planning_dir(name) / "classification_splits.json"

    def preprocessed_dir(self, name: str, config: str) -> Path:
        """``preprocessed/NAME/CONFIG``: the cases preprocessed for one plan configuration."""
        return self.planning_dir(name) / config

    def runs_dir(self, name: str) -> Path:
        """``runs/NAME``: the data set's trained models."""
        return self.root / "runs" / check_name(name)

    def run_dir(self, name: str, config: str, fold: int | str) -> Path:
        """``runs/NAME/CONFIG/fold_K``: one trained model (segmentation: CONFIG is the plan configuration, with
        ``_wXX`` for a run of XX% width; classification: the network)."""
        return self.runs_dir(name) / config / f"fold_{fold}"

    def predictions_dir(self, name: str) -> Path:
        """``predictions/NAME``."""
        return self.root / "predictions" / check_name(name)

    def exports_dir(self) -> Path:
        """``exports``: model packages exported by the demo (``vesalius export`` writes where it is told)."""
        return self.root / "exports"

    def reports_dir(self) -> Path:
        """``reports``."""
        return self.root / "reports"

    def serving_dir(self) -> Path:
        """``serving``: the model registry, API keys, jobs, the audit log of ``vesalius serve``."""
        return self.root / "serving"

    def demo_dir(self, part: str) -> Path:
        """``demo_PART``: what ``vesalius demo`` generates (``sources``) and copies (``inputs``, ``references``)."""
        return self.root / f"demo_{part}"

    def dataset_names(self) -> list[str]:
        folder = self.root / "datasets"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "dataset.json").is_file())
