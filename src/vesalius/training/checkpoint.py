"""Checkpoints: one ``.pt`` file per state, written atomically, loaded with ``weights_only=True``.

A checkpoint holds the model's and the optimiser's state dicts, the gradient scaler's (fp16), the counters
(``epoch``, ``iteration``, ``elapsed_s``), the per-epoch log rows and the best pseudo-Dice so far: everything a
resumed run needs to continue exactly where the last epoch ended.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path

__all__ = ["check_run_folder", "load_checkpoint", "open_run_folder", "save_checkpoint"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    with atomic_path(path, ".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved at ``path`` (tensors on the CPU)."""
    if not path.is_file():
        raise VesaliusError("no checkpoint", path, "train the model first (or drop --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VesaliusError(f"unreadable checkpoint ({exc})", path, "delete it and train again") from exc


def check_run_folder(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to start a new run over a finished or running one unless ``force`` (or ``resume``) says so."""
    if not resume and not force and (run_dir / "training.json").exists():
        raise VesaliusError("a run exists here", run_dir, "continue it with --resume, or start over with --force")


def open_run_folder(run_dir: Path, *, resume: bool) -> dict[str, Any] | None:
    """Make ``run_dir`` ready; returns the state of its ``checkpoint_latest.pt`` when resuming from one.

    A new run starts from an empty folder: nothing of an old run (logs, events, checkpoints) may mix in.
    """
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = run_dir / "checkpoint_latest.pt"
    return load_checkpoint(latest) if resume and latest.exists() else None
