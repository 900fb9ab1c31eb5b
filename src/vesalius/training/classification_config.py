"""The settings of one classification run, saved with the run (``training.json``) so it can be reproduced and resumed.

``None`` fields come from the classification plan (:mod:`vesalius.planning.classification`) when the run starts
(:meth:`ClassificationConfig.resolve`); ``training.json`` records the resolved values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from vesalius.errors import VesaliusError
from vesalius.models.classifiers import ARCHITECTURES
from vesalius.precision import PRECISIONS
from vesalius.training.config import OPTIMIZERS, check_known_settings

__all__ = ["BALANCES", "CLASSIFICATION_SCHEDULES", "ClassificationConfig"]

CLASSIFICATION_SCHEDULES = ("cosine", "step", "poly")
BALANCES = ("none", "weights", "sampling")
#: Settings a resumed run may change; everything else must match the saved ``training.json``.
RESUMABLE = ("epochs", "time_budget_s", "precision", "device", "threads")


@dataclass(frozen=True)
class ClassificationConfig:
    """Settings of a classification training run.

    Attributes:
        dataset: data set name.
        fold: ``"auto"`` (the source's official train/val split where it has one, else fold 0), ``"official"``,
            a stratified cross-validation fold 0-4, or ``"all"`` (every non-test case, no validation).
        network: one of :data:`~vesalius.models.classifiers.ARCHITECTURES` (default: the plan's).
        epochs: passes over the training cases; training also stops when ``time_budget_s`` is spent or, with
            validation, after ``early_stopping`` epochs without a better validation AUC (0: never).
        batch_size, optimizer (``sgd`` with momentum 0.9 or ``adamw``), lr, weight_decay, schedule (``cosine``,
            ``step``: /10 at 50 % and 75 % of the run, ``poly``): default: the plan's.
        balance: imbalance handling: ``none``, ``weights`` (loss weights inverse to class frequency) or
            ``sampling`` (batches drawn with equal class probability); default: the plan's.
        label_smoothing: cross-entropy label smoothing (default: the plan's).
        pretrained: a state-dict file of weights to start from (given by the user; nothing is downloaded).
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` (CUDA), as for segmentation.
        seed: the run's seed (initial weights, batch order, augmentation).
        device, threads: where to train; CPU threads (default: all cores).
        augmentation: overrides of the plan's :class:`vesalius.augmentation.AugmentationConfig` settings.
    """

    dataset: str
    fold: int | str = "auto"
    network: str | None = None
    epochs: int | None = None
    time_budget_s: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    balance: str | None = None
    label_smoothing: float | None = None
    early_stopping: int | None = None
    pretrained: str | None = None
    precision: str = "auto"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    augmentation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        checks = (
            ("network", self.network, ARCHITECTURES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, CLASSIFICATION_SCHEDULES),
            ("balance", self.balance, BALANCES),
            ("precision", self.precision, PRECISIONS),
        )
        for name, value, allowed in checks:
            if value is not None and value not in allowed:
                raise VesaliusError(f"unknown {name} '{value}'", remedy=f"use one of {', '.join(allowed)}")
        if not (self.fold in ("auto", "official", "all") or (isinstance(self.fold, int) and self.fold >= 0)):
            raise VesaliusError(f"invalid fold '{self.fold}'", remedy="use 0-4, 'official', 'all' or 'auto'")
        if self.epochs is not None and self.epochs < 1:
            raise VesaliusError("epochs must be at least 1")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise VesaliusError("the time budget must be positive", remedy="e.g. --time-budget 10m")

    def resolve(self, plan: dict[str, Any], fold: int | str) -> ClassificationConfig:
        """A copy with the fold resolved and every ``None`` setting taken from the plan."""
        optimizer = self.optimizer or plan["optimizer"]
        same_optimizer = optimizer == plan["optimizer"]
        return replace(
            self,
            fold=fold,
            network=self.network or plan["network"]["name"],
            epochs=self.epochs or int(plan["epochs"]),
            time_budget_s=self.time_budget_s or plan["budget"]["time_budget_s"],
            batch_size=self.batch_size or int(plan["batch_size"]),
            optimizer=optimizer,
            lr=self.lr if self.lr is not None else (plan["lr"] if same_optimizer else _default("lr", optimizer)),
            weight_decay=self.weight_decay
            if self.weight_decay is not None
            else (plan["weight_decay"] if same_optimizer else _default("weight_decay", optimizer)),
            schedule=self.schedule or plan["schedule"],
            balance=self.balance or plan["balance"],
            label_smoothing=self.label_smoothing if self.label_smoothing is not None else plan["label_smoothing"],
            early_stopping=self.early_stopping if self.early_stopping is not None else plan["early_stopping_patience"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassificationConfig:
        check_known_settings(cls, d)
        return cls(**d)


def _default(key: str, optimizer: str) -> float:
    from vesalius.planning.classification import load_classification_rules

    return float(load_classification_rules()[key][optimizer])
