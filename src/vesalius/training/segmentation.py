"""Segmentation training: one fold of a planned, preprocessed data set, to a trained model.

The recipe (nnU-Net's, sized for the budget): each step draws a batch of patches (a third centred on foreground)
from the memory-mapped preprocessed cases, augments it on the training device, and takes one step on Dice +
cross-entropy with deep supervision (:class:`vesalius.training.losses.DiceCELoss`, MONAI's numbers with the Dice
pooled over the ranks of a distributed run, inside MONAI's ``DeepSupervisionLoss``, weights halving per level).
After each epoch a pseudo-Dice per class on fixed validation patches; the best epoch is the one where its
exponential moving average improves. The loop itself (optimiser, precision, checkpoints, resume, logs, budget) is
:class:`vesalius.training.loop.TrainingLoop`; :func:`vesalius.evaluation.validation.validate_fold` then scores the
fold on the original grids.

The run saves its trained configuration (:class:`vesalius.model_package.TrainedSegmentation`): the plan's
configuration with the patch, batch and mirror axes this run trained with, its features scaled by the run's
``width``, its network family (:mod:`vesalius.models.families`), and its precision, so that validation and
prediction use exactly those. A run may start from given weights (``initial_weights``: fine-tuning, e.g. a pruned
network, :mod:`vesalius.deploy.prune`) instead of random ones. With ``adversarial`` above 0 a discriminator
trains alongside as an aid (:mod:`vesalius.training.adversarial`); the trained model does not contain it.

Under ``torchrun`` (or ``vesalius train --nproc N``) the run spreads over the processes
(:mod:`vesalius.training.distributed`): each takes its rows of the plan's batch and its share of the validation
patches; adversarial training runs in one process only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.augmentation.sampling import PatchSampler
from vesalius.augmentation.transforms import AugmentationConfig, Augmenter
from vesalius.data.dataset import Dataset
from vesalius.data.splits import load_or_create_splits
from vesalius.errors import VesaliusError
from vesalius.model_package import ModelPackage, TrainedSegmentation, versions
from vesalius.models import build_network
from vesalius.planning.plan import Plan
from vesalius.planning.planner import load_plan
from vesalius.training.adversarial import Adversary, discriminator_layers
from vesalius.training.distributed import Distributed
from vesalius.training.loop import EpochCallback, TaskHead, TrainingLoop, TrainingResult
from vesalius.training.losses import DiceCELoss
from vesalius.training.plateau import Plateau
from vesalius.training.settings import SegmentationSettings, resumed_settings
from vesalius.workspace import Workspace

__all__ = ["SegmentationHead", "load_initial_weights", "train_segmentation", "trained_configuration"]

EMA_WEIGHT = 0.9


def trained_configuration(plan: Plan, settings: SegmentationSettings) -> TrainedSegmentation:
    """What a run with resolved ``settings`` trains: the plan's configuration with the run's patch, batch, mirror
    axes, features (scaled by its width) and network family, and the run's precision."""
    configuration = plan.configuration(settings.config)
    augmentation = dict(settings.augmentation or {})
    mirror = tuple(int(a) for a in augmentation.get("mirror_axes", configuration.mirror_axes))
    return TrainedSegmentation(
        dataset=plan.dataset,
        config=settings.config,
        channels=plan.channels,
        labels=dict(plan.labels),
        normalization=plan.normalization,
        configuration=replace(
            configuration,
            patch_size=tuple(settings.patch_size or configuration.patch_size),
            batch_size=int(settings.batch_size or configuration.batch_size),
            mirror_axes=mirror,
            features=settings.scaled_features(configuration.features),
            network=settings.network or configuration.network,
        ),
        precision=settings.precision,  # type: ignore[arg-type]
        versions=versions(),
        filters=plan.filters,
    )


