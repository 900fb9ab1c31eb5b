"""Atomic file writes: write under a temporary name in the target folder, then rename over the target.

A reader (or a killed run) sees either the old file or the complete new one, never a partial file. A full disk
ends in a one-line :class:`~vesalius.errors.VesaliusError` that says whether an earlier version survives. The
temporary file gets the permissions a plainly created file would have (``0o666`` minus the umask), not
``mkstemp``'s 0600.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vesalius.errors import VesaliusError

__all__ = ["atomic_path", "write_bytes_atomic", "write_json_atomic"]


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread could create files
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error it replaces ``path``.

    ``suffix`` ends the temporary name (for writers that choose the format by extension, e.g. ``.nii.gz``);
    ``mode``: the file's permissions (default: those of a plainly created file), set before it takes the name.
    The temporary file is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # writers report a full disk as OSError, or (torch, ITK) in their text
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)
        if not full:
            raise
        kept = "the previous version is intact" if path.exists() else "nothing was written"
        raise VesaliusError(f"the disk is full ({kept})", path, "free some space and run again") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (with permissions ``mode``, see :func:`atomic_path`)."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data)


def json_bytes(data: Any, indent: int = 2) -> bytes:
    """``data`` as indented JSON text ending in a newline, UTF-8 encoded: how every JSON file is written."""
    return (json.dumps(data, indent=indent) + "\n").encode("utf-8")


def write_json_atomic(path: str | Path, data: Any, mode: int | None = None) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (with permissions ``mode``)."""
    write_bytes_atomic(path, json_bytes(data), mode)


def write_folder_atomic(path: str | Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (relative POSIX path -> bytes) as the folder ``path``, replacing it if it exists.

    The files are written into a temporary folder next to ``path`` that is then renamed, so ``path`` is always
    either the old folder or the complete new one (between the two renames, briefly absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        for name, data in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path
