"""A trained model and everything needed to use it: the one owner of the run folder.

Training writes a run folder (``runs/NAME/CONFIG/fold_K/``); validation, prediction, reports, the viewer and
export read it, all through :class:`ModelPackage`. No other module knows the folder's file names.

Layout::

    model.json             the trained configuration (TrainedSegmentation or TrainedClassification): what
                           prediction needs, resolved at training time (network, patch, spacing, intensity
                           filters, normalisation, mirror axes, batch, precision, channels, labels) and the
                           versions that trained it
    plan.json              the plan the run was trained from (for the record; prediction reads model.json)
    training.json          the resolved training settings and the split: the run can be reproduced from it
    fingerprint.json       the data set's fingerprint at training time (for drift checks)
    postprocessing.json    the post-processing decided on the fold's validation cases (segmentation)
    checkpoint_latest.pt   weights, optimiser and loop state after the last epoch (for --resume)
    checkpoint_best.pt     weights of the best validation epoch
    checkpoint_final.pt    the weights to predict with
    log.csv, progress.png, tensorboard/   the training log, one row per epoch
    log_iterations.csv     the mean training loss every few iterations (finer learning curves)
    outcome.json           what the run did (TrainingOutcome): epochs and iterations run, why it stopped
    validation/            the fold's validation predictions and summary.json
    report.html            the run's report

Checkpoints are written atomically and loaded with ``weights_only=True``. The trained configuration is a typed
document (:mod:`vesalius.io.schema`): a hand-edited ``model.json`` with a wrong key gets a one-line error.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path, write_json_atomic
from vesalius.io.schema import load_document, to_json
from vesalius.planning.plan import (
    ChannelFilters,
    ClassificationPlan,
    ClassifierNetwork,
    Configuration,
    Normalization,
    Plan,
    check_filters,
    load_any_plan,
)

__all__ = [
    "CHECKPOINTS",
    "MODEL_VERSION",
    "ModelPackage",
    "Resume",
    "TrainedClassification",
    "TrainedConfiguration",
    "TrainedSegmentation",
    "TrainingOutcome",
    "find_packages",
    "is_model_package",
    "versions",
]

#: Schema version of ``model.json``.
MODEL_VERSION = 1
#: The checkpoints a run folder may hold.
CHECKPOINTS = ("final", "best", "latest")


@dataclass(frozen=True)
class TrainedSegmentation:
    """What a segmentation model was trained with and prediction must do the same way.

    Attributes:
        dataset: the data set it was trained on; ``config``: the plan configuration (``"3d"``, ``"2d"``).
        channels: input channel names, in order; ``labels``: label value -> name (0 is the background).
        normalization: per channel, as in preprocessing.
        configuration: the network and the grid: the plan's configuration with the patch, batch, mirror axes and
            network family (``network``; ``"resunet"`` in ``model.json`` files without it) that training used (a run
            may override the plan's).
        precision: the training precision (``auto``, ``fp32``, ``bf16``, ``fp16``); validation and prediction use
            it unless told otherwise.
        versions: package versions that trained the model.
        filters: per channel, the plan's intensity filters (N4, denoising) applied before resampling; ``None``: none.
    """

    dataset: str
    config: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    normalization: tuple[Normalization, ...]
    configuration: Configuration
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    versions: dict[str, str] = field(default_factory=dict)
    filters: tuple[ChannelFilters, ...] | None = None
    task: Literal["segmentation"] = "segmentation"
    model_version: int = MODEL_VERSION

    def __post_init__(self) -> None:
        check_filters(self.filters, self.normalization)

    @property
    def spatial_dims(self) -> int:
        """Dimensions of the images (3 for a 2D configuration of 3D data)."""
        return len(self.configuration.resampling_spacing)

    @property
    def class_names(self) -> list[str]:
        """Names of the foreground labels in label order."""
        return [self.labels[k] for k in sorted(self.labels) if k != 0]

    @property
    def foreground_labels(self) -> list[int]:
        return [k for k in sorted(self.labels) if k != 0]


@dataclass(frozen=True)
class TrainedClassification:
    """What a classifier was trained with and prediction must do the same way.

    Attributes:
        dataset: the data set it was trained on; ``channels``: input channel names; ``labels``: class value -> name.
        spatial_dims: 2 or 3; ``target_type``: ``binary``, ``multiclass``, ``multilabel`` or ``ordinal``.
        input_size: every image is normalised (``normalization``), then resized to it.
        network: the architecture that was trained (the plan's, or the one chosen with ``--network``).
        precision: the training precision; prediction uses it unless told otherwise.
    """

    dataset: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    spatial_dims: int
    target_type: Literal["binary", "multiclass", "multilabel", "ordinal"]
    input_size: tuple[int, ...]
    normalization: tuple[Normalization, ...]
    network: ClassifierNetwork
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    versions: dict[str, str] = field(default_factory=dict)
    task: Literal["classification"] = "classification"
    model_version: int = MODEL_VERSION

    @property
    def class_names(self) -> list[str]:
        """Output ``k``'s class (or label) name, in output order."""
        return [self.labels[k] for k in sorted(self.labels)]


TrainedConfiguration = TrainedSegmentation | TrainedClassification


@dataclass(frozen=True)
class Resume:
    """A point where a run was resumed: the epoch and iteration of the checkpoint it continued from."""

    epoch: int
    iteration: int


@dataclass(frozen=True)
class TrainingOutcome:
    """What a run did, as opposed to what its settings planned (``outcome.json``).

    The settings say ``epochs`` 8; a time budget may end the run after 5. Training rewrites this record when it
    starts, after each epoch and when it ends, so that it always matches the latest checkpoint and ``log.csv``;
    runs of an older Vesalius have none.

    Attributes:
        stopped: why the run ended: ``"epochs"`` (all planned), ``"time budget"``, ``"early stopping"``, ``"plateau"``,
            ``"interrupted"`` (Ctrl-C), ``"error"``; ``None`` while it runs (or when it was killed).
        reason: the same in one sentence, with the numbers (``time budget of 30 min reached after 5 of 8 planned
            epochs (1100 of 2000 iterations)``).
        epochs, iterations: epochs completed (the rows of ``log.csv``; the last one may be cut short by the budget)
            and iterations run.
        planned_epochs, iterations_per_epoch, planned_iterations: what the settings asked for.
        budget_iterations: the iteration count a time budget became after the first epoch (``None`` without a
            budget, or before it was fixed); ``time_budget_s``: the budget.
        elapsed_s: seconds of training (validation included), over all sessions of a resumed run.
        best_epoch: the best validation epoch (``None`` without validation).
        resumed: where the run was resumed from, in order.
        log_every: iterations per point of ``log_iterations.csv`` (a shorter last point where an epoch ends).
    """

    stopped: str | None
    reason: str
    epochs: int
    iterations: int
    planned_epochs: int
    iterations_per_epoch: int
    planned_iterations: int
    elapsed_s: float
    budget_iterations: int | None = None
    time_budget_s: float | None = None
    best_epoch: int | None = None
    resumed: tuple[Resume, ...] = ()
    log_every: int = 1
    outcome_version: int = 1


def versions() -> dict[str, str]:
    """Versions of Vesalius and the packages that decide a model's numbers."""
    found = {}
    for name in ("vesalius", "torch", "monai", "numpy", "SimpleITK"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


class ModelPackage:
    """A run folder: a trained model with its configuration, checkpoints and records (see the module docstring)."""

    MODEL = "model.json"
    PLAN = "plan.json"
    TRAINING = "training.json"
    FINGERPRINT = "fingerprint.json"
    POSTPROCESSING = "postprocessing.json"
    OUTCOME = "outcome.json"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelPackage({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelPackage) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- files -------------------------------------------------------------------------------------------------------
    def checkpoint_path(self, name: str = "final") -> Path:
        """``checkpoint_NAME.pt``: training writes :data:`CHECKPOINTS` (``final``, ``best``, ``latest``)."""
        if not name.replace("_", "").isalnum():
            raise VesaliusError(f"invalid checkpoint name '{name}'", remedy=f"use one of {', '.join(CHECKPOINTS)}")
        return self.root / f"checkpoint_{name}.pt"

    @property
    def log_csv(self) -> Path:
        return self.root / "log.csv"

    @property
    def log_iterations_csv(self) -> Path:
        """The training loss every few iterations (:class:`vesalius.training.logs.IterationLog`)."""
        return self.root / "log_iterations.csv"

    @property
    def progress_png(self) -> Path:
        return self.root / "progress.png"

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard"

    @property
    def validation_dir(self) -> Path:
        """The fold's validation predictions, ``summary.json`` and (classification) ``predictions.csv``."""
        return self.root / "validation"

    @property
    def validation_summary_path(self) -> Path:
        """The validation's metrics (``summary.json``)."""
        return self.validation_dir / "summary.json"

    @property
    def validation_predictions_csv(self) -> Path:
        """Classification: the validation cases' probabilities."""
        return self.validation_dir / "predictions.csv"

    @property
    def validation_gradcam_dir(self) -> Path:
        """Classification: Grad-CAM overlays of the most and least confident validation cases."""
        return self.validation_dir / "gradcam"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    # -- reading -----------------------------------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        """Whether the folder holds a run (its trained configuration)."""
        return (self.root / self.MODEL).is_file()

    @cached_property
    def trained(self) -> TrainedConfiguration:
        """The trained configuration (``model.json``)."""
        path = self.root / self.MODEL
        if path.exists() and not path.is_file():
            raise VesaliusError("the trained configuration is not a file", path, "train the model again")
        if not path.is_file():
            if (self.root / self.TRAINING).is_file():
                raise VesaliusError(
                    "a run of an older Vesalius without a trained configuration (model.json)",
                    self.root,
                    "train it again with this version",
                )
            raise VesaliusError("not a trained model (no model.json)", self.root, "give the folder of a trained fold")
        try:
            task = json.loads(path.read_text(encoding="utf-8")).get("task")
        except (OSError, ValueError, AttributeError):
            task = None
        kind = TrainedClassification if task == "classification" else TrainedSegmentation
        return load_document(kind, path, "train the model again")

    @property
    def task(self) -> str:
        """``"segmentation"`` or ``"classification"``."""
        return self.trained.task

    @cached_property
    def record(self) -> dict[str, Any]:
        """``training.json``: ``{"training": resolved settings, "split": {"train": [...], "val": [...]}, ...}``."""
        path = self.root / self.TRAINING
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VesaliusError("not a training run (no training.json)", self.root, "give a run folder") from None
        except (OSError, ValueError) as e:
            raise VesaliusError(f"unreadable training record ({e})", path, "train the model again") from None
        if not _is_training_record(record):
            raise VesaliusError(
                "not a training record (an object with 'training' and 'split')", path, "train the model again"
            )
        return record

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved training settings, as saved."""
        return dict(self.record["training"])

    @property
    def split(self) -> dict[str, list[str]]:
        """The cases trained on (``train``) and validated on (``val``)."""
        return {"train": list(self.record["split"]["train"]), "val": list(self.record["split"]["val"])}

    @property
    def plan(self) -> Plan | ClassificationPlan:
        """The plan the run was trained from."""
        return load_any_plan(self.root / self.PLAN)

    @property
    def label_names(self) -> dict[int, str]:
        """Label (or class) value -> name."""
        return dict(self.trained.labels)

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """The data set's fingerprint at training time, if it was recorded."""
        return _json_if_present(self.root / self.FINGERPRINT)

    @property
    def postprocessing(self) -> dict[str, Any] | None:
        """The post-processing decided on the validation cases (``postprocessing.json``), if any."""
        return _json_if_present(self.root / self.POSTPROCESSING)

    @property
    def outcome(self) -> TrainingOutcome | None:
        """What the run did (``outcome.json``), or ``None`` for a run of an older Vesalius that did not record it.

        Read afresh each time: training rewrites it as it goes.
        """
        path = self.root / self.OUTCOME
        if not path.is_file():
            return None
        return load_document(TrainingOutcome, path, "resume the run (--resume) to write it again")

    def validation_summary(self) -> dict[str, Any] | None:
        """The validation's ``summary.json``, if the model was validated."""
        return _json_if_present(self.validation_summary_path)

    def load_checkpoint(self, name: str = "final") -> dict[str, Any]:
        """The state saved in checkpoint ``name`` (tensors on the CPU)."""
        path = self.checkpoint_path(name)
        if not path.is_file() and name not in CHECKPOINTS:
            raise VesaliusError(f"unknown checkpoint '{name}'", path, f"use --checkpoint {', '.join(CHECKPOINTS)}")
        if not path.is_file():
            present = [c for c in CHECKPOINTS if self.checkpoint_path(c).is_file()]
            raise VesaliusError(
                f"no checkpoint '{name}' in this run",
                path,
                f"use --checkpoint {' or '.join(present)}" if present else "train the model first",
            )
        return load_checkpoint(path)

    # -- writing (training and validation) -------------------------------------------------------------------------
    def refuse_to_overwrite(self, *, force: bool) -> None:
        """Refuse a new run in a folder that holds one, unless ``force``."""
        if not force and (self.root / self.TRAINING).exists():
            raise VesaliusError("a run exists here", self.root, "continue it with --resume, or start over with --force")

    def prepare(self, *, resume: bool, force: bool) -> dict[str, Any] | None:
        """Make the folder ready for training; returns the state of ``checkpoint_latest.pt`` when resuming.

        A new run refuses a folder that holds a run unless ``force``, and then starts from an empty folder: nothing
        of an old run (logs, events, checkpoints) may mix in.
        """
        if resume and not (self.root / self.TRAINING).is_file():
            raise VesaliusError("nothing to resume", self.root, "start the run without --resume")
        if not resume:
            self.refuse_to_overwrite(force=force)
        if not resume and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        latest = self.checkpoint_path("latest")
        return load_checkpoint(latest) if resume and latest.exists() else None

    def saved_settings(self) -> dict[str, Any]:
        """The settings of the run to resume (``training.json``)."""
        if not (self.root / self.TRAINING).is_file():
            raise VesaliusError("nothing to resume", self.root, "start the run without --resume")
        return self.settings

    def write_setup(
        self,
        plan: Plan | ClassificationPlan,
        trained: TrainedConfiguration,
        settings: dict[str, Any],
        split: dict[str, list[str]],
        fingerprint: Path | None = None,
    ) -> None:
        """Record what the run is trained from and with: plan, trained configuration, settings, split, fingerprint."""
        plan.save(self.root / self.PLAN)
        write_json_atomic(self.root / self.MODEL, to_json(trained))
        write_json_atomic(self.root / self.TRAINING, {"task": trained.task, "training": settings, "split": split})
        if fingerprint is not None and fingerprint.is_file():
            write_json_atomic(self.root / self.FINGERPRINT, json.loads(fingerprint.read_text(encoding="utf-8")))
        self.__dict__.pop("trained", None)
        self.__dict__.pop("record", None)

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        path = self.checkpoint_path(name)
        save_checkpoint(path, state)
        return path

    def write_outcome(self, outcome: TrainingOutcome) -> None:
        """Record what the run did so far (atomically: a killed run leaves the previous record)."""
        write_json_atomic(self.root / self.OUTCOME, to_json(outcome))

    def write_postprocessing(self, decision: dict[str, Any]) -> None:
        write_json_atomic(self.root / self.POSTPROCESSING, decision)


def _is_training_record(record: Any) -> bool:
    """Whether ``record`` has the shape of ``training.json``: settings and a split of two case lists."""
    if not isinstance(record, dict) or not isinstance(record.get("training"), dict):
        return False
    split = record.get("split")
    return isinstance(split, dict) and all(isinstance(split.get(k), list) for k in ("train", "val"))


def _json_if_present(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VesaliusError(f"unreadable JSON ({e})", path, "delete it and validate the model again") from None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    import torch

    with atomic_path(path, ".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved at ``path`` (tensors on the CPU, ``weights_only=True``)."""
    import torch

    if not path.is_file():
        raise VesaliusError("no checkpoint", path, "train the model first (or drop --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VesaliusError(f"unreadable checkpoint ({exc})", path, "delete it and train again") from exc


def is_model_package(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (of this Vesalius: its trained configuration; of an older one: its
    training record, which :attr:`ModelPackage.trained` then refuses with a clear error)."""
    root = Path(path)
    return (root / ModelPackage.MODEL).is_file() or (root / ModelPackage.TRAINING).is_file()


def find_packages(model: str | Path) -> list[ModelPackage]:
    """The trained models in ``model``: itself when it is a run folder, else its ``fold_*`` sub-folders with final
    weights (a fold ensemble). Raises when there is none."""
    model = Path(model)
    if not model.exists():
        raise VesaliusError("model not found", model, "give a fold folder (runs/NAME/CONFIG/fold_K) or its parent")
    if is_model_package(model):
        return [ModelPackage(model)]
    packages = [
        ModelPackage(p)
        for p in sorted(model.glob("fold_*"))
        if ModelPackage(p).checkpoint_path("final").is_file() and (p / ModelPackage.MODEL).is_file()
    ]
    if not packages:
        raise VesaliusError(
            "no trained model here", model, "give a fold folder (runs/NAME/CONFIG/fold_K) or its configuration folder"
        )
    return packages
