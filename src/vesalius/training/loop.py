"""The training loop both tasks share: epochs of steps, validation, checkpoints, resume, logs, progress, budget.

A task contributes a :class:`TaskHead`: its network, how to draw the batch of a step, its loss, its validation
figures and which epoch is best. Everything else lives here, once:

* **precision**: bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX) with ``channels_last`` memory format
  (about 2.5x faster than fp32 on 2 Zen 4 cores, ``benchmarks/network_speed.py``), bf16 on CUDA where supported,
  else fp16 with gradient scaling (:mod:`vesalius.precision`); the loss is computed in fp32;
* **optimiser**: SGD with Nesterov momentum (the head's momentum) or AdamW; gradients clipped at the head's norm;
  the learning rate follows the fraction of the run's iterations done (:mod:`vesalius.training.schedule`);
* **time budget**: turned into an iteration count once, after the first epoch (its pace, validation included),
  and saved; from then on the schedule and the end depend on the iteration alone (a machine that turns much slower
  still stops at :data:`HARD_STOP` times the budget). A budget spent within the first epoch ends the run there;
* **non-finite losses** stop the run with their likely cause (bad input values, learning rate, precision);
* **after each epoch**: the head's validation row, the log (``log.csv``, TensorBoard, ``progress.png``),
  ``checkpoint_latest.pt`` (everything a resumed run needs) and ``checkpoint_best.pt`` when the head says the epoch
  is the best so far; within an epoch, ``checkpoint_latest.pt`` every ``checkpoint_interval_s`` too, so a kill
  loses minutes, not an epoch; at the end ``checkpoint_final.pt`` (the last or the best weights, as the head says);
* **within an epoch**: the mean training loss every few iterations (``log_iterations.csv``,
  :class:`~vesalius.training.logs.IterationLog`), so that a run of a few long epochs still has a learning curve;
* **stopping**: after the epochs (or iterations), when the time budget is spent (also mid-epoch), or when the
  head says so (early stopping);
* **adversarial training** (segmentation, ``--adversarial``): the head's
  :class:`~vesalius.training.adversarial.Adversary` adds its term to the step's loss and takes a discriminator step
  after the network's; the discriminator and its optimiser are in ``checkpoint_latest.pt``, never in the trained
  model; its figures are log columns;
* **several processes** (``torchrun``, ``vesalius train --nproc N``): the head's
  :class:`~vesalius.training.distributed.Distributed` says this process's rank; the network is wrapped in
  DistributedDataParallel, the loss and elapsed time of each step are averaged over the ranks so that all take the
  same decisions, and rank 0 alone writes files and draws progress (:mod:`vesalius.training.distributed`);
* **the record** (``outcome.json``, :class:`~vesalius.model_package.TrainingOutcome`): the epochs and iterations
  actually run and why the run stopped (the settings only say what was planned), written when the run starts,
  after each epoch and at its end (also when it is interrupted or fails), so that it matches the latest checkpoint.

Determinism: the initial weights depend on the seed, a step's batch and augmentation on ``(seed, iteration)``
(:meth:`~vesalius.training.distributed.Distributed.augmentation_seed`); a run resumed from ``checkpoint_latest.pt``
(written at an epoch's end or within it) continues exactly as the uninterrupted run would have, budgeted runs
included once their iteration count is fixed (a kill within a budgeted run's first epoch resumes with a new
measurement of its pace).
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.model_package import ModelPackage, Resume, TrainingOutcome
from vesalius.precision import autocast_dtype, fp32_small_convolutions, memory_format
from vesalius.training.adversarial import COLUMNS as ADVERSARIAL_COLUMNS
from vesalius.training.adversarial import Adversary
from vesalius.training.distributed import Distributed
from vesalius.training.logs import IterationLog, TrainingLog, iteration_log_interval
from vesalius.training.schedule import learning_rate
from vesalius.training.settings import Settings
from vesalius.units import format_duration

__all__ = ["EpochCallback", "ProgressBar", "TaskHead", "TrainingLoop", "TrainingResult"]

EpochCallback = Callable[[dict[str, float]], None]
#: Once a budgeted run's iterations are fixed, it still stops at this multiple of its budget (a machine that became
#: much slower); the only time a resumed run can end differently from an uninterrupted one.
HARD_STOP = 1.25


@dataclass
class TrainingResult:
    """What a finished run produced.

    ``stopped`` says why it ended: ``"epochs"``, ``"time budget"`` or ``"early stopping"`` (``outcome.json`` records
    it with the numbers, :class:`~vesalius.model_package.TrainingOutcome`); ``best_score`` is the
    head's best validation figure (segmentation: the smoothed pseudo-Dice; classification: AUC; NaN without
    validation), reached at epoch ``best_epoch``; ``validation`` is filled by the validation of the Python API.
    """

    run_dir: Path
    epochs: int
    iterations: int
    elapsed_s: float
    stopped: str
    best_epoch: int | None
    best_score: float
    validation: dict[str, Any] | None = None


class TaskHead(ABC):
    """What one task adds to :class:`TrainingLoop`.

    Attributes:
        gradient_clip: gradient norm clipping threshold; ``sgd_momentum``: momentum of SGD.
        final: the weights of ``checkpoint_final.pt``: ``"last"`` epoch's or ``"best"`` epoch's.
        progress_metric, progress_label: the log-row key shown on the progress bar, and its name.
        class_names: foreground names for the log's Dice columns; ``log_metrics``: other columns to plot.
        iterations_per_epoch: steps per epoch; ``spatial_dims``: 2 or 3 (the network's inputs).
        dataset: the data set's name (for messages).
        distributed: this process's rank in a run of several (default: the only one); the head takes its rows of
            each batch and pools its validation figures over the ranks.
    """

    gradient_clip: float
    sgd_momentum: float
    final: str = "last"
    progress_metric: str = "dice_mean"
    progress_label: str = "Dice"
    class_names: Sequence[str] = ()
    log_metrics: Sequence[str] = ()
    iterations_per_epoch: int
    spatial_dims: int
    dataset: str
    distributed: Distributed = Distributed()

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The network, freshly initialised (the loop seeds torch first)."""

    def build_adversary(self, device: torch.device, dtype: torch.dtype | None) -> Adversary | None:
        """The discriminator of adversarial training on ``device`` with autocast ``dtype``, or ``None`` (no
        adversarial training: the default)."""
        return None

    def start_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called before the first step of each epoch."""

    @abstractmethod
    def batch(self, iteration: int, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of training step ``iteration`` (the ``step``-th of its epoch), augmented, on
        ``device``."""

    @abstractmethod
    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        """The loss (fp32) of the network's outputs against the targets."""

    @abstractmethod
    def validate(self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
        """The validation figures of an epoch (empty without validation cases); ``forward`` runs the network in
        eval mode with the run's precision."""

    @abstractmethod
    def judge(self, row: dict[str, float]) -> bool:
        """Whether the epoch of ``row`` is the best so far (may add figures to ``row``)."""

    def stop_reason(self) -> str | None:
        """A reason to stop before the next epoch (early stopping), or ``None``."""
        return None

    @abstractmethod
    def best_score(self) -> float:
        """The best validation figure so far (NaN when none)."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The head's state for ``checkpoint_latest.pt`` (numbers only)."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""


class TrainingLoop:
    """One run: a head, its resolved settings and its run folder. :meth:`run` trains."""

    def __init__(
        self,
        head: TaskHead,
        settings: Settings,
        package: ModelPackage,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.head = head
        self.settings = settings
        self.package = package
        self.distributed = head.distributed
        self.writer = self.distributed.is_writer
        self.device = self.distributed.device(settings.device)
        self.dtype = autocast_dtype(settings.precision, self.device)
        torch.manual_seed(settings.seed)
        network = head.build_model().to(self.device)
        self.memory_format = memory_format(self.dtype, self.device, head.spatial_dims)
        #: the network itself (checkpoints, validation); :attr:`model` trains it (wrapped in DDP with several ranks)
        self.network = network.to(memory_format=self.memory_format)
        if self.dtype is not None and self.device.type == "cpu":
            fp32_small_convolutions(self.network)  # oneDNN's bf16 weight gradients are wrong there (NaN losses)
        lr, decay = float(settings.lr or 0.0), float(settings.weight_decay or 0.0)
        if settings.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.network.parameters(), lr=lr, momentum=head.sgd_momentum, nesterov=True, weight_decay=decay
            )
        else:
            self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr, weight_decay=decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.adversary = head.build_adversary(self.device, self.dtype)
        self.epoch = 0
        self.iteration = 0
        self.elapsed_s = 0.0
        self.rows: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.total: int | None = None  # iterations of a budgeted run, fixed after its first epoch
        self.epoch_first: int | None = None  # first iteration of an epoch in progress
        self.epoch_losses: list[float] = []
        self.lr = float(settings.lr or 0.0)
        self.planned_epochs = int(settings.epochs or 1)
        self.planned = self.planned_epochs * head.iterations_per_epoch
        self.log_every = iteration_log_interval(head.iterations_per_epoch, self.planned)
        self.log_points = 0  # rows of log_iterations.csv that belong to this state
        self.resumed: list[tuple[int, int]] = []  # (epoch, iteration) of each resume
        if state is not None:
            self.load_state(state)
            self.resumed.append((self.epoch, self.iteration))
        self.model: nn.Module = self.network
        if self.distributed.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=ids)

    # -- state ---------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "rows": self.rows,
            "best_epoch": -1 if self.best_epoch is None else self.best_epoch,
            "total": -1 if self.total is None else self.total,
            "epoch_first": -1 if self.epoch_first is None else self.epoch_first,
            "epoch_losses": list(self.epoch_losses),
            "lr": self.lr,
            "log_every": self.log_every,
            "log_points": self.log_points,
            "resumed": [list(r) for r in self.resumed],
            "torch_rng": torch.get_rng_state(),
            "head": self.head.state(),
            "training": self.settings.to_dict(),
            **({} if self.adversary is None else {"adversary": self.adversary.state()}),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if "epoch_first" not in state:
            raise VesaliusError(
                "the checkpoint was written by an older Vesalius",
                self.package.checkpoint_path("latest"),
                "start the run again with --force",
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.elapsed_s = float(state["elapsed_s"])
        self.rows = list(state["rows"])
        self.best_epoch = None if int(state["best_epoch"]) < 0 else int(state["best_epoch"])
        self.total = None if int(state["total"]) < 0 else int(state["total"])
        self.epoch_first = None if int(state["epoch_first"]) < 0 else int(state["epoch_first"])
        self.epoch_losses = [float(v) for v in state["epoch_losses"]]
        self.lr = float(state["lr"])
        # checkpoints of a Vesalius without the iteration log: it starts afresh at the resumed iteration
        self.log_every = int(state.get("log_every", self.log_every))
        self.log_points = int(state.get("log_points", 0))
        self.resumed = [(int(e), int(i)) for e, i in state.get("resumed", [])]
        torch.set_rng_state(state["torch_rng"])
        self.head.load_state(state["head"])
        if self.adversary is not None:
            self.adversary.load_state(state["adversary"])

    # -- one step ------------------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def _forward(self, x: torch.Tensor, model: nn.Module | None = None) -> Any:
        with self._autocast():
            return (model or self.model)(x.contiguous(memory_format=self.memory_format))

    def train_step(self, step: int, lr: float) -> float:
        """One step of the network (and of the discriminator, in adversarial training); returns this rank's loss
        of the head (without the adversarial term, so that it compares with runs without one)."""
        x, y = self.head.batch(self.iteration, step, self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        outputs = self._forward(x)
        loss = total = self.head.loss(outputs, y)
        progress = self.iteration / (self.total or self.planned)
        adversarial = None if self.adversary is None else self.adversary.generator_loss(x, outputs, progress)
        if adversarial is not None:
            total = loss + adversarial
        if not torch.isfinite(total):
            self._report_non_finite(total, x)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.head.gradient_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.adversary is not None:
            self.adversary.discriminator_step(x, outputs, y, progress, self.iteration)
        return float(loss.detach())

    def _report_non_finite(self, loss: torch.Tensor, x: torch.Tensor) -> None:
        lr = float(self.settings.lr or 0.0)
        if not torch.isfinite(x).all():
            cause = f"the input batch holds NaN/Inf values: check the images ('vesalius verify {self.head.dataset}')"
        else:
            cause = f"the learning rate {lr:g} may be too high for this data (try --lr {lr / 10:g})" + (
                f" or {self.dtype} overflowed (try --precision fp32)" if self.dtype is not None else ""
            )
        raise VesaliusError(
            f"the training loss became {float(loss.detach()):g} at iteration {self.iteration}",
            self.package.checkpoint_path("latest"),
            f"{cause}; the last complete epoch is saved: continue with --resume",
        )

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        self.network.eval()
        try:
            return self.head.validate(lambda x: self._forward(x, self.network), self.device)
        finally:
            self.network.train()

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self, show_progress: bool = False, callbacks: Sequence[EpochCallback] = ()) -> TrainingResult:
        """Train to the end (see the module docstring), write ``checkpoint_final.pt``, and return the result."""
        head, settings = self.head, self.settings
        with contextlib.ExitStack() as stack:
            log: TrainingLog | None = None
            points: IterationLog | None = None
            if self.writer:
                log = TrainingLog(
                    self.package.log_csv,
                    self.package.progress_png,
                    head.class_names,
                    self.rows,
                    tensorboard_dir=self.package.tensorboard_dir,
                    metrics=head.log_metrics,
                    adversarial=() if self.adversary is None else ADVERSARIAL_COLUMNS,
                )
                stack.callback(log.close)
                points = IterationLog(
                    self.package.log_iterations_csv,
                    keep=self.log_points,
                    extra=() if self.adversary is None else ADVERSARIAL_COLUMNS,
                )
                stack.callback(points.close)
                self.log_points = points.points  # fewer where a crash lost rows the checkpoint counted
            try:
                self._record(None)
                stopped = self._epochs(log, points, show_progress, callbacks)
            except KeyboardInterrupt:
                self._record_failure("interrupted", "")
                raise
            except Exception as e:
                self._record_failure("error", e.one_line() if isinstance(e, VesaliusError) else repr(e))
                raise
        if self.writer:
            final = self.network.state_dict()
            if head.final == "best" and self.best_epoch is not None:
                final = self.package.load_checkpoint("best")["model"]
            self.package.save_checkpoint("final", {"model": final, "training": settings.to_dict()})
            self._record(stopped)
        self.distributed.barrier()  # the other ranks return once the final weights are written
        return TrainingResult(
            run_dir=self.package.root,
            epochs=self.epoch,
            iterations=self.iteration,
            elapsed_s=self.elapsed_s,
            stopped=stopped,
            best_epoch=self.best_epoch,
            best_score=head.best_score(),
        )

    def _epochs(
        self,
        log: TrainingLog | None,
        points: IterationLog | None,
        show_progress: bool,
        callbacks: Sequence[EpochCallback],
    ) -> str:
        settings, head = self.settings, self.head
        epochs, per_epoch, budget = self.planned_epochs, head.iterations_per_epoch, settings.time_budget_s
        planned = self.planned
        bar = ProgressBar(planned, budget, show_progress and self.writer, head.progress_metric, head.progress_label)
        bar.update(self.iteration, self.elapsed_s, self.rows[-1] if self.rows else {})
        with bar:
            while True:
                total = self.total or planned
                if self.epoch >= epochs or self.iteration >= total:
                    return "time budget" if total < planned else "epochs"
                if budget and self.elapsed_s >= budget * (HARD_STOP if self.total else 1.0):
                    return "time budget"
                if self.epoch_first is None:  # a new epoch (else one a checkpoint interrupted)
                    reason = head.stop_reason()
                    if reason:
                        return reason
                    self.epoch_first, self.epoch_losses = self.iteration, []
                    if self.adversary is not None:
                        self.adversary.new_epoch()
                head.start_epoch(self.epoch)
                self._steps(min(self.epoch_first + per_epoch, total), total, bar, points)
                if len(self.epoch_losses) % self.log_every:  # the epoch's last, shorter point
                    self._add_point(points, len(self.epoch_losses) % self.log_every)
                row: dict[str, float] = {
                    "epoch": self.epoch,
                    "iteration": self.iteration,
                    "elapsed_s": 0.0,
                    "lr": self.lr,
                    "train_loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan"),
                    **({} if self.adversary is None else self.adversary.means()),
                }
                start = time.perf_counter()
                row.update(self.validate())
                (self.elapsed_s,) = self.distributed.mean([self.elapsed_s + time.perf_counter() - start])
                row["elapsed_s"] = round(self.elapsed_s, 3)
                if budget and self.total is None:
                    # the budget becomes an iteration count once, from the first epoch's pace (validation
                    # included), so that the schedule, and a resumed run, depend on the iteration alone
                    pace = self.iteration / max(self.elapsed_s, 1e-9)
                    self.total = int(min(planned, max(self.iteration, budget * pace)))
                if head.judge(row):
                    self.best_epoch = self.epoch
                    if self.writer:
                        self.package.save_checkpoint("best", {"model": self.network.state_dict()})
                self.epoch += 1
                self.epoch_first = None
                self.rows.append(row)
                if log is not None:
                    log.add(row)
                self._save_latest(points)
                self._record(None)
                bar.update(self.iteration, self.elapsed_s, row)
                for callback in callbacks:
                    callback(row)

    def _steps(self, end: int, total: int, bar: ProgressBar, points: IterationLog | None) -> None:
        """Train up to iteration ``end`` of the current epoch; a point of the iteration log every
        :attr:`log_every` steps of the epoch, a checkpoint every ``checkpoint_interval_s``.

        The loss and the elapsed time of each step are averaged over the ranks, so that every rank stops at the same
        iteration (and logs the global batch's loss)."""
        settings, budget = self.settings, self.settings.time_budget_s
        start, elapsed0 = time.perf_counter(), self.elapsed_s
        saved = start
        while self.iteration < end:
            if budget and self.elapsed_s >= budget * (HARD_STOP if self.total else 1.0):
                break
            self.lr = learning_rate(float(settings.lr or 0.0), self.iteration / total, str(settings.schedule))
            assert self.epoch_first is not None
            loss = self.train_step(self.iteration - self.epoch_first, self.lr)
            loss, self.elapsed_s = self.distributed.mean([loss, elapsed0 + time.perf_counter() - start])
            self.epoch_losses.append(loss)
            self.iteration += 1
            bar.update(self.iteration, self.elapsed_s, {"train_loss": self.epoch_losses[-1]})
            if len(self.epoch_losses) % self.log_every == 0:
                self._add_point(points, self.log_every)
            if self.iteration < end and time.perf_counter() - saved >= settings.checkpoint_interval_s:
                self._save_latest(points)  # mid-epoch: a kill loses minutes, not an epoch
                saved = time.perf_counter()

    def _add_point(self, points: IterationLog | None, steps: int) -> None:
        """A point of the iteration log: the mean training loss of the epoch's last ``steps`` steps.

        Points never span two epochs, so that each one can be made again from ``epoch_losses`` (which a checkpoint
        within an epoch stores) and a resumed run writes the same points as an uninterrupted one. Ranks other than
        0 only count them.
        """
        self.log_points += 1
        if points is None:
            return
        points.add(
            {
                "epoch": self.epoch,
                "iteration": self.iteration,
                "iterations": steps,
                "train_loss": float(np.mean(self.epoch_losses[-steps:])),
                "lr": self.lr,
                "elapsed_s": round(self.elapsed_s, 3),
                **({} if self.adversary is None else self.adversary.means(steps)),
            }
        )

    def _save_latest(self, points: IterationLog | None) -> None:
        if points is None:  # not the writer
            return
        points.sync()  # the checkpoint counts the iteration log's rows: they must be on disk first
        self.package.save_checkpoint("latest", self.state())

    # -- the record ----------------------------------------------------------------------------------------------
    def _record(self, stopped: str | None, detail: str = "") -> None:
        """Write ``outcome.json`` (rank 0): what the run did so far, and why it stopped (``None``: it has not)."""
        if not self.writer:
            return
        self.package.write_outcome(
            TrainingOutcome(
                stopped=stopped,
                reason=self._reason(stopped, detail),
                epochs=self.epoch,
                iterations=self.iteration,
                planned_epochs=self.planned_epochs,
                iterations_per_epoch=self.head.iterations_per_epoch,
                planned_iterations=self.planned,
                elapsed_s=round(self.elapsed_s, 3),
                budget_iterations=self.total,
                time_budget_s=self.settings.time_budget_s,
                best_epoch=self.best_epoch,
                resumed=tuple(Resume(e, i) for e, i in self.resumed),
                log_every=self.log_every,
            )
        )

    def _record_failure(self, stopped: str, detail: str) -> None:
        """:meth:`_record` on the way out of an interrupted or failed run: a failure to write the record must not
        hide the exception that ended the run."""
        with contextlib.suppress(Exception):
            self._record(stopped, detail)

    def _reason(self, stopped: str | None, detail: str) -> str:
        """Why the run stopped, in one sentence with the numbers."""
        done = f"{self.epoch} of {self.planned_epochs} planned epochs ({self.iteration} of {self.planned} iterations)"
        if stopped is None:
            return f"not finished: {done} when last recorded (still running, or killed: continue it with --resume)"
        if stopped == "epochs":
            return f"completed all {self.planned_epochs} planned epochs ({self.iteration} iterations)"
        if stopped == "time budget":
            return f"time budget of {format_duration(float(self.settings.time_budget_s or 0.0))} reached after {done}"
        if stopped == "early stopping":
            patience = getattr(self.settings, "early_stopping", None)
            return f"early stopping: no better validation score for {patience} epochs, after {done}"
        if stopped == "plateau":
            patience = getattr(self.settings, "stop_on_plateau", 0)
            return f"converged: the last {patience} epochs gained 0.002 or less on the {patience} before, after {done}"
        if stopped == "interrupted":
            return f"interrupted (Ctrl-C) after {done}; continue it with --resume"
        if stopped == "error":
            return f"stopped by an error after {done}: {detail}"
        return f"{stopped} after {done}"


class ProgressBar:
    """A Rich progress bar over iterations with the latest loss, a validation figure and the time left.

    ``metric`` is the log-row key shown under the name ``metric_label``.
    """

    def __init__(
        self, total: int, budget: float | None, enabled: bool, metric: str = "dice_mean", metric_label: str = "Dice"
    ) -> None:
        self.total = total
        self.budget = budget
        self.metric = metric
        self.value = float("nan")
        self.progress: Any = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("it {task.completed}/{task.total}  loss {task.fields[loss]}"),
                TextColumn(f"{metric_label} {{task.fields[value]}}"),
                TextColumn("left {task.fields[left]}"),
            )
            self.task = self.progress.add_task("train", total=total, loss="-", value="-", left="-")

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
        self.value = row.get(self.metric, self.value)
        left = (self.total - iteration) * elapsed_s / iteration if iteration else float("inf")
        if self.budget:
            left = min(left, max(0.0, self.budget - elapsed_s))
        loss = row.get("train_loss")
        self.progress.update(
            self.task,
            completed=iteration,
            loss="-" if loss is None else f"{loss:.3f}",
            value="-" if math.isnan(self.value) else f"{self.value:.3f}",
            left="-" if math.isinf(left) else time.strftime("%H:%M:%S", time.gmtime(left)),
        )
