"""Segmentation training: one fold of a planned, preprocessed data set, to a checkpointed model.

The loop (nnU-Net's recipe, sized for the budget): each iteration draws a batch of patches (a third centred on
foreground) from the memory-mapped preprocessed cases, augments it on the training device, and takes one step on
Dice + cross-entropy with deep supervision (MONAI's ``DiceCELoss`` inside ``DeepSupervisionLoss``, weights halving
per level). SGD with Nesterov momentum 0.99 and poly decay by default, AdamW as an option; gradients clipped at
norm 12. The learning rate follows the larger of iteration progress and time-budget progress
(:mod:`vesalius.training.schedule`). After each epoch: a pseudo-Dice per class on fixed validation patches, a log
row (CSV, TensorBoard, ``progress.png``) and an atomic ``checkpoint_latest.pt`` (and ``checkpoint_best.pt`` when
the exponential moving average of the mean pseudo-Dice improves). At the end: ``checkpoint_final.pt``
(:func:`vesalius.evaluation.cross_validation.validate_fold` then scores the fold on the original grids).

Determinism: the batch of iteration ``i`` depends only on ``(seed, i)`` (patch sampling and augmentation), and the
model's initial weights on ``seed``. A run resumed from ``checkpoint_latest.pt`` therefore continues exactly as
the uninterrupted run would have, except where the learning rate follows a wall-clock budget.

Precision: bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX) with ``channels_last`` memory format (about
2.5x faster than fp32 on 2 Zen 4 cores, ``benchmarks/network_speed.py``), bf16 on CUDA where supported, else fp16
with gradient scaling; the loss is computed in fp32.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vesalius.augmentation.sampling import PatchSampler
from vesalius.augmentation.transforms import AugmentationConfig, Augmenter
from vesalius.data.dataset import Dataset, write_json_atomic
from vesalius.data.splits import load_or_create_splits
from vesalius.errors import VesaliusError
from vesalius.models import build_network
from vesalius.planning.planner import load_plan
from vesalius.precision import autocast_dtype, fp32_small_convolutions, memory_format
from vesalius.training.checkpoint import check_run_folder, open_run_folder, save_checkpoint
from vesalius.training.config import TrainingConfig
from vesalius.training.logs import TrainingLog
from vesalius.training.schedule import learning_rate, progress
from vesalius.workspace import Workspace

__all__ = ["ProgressBar", "TrainingResult", "resumed_config", "step_seed", "train_segmentation"]

#: Settings a resumed run may change; everything else must match the saved ``training.json``.
RESUMABLE_OVERRIDES = ("epochs", "time_budget_s", "lr", "precision", "device", "threads")
EMA_WEIGHT = 0.9
GRADIENT_CLIP = 12.0

EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class TrainingResult:
    """What a finished run produced."""

    run_dir: Path
    epochs: int
    iterations: int
    elapsed_s: float
    best_pseudo_dice: float
    validation: dict[str, Any] | None = None


def step_seed(seed: int, iteration: int) -> int:
    """The seed of training step ``iteration`` of a run seeded with ``seed`` (batch sampling, augmentation)."""
    return int(np.random.SeedSequence((seed, iteration)).generate_state(1)[0])


class _Run:
    """State of one training run (built by :func:`train_segmentation`)."""

    def __init__(self, cfg: TrainingConfig, plan: dict[str, Any], folder: Path, run_dir: Path, splits: dict) -> None:
        self.cfg = cfg
        self.plan = plan
        self.plan_config = plan["configurations"][cfg.config]
        self.folder = folder
        self.run_dir = run_dir
        self.train_ids: list[str] = splits["train"]
        self.val_ids: list[str] = splits["val"]
        self.device = torch.device(cfg.device)
        self.dtype = autocast_dtype(cfg.precision, self.device)
        self.spatial_dims = len(cfg.patch_size or ())
        self.class_names = [plan["labels"][k] for k in sorted(plan["labels"], key=int) if int(k) != 0]
        self.num_classes = len(plan["labels"])
        torch.manual_seed(cfg.seed)
        self.model = build_network(self.plan_config, len(plan["channels"]), self.num_classes).to(self.device)
        self.memory_format = memory_format(self.dtype, self.device, self.spatial_dims)
        self.model = self.model.to(memory_format=self.memory_format)
        if self.dtype is not None and self.device.type == "cpu":
            fp32_small_convolutions(self.model)  # oneDNN's bf16 weight gradients are wrong there (NaN losses)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True, weight_decay=cfg.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        from monai.losses import DeepSupervisionLoss, DiceCELoss

        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        self.loss = DeepSupervisionLoss(self.dice_ce, weight_mode="exp")
        aug = dict(cfg.augmentation or {})
        aug.setdefault("mirror_axes", tuple(self.plan_config.get("mirror_axes", range(self.spatial_dims))))
        self.augmenter = Augmenter(AugmentationConfig.from_dict(aug), patch_size=cfg.patch_size)
        slice_axis = self.plan_config.get("slice_axis")
        self.sampler = PatchSampler.from_folder(
            folder,
            self.train_ids,
            cfg.patch_size,
            cfg.batch_size,
            seed=cfg.seed,
            extra=self.augmenter.config.margin(cfg.patch_size),
            slice_axis=slice_axis,
        )
        self.val_batches: list[tuple[np.ndarray, np.ndarray]] = []
        if self.val_ids and cfg.val_batches > 0:
            val_sampler = PatchSampler.from_folder(
                folder, self.val_ids, cfg.patch_size, cfg.batch_size, seed=cfg.seed + 1, slice_axis=slice_axis
            )
            self.val_batches = [val_sampler.sample(i) for i in range(cfg.val_batches)]
        self.iteration = 0
        self.elapsed_s = 0.0
        self.rows: list[dict[str, float]] = []
        self.ema_dice = float("nan")
        self.best_ema = -math.inf

    # -- state ---------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "rows": self.rows,
            "ema_dice": self.ema_dice,
            "best_ema": self.best_ema,
            "training": self.cfg.to_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.elapsed_s = float(state["elapsed_s"])
        self.rows = list(state["rows"])
        self.ema_dice = float(state["ema_dice"])
        self.best_ema = float(state["best_ema"])

    # -- one step ------------------------------------------------------------------------------------------------
    def _to_device(self, images: np.ndarray, segs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images).to(self.device, non_blocking=True)
        y = torch.from_numpy(segs.astype(np.int64, copy=False)).to(self.device, non_blocking=True)
        return x, y

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def train_step(self, iteration: int, lr: float) -> float:
        images, segs = self.sampler.sample(iteration)
        x, y = self._to_device(images, segs)
        x, y = self.augmenter(x, y, step_seed(self.cfg.seed, iteration))
        x = x.contiguous(memory_format=self.memory_format)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            outputs = self.model(x)
        outputs = [o.float() for o in outputs] if isinstance(outputs, list) else outputs.float()
        loss = self.loss(outputs, y.float())
        if not torch.isfinite(loss):
            self._report_non_finite(loss, x, iteration)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _report_non_finite(self, loss: torch.Tensor, x: torch.Tensor, iteration: int) -> None:
        if not torch.isfinite(x).all():
            cause = (
                f"the input batch holds NaN/Inf values: check the images ('vesalius verify {self.cfg.dataset}') "
                f"and preprocess again"
            )
        else:
            cause = (
                f"the learning rate {self.cfg.lr:g} may be too high for this data (try --lr {self.cfg.lr / 10:g})"
                + (f" or {self.dtype} overflowed (try --precision fp32)" if self.dtype is not None else "")
            )
        raise VesaliusError(
            f"the training loss became {float(loss.detach()):g} at iteration {iteration}",
            self.run_dir / "checkpoint_latest.pt",
            f"{cause}; the last complete epoch is saved: continue with --resume",
        )

    # -- validation ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Loss and pseudo-Dice per class (true/false positives and negatives pooled over all patches)."""
        if not self.val_batches:
            return {}
        self.model.eval()
        k = self.num_classes
        tp, fp, fn = np.zeros(k), np.zeros(k), np.zeros(k)
        losses = []
        for images, segs in self.val_batches:
            x, y = self._to_device(images, segs)
            with self._autocast():
                logits = self.model(x.contiguous(memory_format=self.memory_format))
            logits = logits.float()
            losses.append(float(self.dice_ce(logits, y.float())))
            pred = logits.argmax(1)
            ref = y[:, 0]
            for c in range(1, k):
                p, r = pred == c, ref == c
                tp[c] += int((p & r).sum())
                fp[c] += int((p & ~r).sum())
                fn[c] += int((~p & r).sum())
        self.model.train()
        row = {"val_loss": float(np.mean(losses))}
        dice = []
        for c, name in enumerate(self.class_names, start=1):
            denominator = 2 * tp[c] + fp[c] + fn[c]
            value = float(2 * tp[c] / denominator) if denominator else float("nan")
            row[f"dice_{name}"] = value
            dice.append(value)
        row["dice_mean"] = float(np.nanmean(dice)) if not all(math.isnan(d) for d in dice) else float("nan")
        return row


