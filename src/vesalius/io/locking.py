"""An exclusive lock on a folder, for processes and threads of one machine.

Writers that must not interleave (two registry updates; two trainings of one data set that both preprocess it)
take the lock on the folder they write in. It is POSIX ``fcntl.flock`` on the file ``.lock`` inside the folder:
the kernel releases it when the holder closes the file or dies, so a killed run never leaves a stale lock behind.
``flock`` belongs to the open file, so two threads of one process that each enter :func:`folder_lock` exclude each
other too. Linux and macOS only, like the rest of the project's file handling.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["folder_lock"]


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block; waits while another holder has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
