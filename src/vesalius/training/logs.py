"""What a training run writes as it goes: a CSV of per-epoch figures, TensorBoard events and ``progress.png``, and a
CSV of the training loss every few iterations.

Each epoch is one row (a dict of numbers). The CSV and the plot are rewritten whole from all rows each epoch,
atomically, so they always agree with the latest checkpoint (which stores the rows); TensorBoard events are
appended, and a resumed run purges events written after its checkpoint.

The iteration log (:class:`IterationLog`) has many more rows (a long run: thousands), so it is appended to rather
than rewritten; the checkpoint stores how many rows it had, and a resumed run first cuts the file back to them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vesalius.io.atomic import write_bytes_atomic

__all__ = ["ITERATION_COLUMNS", "IterationLog", "TrainingLog", "iteration_log_interval"]

#: The columns of the iteration log: the epoch, the iterations done at the point, the iterations it averages,
#: their mean training loss, the learning rate of its last step and the training seconds so far.
ITERATION_COLUMNS = ("epoch", "iteration", "iterations", "train_loss", "lr", "elapsed_s")


class TrainingLog:
    """Per-epoch log of a run: a CSV table, a plot and (optionally) TensorBoard events.

    Args:
        csv_path: the CSV table (``log.csv`` of the run folder); ``plot_path``: the plot (``progress.png``).
        class_names: foreground class names, for the Dice columns ``dice_NAME``.
        rows: rows of earlier epochs (from a checkpoint, when resuming).
        tensorboard_dir: where to write TensorBoard events, or ``None``.
        metrics: the validation columns to plot instead of the Dice columns (classification: ``val_auc``, ...).
        adversarial: the columns of adversarial training (:data:`vesalius.training.adversarial.COLUMNS`), drawn in a
            panel of their own.
    """

    def __init__(
        self,
        csv_path: Path,
        plot_path: Path,
        class_names: Sequence[str],
        rows: Sequence[dict[str, float]] = (),
        tensorboard_dir: Path | None = None,
        metrics: Sequence[str] = (),
        adversarial: Sequence[str] = (),
    ) -> None:
        self.csv_path = csv_path
        self.plot_path = plot_path
        self.class_names = list(class_names)
        self.metrics = list(metrics)
        self.adversarial = list(adversarial)
        self.rows: list[dict[str, float]] = [dict(r) for r in rows]
        self._writer: Any = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            purge = int(self.rows[-1]["iteration"]) + 1 if self.rows else None
            self._writer = SummaryWriter(str(tensorboard_dir), purge_step=purge)

    def add(self, row: dict[str, float]) -> None:
        """Record one epoch and rewrite the CSV and the plot."""
        self.rows.append(dict(row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[-1]), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_bytes_atomic(self.csv_path, buffer.getvalue().encode())
        if self._writer is not None:
            step = int(row["iteration"])
            for key, value in row.items():
                if key not in ("epoch", "iteration"):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        self.plot()

    def plot(self) -> None:
        """The plot: losses, pseudo-Dice per class (or the ``metrics``), the adversarial columns (where the run
        has them) and learning rate against the epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.rows]
        panels = 4 if self.adversarial else 3
        fig, axes = plt.subplots(panels, 1, figsize=(8, 3 * panels), sharex=True)
        axes[0].plot(epochs, [r["train_loss"] for r in self.rows], label="train loss")
        if any("val_loss" in r for r in self.rows):
            axes[0].plot(epochs, [r.get("val_loss", float("nan")) for r in self.rows], label="validation loss")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        curves = [(key, key) for key in self.metrics] or [(f"dice_{name}", name) for name in self.class_names]
        for key, label in curves:
            if any(key in r for r in self.rows):
                axes[1].plot(epochs, [r.get(key, float("nan")) for r in self.rows], label=label)
        if self.metrics:
            axes[1].legend()
        elif any("dice_mean" in r for r in self.rows):
            axes[1].plot(epochs, [r.get("dice_mean", float("nan")) for r in self.rows], "k--", label="mean")
            axes[1].legend()
        axes[1].set_ylabel("validation" if self.metrics else "validation pseudo-Dice")
        axes[1].set_ylim(0, 1)
        if self.adversarial:
            for key in self.adversarial:
                axes[2].plot(epochs, [r.get(key, float("nan")) for r in self.rows], label=key)
            axes[2].set_ylabel("adversarial")
            axes[2].legend()
        axes[-1].plot(epochs, [r["lr"] for r in self.rows])
        axes[-1].set_ylabel("learning rate")
        axes[-1].set_xlabel("epoch")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        write_bytes_atomic(self.plot_path, buffer.getvalue())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def iteration_log_interval(iterations_per_epoch: int, planned_iterations: int) -> int:
    """Iterations per point of the iteration log: at least 10 points an epoch and about 200 over the planned run,
    whichever is finer (a run of 8 epochs of 250 iterations: every 10; of 1000 epochs: every 25), at least 1.

    Fixed when a run starts (its checkpoint keeps it), so that a resumed run with more epochs keeps its spacing.
    """
    return max(1, min(math.ceil(iterations_per_epoch / 10), math.ceil(planned_iterations / 200)))


class IterationLog:
    """The training loss every few iterations (``log_iterations.csv``, columns :data:`ITERATION_COLUMNS`, then
    ``extra`` columns: adversarial training's, :data:`vesalius.training.adversarial.COLUMNS`).

    Rows are appended and flushed as they come; :meth:`sync` makes them durable before a checkpoint records their
    count. A run resumed from a checkpoint opens the log with the count it recorded (``keep``): rows written after
    that checkpoint (which the resumed run writes again) and a row cut short by a kill are dropped, by an atomic
    rewrite. :attr:`points` is the number of rows.
    """

    def __init__(self, path: Path, keep: int = 0, extra: Sequence[str] = ()) -> None:
        self.columns = (*ITERATION_COLUMNS, *extra)
        rows = self._read_rows(path, len(self.columns))[:keep]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(rows)
        write_bytes_atomic(path, buffer.getvalue().encode())
        self.points = len(rows)
        self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self._writer = csv.writer(self._file, lineterminator="\n")

    @staticmethod
    def _read_rows(path: Path, width: int = len(ITERATION_COLUMNS)) -> list[list[str]]:
        """The complete rows (of ``width`` numbers) of an existing log (up to a row a kill cut short), without the
        header."""
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.reader(f))[1:]
        complete = []
        for row in rows:
            try:
                values = [float(v) for v in row]
            except ValueError:
                break
            if len(values) != width:
                break
            complete.append(row)
        return complete

    def add(self, row: dict[str, float]) -> None:
        """Append one point (a dict with the :attr:`columns`)."""
        self._writer.writerow([row[key] for key in self.columns])
        self._file.flush()
        self.points += 1

    def sync(self) -> None:
        """Make the rows written so far durable (before a checkpoint records :attr:`points`)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
