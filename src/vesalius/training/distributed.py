"""Training on several processes: PyTorch's DistributedDataParallel under ``torchrun``, and a launcher for one machine.

A distributed run is the same run as a single-process one, spread over ranks:

* **the batch**: the global batch is the plan's batch; each of the ``W`` ranks takes its own ``B / W`` rows of it
  (:meth:`Distributed.rows`), so the recipe (learning rate, steps, schedule) does not depend on ``W``. The rows of
  a batch are drawn from ``(seed, iteration)`` as in one process (the patch sampler draws every row and crops only
  the rank's); augmentation is drawn per rank from ``(seed, iteration, rank)``. With augmentation off, ``W``
  processes of ``B / W`` take the same steps as one process of ``B`` (within float tolerance); with it, a run is
  reproducible with the same ``W``. ``B`` must divide by ``W``;
* **the gradient**: DDP averages it over the ranks; a loss that pools statistics over the batch (the Dice of
  :class:`vesalius.training.losses.DiceCELoss`) pools them over the ranks with an all-reduce that gradients flow
  through, so the averaged gradient is that of the global batch;
* **agreement**: every decision is taken from numbers all ranks share: the step's loss and the elapsed time are
  averaged over the ranks after each step (one all-reduce of two numbers), so the time budget stops every rank
  at the same iteration; validation batches are split between the ranks and their figures summed;
* **writing**: rank 0 alone writes checkpoints, logs, ``outcome.json``, the progress bar, validation and the
  report; it prepares the data (preprocessing, splits, plan) before the other ranks read it
  (:meth:`Distributed.writer_first`). A checkpoint holds the unwrapped network, so ``--resume`` works with any
  number of processes;
* **failure**: a collective that fails (a rank died, the network broke) is a one-line error on every rank; one
  that hangs ends after ``VESALIUS_DIST_TIMEOUT`` seconds (default 600). On one machine,
  :func:`run_processes` (``vesalius train --nproc N``) runs the ranks with torch's elastic launcher, which stops
  the others when one fails and reports which rank failed and why.

Backends: gloo on CPUs, NCCL on CUDA devices (rank ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``). The ranks' geometry
comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from vesalius.errors import VesaliusError

__all__ = ["Distributed", "run_processes"]

#: Seconds a collective may wait for the other ranks before the run ends with an error.
DEFAULT_TIMEOUT_S = 600.0
LOST_CONTACT = "lost contact with the others"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


@dataclass(frozen=True)
class Distributed:
    """This process's place in a run of ``world_size`` processes (one process: rank 0 of 1, every method a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> Distributed:
        """The rank and world of this process under ``torchrun`` (else rank 0 of 1)."""
        world = _int_env("WORLD_SIZE", 1)
        if world < 2:
            return cls()
        return cls(
            rank=_int_env("RANK", 0),
            world_size=world,
            local_rank=_int_env("LOCAL_RANK", 0),
            local_world_size=_int_env("LOCAL_WORLD_SIZE", world),
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    # -- set-up ----------------------------------------------------------------------------------------------------
    def device(self, name: str) -> torch.device:
        """The device of this rank for the run's device ``name``: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        device = torch.device(name)
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def threads(self, requested: int | None) -> int:
        """Torch threads of this rank: ``requested``, else the cores this process may use shared by the ranks of
        this machine."""
        return requested or max(1, len(os.sched_getaffinity(0)) // self.local_world_size)

    @contextlib.contextmanager
    def session(self, device: str) -> Iterator[Distributed]:
        """Join the run's process group for the duration of the block (nothing in one process)."""
        if not self.enabled:
            yield self
            return
        import torch.distributed as dist

        target = self.device(device)
        if target.type == "cuda":
            torch.cuda.set_device(target)
        timeout = float(os.environ.get("VESALIUS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if target.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
        try:
            yield self
        finally:
            with contextlib.suppress(Exception):  # the group may be broken already: the error that got us here wins
                dist.destroy_process_group()

    @contextlib.contextmanager
    def writer_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the others (which then find what rank 0 prepared)."""
        if not self.is_writer:
            self.barrier()
        yield
        if self.is_writer:
            self.barrier()

    # -- the batch -------------------------------------------------------------------------------------------------
    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size``."""
        if batch_size % self.world_size:
            raise VesaliusError(
                f"a batch of {batch_size} does not split evenly across {self.world_size} processes",
                remedy=f"give --batch-size a multiple of {self.world_size}, or another number of processes",
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def augmentation_seed(self, seed: int, iteration: int) -> int:
        """The augmentation seed of this rank's rows at ``iteration`` (one process: the step's seed)."""
        key = (seed, iteration) if not self.enabled else (seed, iteration, self.rank)
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of ``items`` (every ``world_size``-th, from the ``rank``-th)."""
        return list(items[self.rank :: self.world_size])

    # -- collectives -----------------------------------------------------------------------------------------------
    def _collective(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(*args, **kwargs)
        except (RuntimeError, OSError) as e:
            raise VesaliusError(
                f"training process {self.rank} {LOST_CONTACT} ({str(e).splitlines()[0][:160]})",
                remedy="another process stopped (see its error above) or the network failed; continue the run "
                "with --resume",
            ) from None

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (in place; gradients do not flow)."""
        if self.enabled:
            import torch.distributed as dist

            self._collective(dist.all_reduce, values)
        return values

    def mean(self, values: Sequence[float]) -> list[float]:
        """Numbers averaged over the ranks (on the CPU: one all-reduce)."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            tensor = tensor.to(self.device("cuda"))
        return [float(v) / self.world_size for v in self.sum(tensor).cpu()]

    def sum_with_gradient(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks, with gradients summed back on the way back (each rank then holds the
        global batch's statistics; see the module docstring for why the gradient comes out right)."""
        if not self.enabled:
            return values
        return self._collective(_SumOverRanks.apply, values)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            self._collective(dist.barrier)


class _SumOverRanks(torch.autograd.Function):
    """A sum over the ranks whose gradient is the sum of the ranks' gradients (written here because torch's own,
    ``torch.distributed.nn.functional.all_reduce``, is deprecated and its replacement is private)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = values.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = gradient.clone()
        dist.all_reduce(total)
        return total


# -- the launcher on one machine ---------------------------------------------------------------------------------------
def run_processes(nproc: int, worker: Callable[[Any], Any], argument: Any) -> dict[int, Any]:
    """``worker(argument)`` in ``nproc`` ranks on this machine; returns each rank's result by rank.

    Torch's elastic launcher (what ``torchrun --standalone`` runs) starts the ranks (``spawn``: ``worker`` must be a
    module-level function) with a rendezvous on this machine and stops the others when one fails. A failed rank is a
    one-line error naming it and its own error, or the signal that killed it.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise VesaliusError(f"--nproc {nproc}: at least one process is needed", remedy="give --nproc 1 or more")
    if Distributed.from_environment().enabled:
        raise VesaliusError(
            "--nproc starts processes on this machine, but this process is already one of a torchrun launch",
            remedy="drop --nproc (torchrun's --nproc-per-node sets the processes)",
        )
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # failures are reported below, in one line
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"vesalius-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        start_method="spawn",
    )
    try:
        return elastic_launch(config, worker)(argument)
    except ChildFailedError as e:
        rank, why = _cause(e.failures)
        raise VesaliusError(
            f"training process {rank} of {nproc} failed, so the run stopped: {why}",
            remedy="continue it with --resume once the cause is fixed",
        ) from None


def _cause(failures: dict[int, Any]) -> tuple[int, str]:
    """The rank whose failure stopped a launch, and why: a process that lost contact with the others failed
    because another one did, so the first failure of another kind is the cause."""

    def why(failure: Any) -> str:
        if failure.exitcode < 0:
            return f"it was killed by {failure.signal_name()}"
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
        return str(message).removeprefix("VesaliusError: ").splitlines()[0] if message else "no message"

    reasons = {rank: why(failure) for rank, failure in failures.items()}
    rank = min(reasons, key=lambda r: (LOST_CONTACT in reasons[r], failures[r].timestamp, r))
    return rank, reasons[rank]