def _prepare_data(cfg: TrainingConfig, ws: Workspace, plan: dict[str, Any]) -> tuple[Path, dict[str, list[str]]]:
    """The preprocessed folder (preprocessing first what is missing or stale) and the fold's split."""
    from vesalius.preprocessing.pipeline import preprocess_dataset

    dataset = Dataset.load(ws.dataset_dir(cfg.dataset))
    if dataset.task != "segmentation":
        raise VesaliusError(f"'{cfg.dataset}' is a {dataset.task} data set", remedy="train segmentation data sets here")
    case_ids = [c.case_id for c in dataset.cases]
    folder = preprocess_dataset(cfg.dataset, cfg.config, ws)  # only what is missing or stale
    splits = load_or_create_splits(ws.root / "preprocessed" / cfg.dataset / "splits.json", case_ids)
    if cfg.fold == "all":
        return folder, {"train": sorted(case_ids), "val": []}
    if not 0 <= int(cfg.fold) < len(splits):
        raise VesaliusError(f"fold {cfg.fold} does not exist", remedy=f"use 0-{len(splits) - 1} or 'all'")
    return folder, splits[int(cfg.fold)]


def resumed_config(cfg: Any, run_dir: Path, resumable: Sequence[str] = RESUMABLE_OVERRIDES) -> Any:
    """The settings saved in ``run_dir/training.json``, with the ``resumable`` ones that ``cfg`` changes.

    ``cfg`` is a settings dataclass with ``dataset``, ``to_dict`` and ``from_dict`` (:class:`TrainingConfig` or a
    classification config); the result has its type.
    """
    path = run_dir / "training.json"
    if not path.is_file():
        raise VesaliusError("nothing to resume", run_dir, "start the run without --resume")
    kind = type(cfg)
    saved = kind.from_dict(json.loads(path.read_text())["training"])
    given, default = cfg.to_dict(), kind(cfg.dataset).to_dict()
    # A setting left at its default was not given: the saved value stands (the CLI passes every default).
    changes = {k: given[k] for k in resumable if given[k] != default[k]}
    return replace(saved, **changes)


