"""The settings of one training run, saved with the run (``training.json``) so it can be reproduced and resumed.

Values left as ``None`` come from the plan when the run starts (``resolve``); ``training.json`` records the
resolved values. :class:`SegmentationSettings` trains a plan configuration on patches;
:class:`ClassificationSettings` trains a classifier on whole images. Both check their values on creation (a bad
value is a one-line :class:`~vesalius.errors.VesaliusError`) and read back only keys they know.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vesalius.errors import VesaliusError
from vesalius.models.classifiers import ARCHITECTURES
from vesalius.planning.plan import NETWORK_FAMILIES, ClassificationPlan, Plan
from vesalius.precision import PRECISIONS, check_device

__all__ = [
    "BALANCES",
    "CLASSIFICATION_SCHEDULES",
    "OPTIMIZERS",
    "SCHEDULES",
    "ClassificationSettings",
    "SegmentationSettings",
    "Settings",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine")
CLASSIFICATION_SCHEDULES = ("cosine", "step", "poly")
BALANCES = ("none", "weights", "sampling")

#: Default segmentation learning rate and weight decay per optimizer (nnU-Net's SGD; AdamW as commonly used for
#: U-Nets). Classification defaults come from its plan's rules.
DEFAULT_LR = {"sgd": 1e-2, "adamw": 2e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 3e-5, "adamw": 1e-2}


def _check_choices(*checks: tuple[str, Any, tuple[str, ...]]) -> None:
    for name, value, allowed in checks:
        if value is not None and value not in allowed:
            raise VesaliusError(f"unknown {name} '{value}'", remedy=f"use one of {', '.join(allowed)}")


def _check_common(settings: Any, folds: tuple[str, ...]) -> None:
    """Checks that both kinds of settings share: precision, fold, epochs, time budget, learning rate."""
    _check_choices(("precision", settings.precision, PRECISIONS), ("optimizer", settings.optimizer, OPTIMIZERS))
    fold = settings.fold
    if not (fold in folds or (isinstance(fold, int) and not isinstance(fold, bool) and fold >= 0)):
        raise VesaliusError(f"invalid fold '{fold}'", remedy=f"use 0-4 or {', '.join(repr(f) for f in folds)}")
    if settings.epochs is not None and settings.epochs < 1:
        raise VesaliusError(f"epochs must be at least 1, not {settings.epochs}", remedy="give --epochs 1 or more")
    if settings.batch_size is not None and settings.batch_size < 1:
        raise VesaliusError(
            f"the batch size must be at least 1, not {settings.batch_size}", remedy="give --batch-size 1 or more"
        )
    if settings.time_budget_s is not None and not (
        settings.time_budget_s > 0 and math.isfinite(settings.time_budget_s)
    ):
        raise VesaliusError("the time budget must be positive", remedy="e.g. --time-budget 30m")
    if settings.lr is not None and not (settings.lr > 0 and math.isfinite(settings.lr)):
        raise VesaliusError(f"the learning rate must be positive, not {settings.lr}", remedy="e.g. --lr 0.001")
    if not settings.checkpoint_interval_s >= 0:
        raise VesaliusError("the checkpoint interval must be 0 s or more", remedy="e.g. checkpoint_interval_s=300")
    check_device(settings.device)


def _check_adversarial(weight: float, warmup: float, lr: float) -> None:
    """The adversarial training settings: a weight of 0 or more, a warm-up fraction in [0, 1), a positive rate."""
    if not (_is_number(weight) and math.isfinite(weight) and weight >= 0):
        raise VesaliusError(
            f"the adversarial weight must be 0 (off) or more, not {weight!r}", remedy="e.g. --adversarial 0.01"
        )
    if not (_is_number(warmup) and 0 <= warmup < 1):
        raise VesaliusError(
            f"the adversarial warm-up is a fraction of the run in [0, 1), not {warmup!r}",
            remedy="e.g. --adversarial-warmup 0.2",
        )
    if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise VesaliusError(
            f"the discriminator's learning rate must be positive, not {lr!r}", remedy="e.g. --adversarial-lr 0.0002"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _SettingsIO:
    """``to_dict`` / ``from_dict`` (refusing unknown keys) for the settings dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise VesaliusError(f"unknown training settings {sorted(unknown)}", remedy=f"use {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) and k != "augmentation" else v for k, v in d.items()}
        return cls(**values)


@dataclass(frozen=True)
class SegmentationSettings(_SettingsIO):
    """Settings of a segmentation training run.

    Attributes:
        dataset: data set name; ``config``: plan configuration (``"3d"`` or ``"2d"``).
        fold: cross-validation fold (0-4) or ``"all"`` (train on every case, no validation).
        epochs, iterations_per_epoch: the schedule; training stops after ``epochs * iterations_per_epoch``
            iterations or when ``time_budget_s`` is spent, whichever comes first. A budget becomes an iteration
            count after the first epoch (from its pace), so the learning rate and a resumed run depend on the
            iteration alone.
        time_budget_s: wall seconds for the training loop (validation included), or ``None``.
        batch_size, patch_size: default: the plan's.
        optimizer: ``"sgd"`` (Nesterov, momentum 0.99) or ``"adamw"``; ``lr`` and ``weight_decay`` default per
            optimizer; ``schedule``: ``"poly"`` (exponent 0.9) or ``"cosine"``. Both default to the plan's
            ``training`` suggestion.
        precision: ``"auto"`` (bf16 autocast on a CPU with native bf16 or on CUDA, else fp32), ``"fp32"``,
            ``"bf16"``, ``"fp16"`` (CUDA, with gradient scaling).
        val_batches: batches of fixed validation patches for the per-epoch pseudo-Dice.
        seed: the run's seed (model initialisation, patch sampling, augmentation).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``threads``: CPU threads for torch (default: all cores).
        augmentation: overrides of :class:`vesalius.augmentation.AugmentationConfig`; ``mirror_axes`` defaults
            to the plan's.
        checkpoint_interval_s: within an epoch, ``checkpoint_latest.pt`` is also written after this many seconds.
        width: the plan configuration's features per stage are scaled by it (each rounded, at least 1), and the
            trained configuration records the scaled ones, so that every later tool builds the narrower network
            from ``model.json`` alone. A run of another width than 1 has its own run folder
            (:attr:`run_config`), so that it never overwrites the full-width run (pruning:
            :mod:`vesalius.deploy.prune`).
        initial_weights: a checkpoint file whose ``"model"`` state dict the network starts from instead of random
            weights (its shapes must match the network's); a resumed run continues from its own checkpoint instead.
        network: the network family, one of :data:`~vesalius.planning.plan.NETWORK_FAMILIES`
            (:mod:`vesalius.models.families`; default: the plan configuration's). The trained configuration
            records it.
        adversarial: the weight of the network's adversarial loss (0: no adversarial training): a PatchGAN
            discriminator of (image, probabilities) pairs trained in alternation, a training aid that the trained
            model does not contain (:mod:`vesalius.training.adversarial`); ``adversarial_warmup``: the fraction of
            the run's iterations before the term starts (the discriminator trains from the first);
            ``adversarial_lr``: the discriminator's initial learning rate (Adam), following ``schedule``.
        stop_on_plateau: the plateau rule's window W in epochs (0: never stop on a plateau): after at least 3 W
            epochs, stop when the mean smoothed validation pseudo-Dice (without validation: the negated training
            loss) of the last W epochs beats the W before by 0.002 or less (:mod:`vesalius.training.plateau`).
            On by default with W = 10: on the CT patches it ended a 30-minute plan after a third of its iterations
            with a better Dice, and runs of fewer than 30 epochs never stop on it.
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
    checkpoint_interval_s: float = 300.0
    width: float = 1.0
    initial_weights: str | None = None
    network: str | None = None
    adversarial: float = 0.0
    adversarial_warmup: float = 0.2
    adversarial_lr: float = 2e-4
    stop_on_plateau: int = 10

    #: Settings a resumed run may change; everything else must match the saved ``training.json``. ``width`` is not
    #: among them (it is the network, and it names the run folder); nor is ``initial_weights`` (a resumed run
    #: continues from its own checkpoint).
    RESUMABLE = ("epochs", "time_budget_s", "lr", "precision", "device", "threads", "checkpoint_interval_s")

    def __post_init__(self) -> None:
        _check_common(self, ("all",))
        _check_choices(("schedule", self.schedule, SCHEDULES), ("network", self.network, NETWORK_FAMILIES))
        if self.iterations_per_epoch < 1:
            raise VesaliusError(
                f"iterations per epoch must be at least 1, not {self.iterations_per_epoch}",
                remedy="give --iters-per-epoch 1 or more",
            )
        if isinstance(self.width, bool) or not (
            isinstance(self.width, int | float) and math.isfinite(self.width) and self.width > 0
        ):
            raise VesaliusError(f"the width must be a positive number, not {self.width!r}", remedy="e.g. width=0.5")
        if self.initial_weights is not None and not (isinstance(self.initial_weights, str) and self.initial_weights):
            raise VesaliusError(
                f"initial_weights must be the path of a checkpoint file, not {self.initial_weights!r}",
                remedy="give the path as a string",
            )
        _check_adversarial(self.adversarial, self.adversarial_warmup, self.adversarial_lr)
        if isinstance(self.stop_on_plateau, bool) or not (
            isinstance(self.stop_on_plateau, int) and self.stop_on_plateau >= 0
        ):
            raise VesaliusError(
                f"--stop-on-plateau needs a whole number of epochs, not {self.stop_on_plateau!r}",
                remedy="give 0 (never) or a window of epochs, e.g. 10",
            )

    @property
    def run_config(self) -> str:
        """The name of the run's configuration folder (``runs/NAME/RUN_CONFIG/fold_K``): the plan configuration,
        with a network family given other than the residual U-Net appended (``3d_attention``), then the width in
        percent when it is not 1 (``3d_w50``), so that runs of different networks or widths of one fold live side by
        side (a resumed run must be given them to be found) and each is still a fold folder that
        ``find_packages`` and ensembles accept."""
        name = self.config if self.network in (None, "resunet") else f"{self.config}_{self.network}"
        return name if self.width == 1 else f"{name}_w{self.width * 100:g}"

    def scaled_features(self, features: Sequence[int]) -> tuple[int, ...]:
        """``features`` scaled by :attr:`width`, each rounded half up and at least 1."""
        return tuple(max(1, math.floor(f * self.width + 0.5)) for f in features)

    def resolve(self, plan: Plan) -> SegmentationSettings:
        """A copy with every default taken from the plan (its configuration's ``iterations``, ``batch_size``, ...).

        With neither ``epochs`` nor a time budget, the run takes the plan's iterations and its time budget.
        """
        configuration = plan.configuration(self.config)
        optimizer = self.optimizer or plan.training.optimizer
        epochs = self.epochs
        budget = self.time_budget_s
        if epochs is None:
            epochs = max(1, math.ceil(configuration.iterations / self.iterations_per_epoch))
            if budget is None:
                budget = plan.budget.time_budget_s
        patch = tuple(int(p) for p in (self.patch_size or configuration.patch_size))
        if len(patch) != configuration.spatial_dims:
            raise VesaliusError(
                f"patch size {list(patch)} for a {configuration.spatial_dims}D configuration",
                remedy=f"give {configuration.spatial_dims} sizes",
            )
        divisors = configuration.patch_divisors
        if any(p % d for p, d in zip(patch, divisors, strict=True)):
            raise VesaliusError(
                f"patch size {list(patch)} does not fit the network, which halves each axis {list(divisors)} times "
                "over",
                remedy=f"give multiples of {list(divisors)}",
            )
        return replace(
            self,
            epochs=epochs,
            time_budget_s=budget,
            batch_size=self.batch_size or configuration.batch_size,
            patch_size=patch,
            optimizer=optimizer,
            network=self.network or configuration.network,
            schedule=self.schedule or plan.training.schedule,
            lr=self.lr if self.lr is not None else DEFAULT_LR[optimizer],
            weight_decay=self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[optimizer],
        )


@dataclass(frozen=True)
class ClassificationSettings(_SettingsIO):
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
        checkpoint_interval_s: within an epoch, ``checkpoint_latest.pt`` is also written after this many seconds.
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
    checkpoint_interval_s: float = 300.0

    RESUMABLE = ("epochs", "time_budget_s", "precision", "device", "threads", "checkpoint_interval_s")

    def __post_init__(self) -> None:
        _check_common(self, ("auto", "official", "all"))
        _check_choices(
            ("network", self.network, ARCHITECTURES),
            ("schedule", self.schedule, CLASSIFICATION_SCHEDULES),
            ("balance", self.balance, BALANCES),
        )
        if self.early_stopping is not None and self.early_stopping < 0:
            raise VesaliusError(
                f"early stopping needs 0 or more epochs, not {self.early_stopping}",
                remedy="give --early-stopping 0 (never) or more",
            )

    def resolve(self, plan: ClassificationPlan, fold: int | str) -> ClassificationSettings:
        """A copy with the fold resolved and every ``None`` setting taken from the plan."""
        optimizer = self.optimizer or plan.optimizer
        same_optimizer = optimizer == plan.optimizer
        return replace(
            self,
            fold=fold,
            network=self.network or plan.network.name,
            epochs=self.epochs or plan.epochs,
            time_budget_s=self.time_budget_s or plan.budget.time_budget_s,
            batch_size=self.batch_size or plan.batch_size,
            optimizer=optimizer,
            lr=self.lr if self.lr is not None else (plan.lr if same_optimizer else _rule("lr", optimizer)),
            weight_decay=self.weight_decay
            if self.weight_decay is not None
            else (plan.weight_decay if same_optimizer else _rule("weight_decay", optimizer)),
            schedule=self.schedule or plan.schedule,
            balance=self.balance or plan.balance,
            label_smoothing=self.label_smoothing if self.label_smoothing is not None else plan.label_smoothing,
            early_stopping=self.early_stopping if self.early_stopping is not None else plan.early_stopping_patience,
        )


Settings = SegmentationSettings | ClassificationSettings


def _rule(key: str, optimizer: str) -> float:
    from vesalius.planning.classification import load_classification_rules

    return float(load_classification_rules()[key][optimizer])


def resumed_settings(given: Settings, saved: dict[str, Any]) -> Settings:
    """The ``saved`` settings (``training.json``) with the resumable ones that ``given`` changes.

    A setting left at its default was not given (the CLI passes every default), so the saved value stands.
    """
    kind = type(given)
    previous = kind.from_dict(saved)
    given_values, default = given.to_dict(), kind(given.dataset).to_dict()
    changes = {k: getattr(given, k) for k in kind.RESUMABLE if given_values[k] != default[k]}
    return replace(previous, **changes)
