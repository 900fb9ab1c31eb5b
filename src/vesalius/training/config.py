"""The settings of one training run, saved with the run so that it can be reproduced and resumed.

Values left as ``None`` are filled from the plan configuration when the run starts (:meth:`TrainingConfig.resolve`)
and the resolved values are what ``training.json`` records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vesalius.errors import VesaliusError
from vesalius.precision import PRECISIONS

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainingConfig", "check_known_settings"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine")

#: Default learning rate per optimizer (nnU-Net's SGD; AdamW as commonly used for U-Nets).
DEFAULT_LR = {"sgd": 1e-2, "adamw": 2e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 3e-5, "adamw": 1e-2}


def check_known_settings(settings_class: type, d: dict[str, Any]) -> None:
    """Refuse keys of ``d`` that are no field of the settings dataclass ``settings_class`` (a saved or given
    ``training.json`` from another version, or a typo)."""
    known = {f.name for f in fields(settings_class)}
    unknown = set(d) - known
    if unknown:
        raise VesaliusError(f"unknown training settings {sorted(unknown)}", remedy=f"use {sorted(known)}")


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of a segmentation training run.

    Attributes:
        dataset: data set name; ``config``: plan configuration (``"3d"`` or ``"2d"``).
        fold: cross-validation fold (0-4) or ``"all"`` (train on every case, no validation).
        epochs, iterations_per_epoch: the schedule; training stops after ``epochs * iterations_per_epoch``
            iterations or when ``time_budget_s`` is spent, whichever comes first. The learning rate follows
            whichever of the two is further along, so a time-budgeted run ends its schedule on time.
        time_budget_s: wall seconds for the training loop (validation included), or ``None``.
        batch_size, patch_size: default: the plan's.
        optimizer: ``"sgd"`` (Nesterov, momentum 0.99) or ``"adamw"``; ``lr`` and ``weight_decay`` default per
            optimizer; ``schedule``: ``"poly"`` (exponent 0.9) or ``"cosine"``. Both default to the plan's
            ``training`` entry (CPU plans: AdamW + cosine; GPU plans and plans without it: SGD + poly).
        precision: ``"auto"`` (bf16 autocast on a CPU with native bf16 or on CUDA, else fp32), ``"fp32"``,
            ``"bf16"``, ``"fp16"`` (CUDA, with gradient scaling).
        val_batches: batches of fixed validation patches for the per-epoch pseudo-Dice.
        seed: the run's seed (model initialisation, patch sampling, augmentation).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``threads``: CPU threads for torch (default: all cores).
        augmentation: overrides of :class:`vesalius.augmentation.AugmentationConfig`; ``mirror_axes`` defaults
            to the plan's.
    """

    dataset: str
    config: str = "3d"
    fold: int | str = 0
    epochs: int | None = None
    iterations_per_epoch: int = 250
    time_budget_s: float | None = None
    batch_size: int | None = None
    patch_size: tuple[int, ...] | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    precision: str = "auto"
    val_batches: int = 10
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    augmentation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise VesaliusError(f"unknown optimizer '{self.optimizer}'", remedy=f"use one of {', '.join(OPTIMIZERS)}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise VesaliusError(f"unknown schedule '{self.schedule}'", remedy=f"use one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise VesaliusError(f"unknown precision '{self.precision}'", remedy=f"use one of {', '.join(PRECISIONS)}")
        if not (self.fold == "all" or (isinstance(self.fold, int) and self.fold >= 0)):
            raise VesaliusError(f"invalid fold '{self.fold}'", remedy="use 0-4 or 'all'")
        if self.iterations_per_epoch < 1 or (self.epochs is not None and self.epochs < 1):
            raise VesaliusError("epochs and iterations per epoch must be at least 1")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise VesaliusError("the time budget must be positive", remedy="e.g. --time-budget 30m")

    def resolve(self, plan: dict[str, Any]) -> TrainingConfig:
        """A copy with every default taken from the plan (its configuration's ``iterations``, ``batch_size``, ...).

        With neither ``epochs`` nor a time budget, the run takes the plan's iterations and its time budget.
        """
        if self.config not in plan["configurations"]:
            raise VesaliusError(
                f"the plan has no '{self.config}' configuration", remedy=f"use one of {list(plan['configurations'])}"
            )
        plan_config = plan["configurations"][self.config]
        suggested = {"optimizer": "sgd", "schedule": "poly", **plan.get("training", {})}
        optimizer = self.optimizer or suggested["optimizer"]
        epochs = self.epochs
        budget = self.time_budget_s
        if epochs is None:
            epochs = max(1, math.ceil(int(plan_config.get("iterations", 1000)) / self.iterations_per_epoch))
            if budget is None:
                budget = plan.get("budget", {}).get("time_budget_s")
        return replace(
            self,
            epochs=epochs,
            time_budget_s=budget,
            batch_size=self.batch_size or int(plan_config["batch_size"]),
            patch_size=tuple(int(p) for p in (self.patch_size or plan_config["patch_size"])),
            optimizer=optimizer,
            schedule=self.schedule or suggested["schedule"],
            lr=self.lr if self.lr is not None else DEFAULT_LR[optimizer],
            weight_decay=self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[optimizer],
        )

    @property
    def total_iterations(self) -> int:
        if self.epochs is None:
            raise ValueError("resolve() the config first")
        return self.epochs * self.iterations_per_epoch

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["patch_size"] is not None:
            d["patch_size"] = list(d["patch_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingConfig:
        check_known_settings(cls, d)
        values = dict(d)
        if values.get("patch_size") is not None:
            values["patch_size"] = tuple(values["patch_size"])
        return cls(**values)