def train_segmentation(
    cfg: TrainingConfig,
    workspace: str | Path | Workspace | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = False,
    callbacks: Sequence[EpochCallback] = (),
) -> TrainingResult:
    """Train one fold (or ``"all"``) of a planned segmentation data set; see the module docstring.

    Args:
        cfg: the settings; ``None`` fields come from the plan.
        workspace: the workspace (default ``$VESALIUS_HOME``).
        resume: continue the run in the run folder from its ``checkpoint_latest.pt`` with its saved settings
            (only :data:`RESUMABLE_OVERRIDES` may be changed).
        force: start over in a run folder that already holds a run.
        show_progress: draw a progress bar (loss, pseudo-Dice, time left) on the terminal.
        callbacks: called with each epoch's log row after its checkpoint is written.
    """
    ws = Workspace.resolve(workspace)
    run_dir = ws.run_dir(cfg.dataset, cfg.config, cfg.fold)
    plan = load_plan(cfg.dataset, ws)
    if resume:
        cfg = resumed_config(cfg, run_dir)
    check_run_folder(run_dir, resume=resume, force=force)
    cfg = cfg.resolve(plan)
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    folder, split = _prepare_data(cfg, ws, plan)
    state = open_run_folder(run_dir, resume=resume)
    run = _Run(cfg, plan, folder, run_dir, split)
    if state is not None:
        run.load_state(state)
    write_json_atomic(run_dir / "plan.json", plan)
    write_json_atomic(
        run_dir / "training.json",
        {
            "training": cfg.to_dict(),
            "plan_configuration": run.plan_config,
            "split": split,
            "versions": {"torch": torch.__version__},
        },
    )
    log = TrainingLog(run_dir, run.class_names, run.rows)
    try:
        _loop(run, log, show_progress, callbacks)
    finally:
        log.close()
    save_checkpoint(run_dir / "checkpoint_final.pt", {"model": run.model.state_dict(), "training": cfg.to_dict()})
    return TrainingResult(
        run_dir=run_dir,
        epochs=len(run.rows),
        iterations=run.iteration,
        elapsed_s=run.elapsed_s,
        best_pseudo_dice=run.best_ema,
    )