class SegmentationHead(TaskHead):
    """Patches, Dice + cross-entropy with deep supervision, and the pseudo-Dice of fixed validation patches."""

    gradient_clip = 12.0
    sgd_momentum = 0.99
    final = "last"

    def __init__(
        self,
        trained: TrainedSegmentation,
        settings: SegmentationSettings,
        folder: Path,
        split: dict[str, list[str]],
        initial_state: dict[str, Any] | None = None,
        distributed: Distributed = Distributed(),
    ) -> None:
        from monai.losses import DeepSupervisionLoss

        self.trained = trained
        self.distributed = distributed
        self.initial_state = initial_state
        self.settings = settings
        self.dataset = settings.dataset
        configuration = trained.configuration
        patch = configuration.patch_size
        self.spatial_dims = len(patch)
        self.iterations_per_epoch = settings.iterations_per_epoch
        self.class_names = trained.class_names
        self.num_classes = len(trained.labels)
        self.dice_ce = DiceCELoss()  # validation: each batch is whole on one rank
        pool = distributed.sum_with_gradient if distributed.enabled else None
        self.deep_supervision = DeepSupervisionLoss(DiceCELoss(pool), weight_mode="exp")
        augmentation = {**(settings.augmentation or {}), "mirror_axes": configuration.mirror_axes}
        self.augmenter = Augmenter(AugmentationConfig.from_dict(augmentation), patch_size=patch)
        batch = configuration.batch_size
        self.rows = distributed.rows(batch)
        self.sampler = PatchSampler.from_folder(
            folder,
            split["train"],
            patch,
            batch,
            seed=settings.seed,
            extra=self.augmenter.config.margin(patch),
            slice_axis=configuration.slice_axis,
        )
        self.has_validation = bool(split["val"]) and settings.val_batches > 0
        self.val_batches: list[tuple[np.ndarray, np.ndarray]] = []  # this rank's share
        if self.has_validation:
            val_sampler = PatchSampler.from_folder(
                folder, split["val"], patch, batch, seed=settings.seed + 1, slice_axis=configuration.slice_axis
            )
            self.val_batches = [val_sampler.sample(i) for i in distributed.share(range(settings.val_batches))]
        self.ema_dice = float("nan")
        self.best_ema = -math.inf
        self.plateau = Plateau(settings.stop_on_plateau)

    def build_model(self) -> nn.Module:
        """The network of the trained configuration, with the initial weights where the run was given some."""
        network = build_network(self.trained.configuration, len(self.trained.channels), self.num_classes)
        if self.initial_state is not None:
            network.load_state_dict(self.initial_state)
        return network

    def build_adversary(self, device: torch.device, dtype: torch.dtype | None) -> Adversary | None:
        """The discriminator where the run's ``adversarial`` weight is above 0: as wide at its first layer as the
        network's first stage, on (image, probabilities) pairs of the training patch."""
        settings, configuration = self.settings, self.trained.configuration
        if settings.adversarial <= 0:
            return None
        return Adversary(
            spatial_dims=self.spatial_dims,
            patch_size=configuration.patch_size,
            image_channels=len(self.trained.channels),
            num_classes=self.num_classes,
            features=configuration.features[0],
            weight=settings.adversarial,
            warmup=settings.adversarial_warmup,
            lr=settings.adversarial_lr,
            schedule=str(settings.schedule),
            seed=settings.seed,
            device=device,
            dtype=dtype,
        )

    @staticmethod
    def _to_device(images: np.ndarray, segs: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images).to(device, non_blocking=True)
        y = torch.from_numpy(segs.astype(np.int64, copy=False)).to(device, non_blocking=True)
        return x, y

    def batch(self, iteration: int, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._to_device(*self.sampler.sample(iteration, self.rows), device)
        return self.augmenter(x, y, self.distributed.augmentation_seed(self.settings.seed, iteration))

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        outputs = [o.float() for o in outputs] if isinstance(outputs, list) else outputs.float()
        return self.deep_supervision(outputs, targets.float())

    def validate(self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
        """Loss and pseudo-Dice per class (true/false positives and negatives pooled over all patches, and over the
        ranks, which share the patches)."""
        if not self.has_validation:
            return {}
        k = self.num_classes
        counts = torch.zeros(3, k, dtype=torch.float64)  # true positives, false positives, false negatives
        loss = torch.zeros(2, dtype=torch.float64)  # sum of the batches' losses, batches
        for images, segs in self.val_batches:
            x, y = self._to_device(images, segs, device)
            logits = forward(x).float()
            loss += torch.tensor([float(self.dice_ce(logits, y.float())), 1.0], dtype=torch.float64)
            pred = logits.argmax(1)
            ref = y[:, 0]
            for c in range(1, k):
                p, r = pred == c, ref == c
                counts[:, c] += torch.tensor([int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())])
        totals = self.distributed.sum(torch.cat([counts.flatten(), loss])).numpy()
        tp, fp, fn = totals[: 3 * k].reshape(3, k)
        row = {"val_loss": float(totals[-2] / totals[-1])}
        dice = []
        for c, name in enumerate(self.class_names, start=1):
            denominator = 2 * tp[c] + fp[c] + fn[c]
            value = float(2 * tp[c] / denominator) if denominator else float("nan")
            row[f"dice_{name}"] = value
            dice.append(value)
        row["dice_mean"] = float(np.nanmean(dice)) if not all(math.isnan(d) for d in dice) else float("nan")
        return row

    def judge(self, row: dict[str, float]) -> bool:
        """Best when the moving average of the mean pseudo-Dice (added to the row as ``dice_ema``) improves."""
        if "dice_mean" in row and not math.isnan(row["dice_mean"]):
            ema = row["dice_mean"] if math.isnan(self.ema_dice) else self.ema_dice
            self.ema_dice = EMA_WEIGHT * ema + (1 - EMA_WEIGHT) * row["dice_mean"]
            row["dice_ema"] = self.ema_dice
        self.plateau.update(self.ema_dice if self.has_validation else -row.get("train_loss", float("nan")))
        if not math.isnan(self.ema_dice) and self.ema_dice > self.best_ema:
            self.best_ema = self.ema_dice
            return True
        return False

    def stop_reason(self) -> str | None:
        return "plateau" if self.plateau.converged else None

    def best_score(self) -> float:
        return self.best_ema if self.best_ema > -math.inf else float("nan")

    def state(self) -> dict[str, Any]:
        return {"ema_dice": self.ema_dice, "best_ema": self.best_ema, "plateau": self.plateau.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.ema_dice = float(state["ema_dice"])
        self.best_ema = float(state["best_ema"])
        if "plateau" in state:  # checkpoints of a Vesalius without the rule: it starts afresh
            self.plateau.load_state(state["plateau"])


def load_initial_weights(path: str | Path, trained: TrainedSegmentation) -> dict[str, Any]:
    """The ``"model"`` state dict of the checkpoint file ``path``, checked against the network of ``trained``.

    Checked here, before any preprocessing or training, so that weights of another configuration or width are a
    one-line error rather than a stack trace from ``load_state_dict`` after minutes of preparation.
    """
    from vesalius.model_package import load_checkpoint

    path = Path(path)
    state = load_checkpoint(path)
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise VesaliusError("not a training checkpoint (no 'model' state dict)", path, "give a checkpoint_*.pt file")
    expected = build_network(trained.configuration, len(trained.channels), len(trained.labels)).state_dict()
    for name, tensor in expected.items():
        given = weights.get(name)
        if given is None or tuple(given.shape) != tuple(tensor.shape):
            found = "missing" if given is None else f"of shape {list(given.shape)}"
            raise VesaliusError(
                f"the initial weights do not fit the network: '{name}' is {found}, the network's is "
                f"{list(tensor.shape)}",
                path,
                "give weights of a network of this configuration and width (features "
                f"{list(trained.configuration.features)})",
            )
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise VesaliusError(
            f"the initial weights hold '{unexpected[0]}', which the network lacks",
            path,
            "give weights of a network of this configuration",
        )
    return weights


def _prepare_data(settings: SegmentationSettings, ws: Workspace) -> tuple[Path, dict[str, list[str]]]:
    """The preprocessed folder (preprocessing first what is missing or stale) and the fold's split."""
    from vesalius.preprocessing.pipeline import preprocess_dataset

    dataset = Dataset.load(ws.dataset_dir(settings.dataset))
    if dataset.task != "segmentation":
        raise VesaliusError(
            f"'{settings.dataset}' is a {dataset.task} data set", remedy="train segmentation data sets here"
        )
    case_ids = [c.case_id for c in dataset.cases]
    folder = preprocess_dataset(settings.dataset, settings.config, ws)  # only what is missing or stale
    splits = load_or_create_splits(ws.splits_path(settings.dataset), case_ids)
    if settings.fold == "all":
        return folder, {"train": sorted(case_ids), "val": []}
    if not 0 <= int(settings.fold) < len(splits):
        raise VesaliusError(f"fold {settings.fold} does not exist", remedy=f"use 0-{len(splits) - 1} or 'all'")
    return folder, splits[int(settings.fold)]


def train_segmentation(
    settings: SegmentationSettings,
    workspace: str | Path | Workspace | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = False,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainingResult:
    """Train one fold (or ``"all"``) of a planned segmentation data set; see the module docstring.

    The run folder is ``runs/NAME/CONFIG/fold_K``, ``runs/NAME/CONFIG_NETWORK/fold_K`` for a network family other
    than the residual U-Net, with ``_wXX`` for a width other than 1 (:attr:`SegmentationSettings.run_config`); a
    resumed run must be given the network and width to be found.

    Args:
        settings: the settings; ``None`` fields come from the plan.
        workspace: the workspace (default ``$VESALIUS_HOME``).
        resume: continue the run in the run folder from its ``checkpoint_latest.pt`` with its saved settings
            (only :attr:`SegmentationSettings.RESUMABLE` may be changed).
        force: start over in a run folder that already holds a run.
        show_progress: draw a progress bar (loss, pseudo-Dice, time left) on the terminal.
        callbacks: called with each epoch's log row after its checkpoint is written.
    """
    distributed = Distributed.from_environment()
    with distributed.session(settings.device):
        return _train(settings, Workspace.resolve(workspace), distributed, resume, force, show_progress, callbacks)


def _train(
    settings: SegmentationSettings,
    ws: Workspace,
    distributed: Distributed,
    resume: bool,
    force: bool,
    show_progress: bool,
    callbacks: Sequence[EpochCallback],
) -> TrainingResult:
    """:func:`train_segmentation` in one process of the run (rank 0 prepares and writes; see the module docstring)."""
    package = ModelPackage(ws.run_dir(settings.dataset, settings.run_config, settings.fold))
    plan = load_plan(settings.dataset, ws)
    if resume:
        settings = resumed_settings(settings, package.saved_settings())  # type: ignore[assignment]
        if package.plan != plan:
            raise VesaliusError(
                f"'{settings.dataset}' was planned again since this run started",
                package.root,
                "start the run over with --force (or restore the plan it was trained from, its plan.json)",
            )
    settings = settings.resolve(plan)
    trained = trained_configuration(plan, settings)
    if settings.adversarial > 0:
        if distributed.enabled:
            raise VesaliusError(
                "adversarial training runs in one process", remedy="drop --adversarial, or train in one process"
            )
        discriminator_layers(trained.configuration.patch_size)  # a patch too thin for it: refused before any work
    distributed.rows(trained.configuration.batch_size)  # a batch that does not split: refused before any work
    writer = distributed.is_writer
    with distributed.writer_first():
        if not resume and writer:
            package.refuse_to_overwrite(force=force)  # before minutes of preprocessing
        initial = None
        if settings.initial_weights and writer and not (resume and package.checkpoint_path("latest").is_file()):
            # read before the run folder is emptied: the file may lie in it (DDP gives the other ranks rank 0's)
            initial = load_initial_weights(settings.initial_weights, trained)
        folder, split = _prepare_data(settings, ws)
        state = package.prepare(resume=resume, force=force) if writer or resume else None
    torch.set_num_threads(distributed.threads(settings.threads))
    head = SegmentationHead(trained, settings, folder, split, initial if state is None else None, distributed)
    loop = TrainingLoop(head, settings, package, state)
    if writer:
        package.write_setup(plan, trained, settings.to_dict(), split, ws.fingerprint_path(settings.dataset))
    return loop.run(show_progress, callbacks)