def _loop(run: _Run, log: TrainingLog, show_progress: bool, callbacks: Sequence[EpochCallback]) -> None:
    cfg = run.cfg
    total = cfg.total_iterations
    budget = cfg.time_budget_s
    bar = ProgressBar(total, budget, enabled=show_progress)
    bar.update(run.iteration, run.elapsed_s, run.rows[-1] if run.rows else {})
    with bar:
        while run.iteration < total and not (budget and run.elapsed_s >= budget):
            epoch = run.iteration // cfg.iterations_per_epoch
            epoch_end = min((epoch + 1) * cfg.iterations_per_epoch, total)
            start, elapsed0 = time.perf_counter(), run.elapsed_s
            losses = []
            lr = cfg.lr
            while run.iteration < epoch_end:
                elapsed = elapsed0 + time.perf_counter() - start
                if budget and elapsed >= budget:
                    break
                lr = learning_rate(cfg.lr, progress(run.iteration, total, elapsed, budget), cfg.schedule)
                losses.append(run.train_step(run.iteration, lr))
                run.iteration += 1
                run.elapsed_s = elapsed0 + time.perf_counter() - start
                bar.update(run.iteration, run.elapsed_s, {"train_loss": losses[-1]})
            row: dict[str, float] = {
                "epoch": epoch,
                "iteration": run.iteration,
                "elapsed_s": 0.0,
                "lr": lr,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
            }
            row.update(run.validate())
            run.elapsed_s = elapsed0 + time.perf_counter() - start
            row["elapsed_s"] = round(run.elapsed_s, 3)
            if "dice_mean" in row and not math.isnan(row["dice_mean"]):
                ema = row["dice_mean"] if math.isnan(run.ema_dice) else run.ema_dice
                run.ema_dice = EMA_WEIGHT * ema + (1 - EMA_WEIGHT) * row["dice_mean"]
                row["dice_ema"] = run.ema_dice
            run.rows.append(row)
            log.add(row)
            if not math.isnan(run.ema_dice) and run.ema_dice > run.best_ema:
                run.best_ema = run.ema_dice
                save_checkpoint(run.run_dir / "checkpoint_best.pt", {"model": run.model.state_dict()})
            save_checkpoint(run.run_dir / "checkpoint_latest.pt", run.state())
            bar.update(run.iteration, run.elapsed_s, row)
            for callback in callbacks:
                callback(row)


class ProgressBar:
    """A Rich progress bar over iterations with the latest loss, a validation figure and the time left.

    ``metric`` is the log-row key shown under the name ``metric_label`` (default: the mean pseudo-Dice).
    """

    def __init__(
        self,
        total: int,
        budget: float | None,
        enabled: bool,
        metric: str = "dice_mean",
        metric_label: str = "Dice",
    ) -> None:
        self.total = total
        self.budget = budget
        self.metric = metric
        self.dice = float("nan")
        self.progress: Any = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("it {task.completed}/{task.total}  loss {task.fields[loss]}"),
                TextColumn(f"{metric_label} {{task.fields[dice]}}"),
                TextColumn("left {task.fields[left]}"),
            )
            self.task = self.progress.add_task("train", total=total, loss="-", dice="-", left="-")

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def update(self, iteration: int, elapsed_s: float, row: dict[str, float]) -> None:
        if self.progress is None:
            return
        self.dice = row.get(self.metric, self.dice)
        left = (self.total - iteration) * elapsed_s / iteration if iteration else float("inf")
        if self.budget:
            left = min(left, max(0.0, self.budget - elapsed_s))
        loss = row.get("train_loss")
        self.progress.update(
            self.task,
            completed=iteration,
            loss="-" if loss is None else f"{loss:.3f}",
            dice="-" if math.isnan(self.dice) else f"{self.dice:.3f}",
            left="-" if math.isinf(left) else time.strftime("%H:%M:%S", time.gmtime(left)),
        )
