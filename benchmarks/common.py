"""Helpers shared by the benchmark scripts: Dice per class, the JSON report line, shared data, timed commands.

Only the standard library and NumPy, so that every benchmark (and every virtual environment that runs one) can
import this module.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The project's root folder (this file lies in ``benchmarks/``).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Prefix of the single machine-readable line each benchmark prints.
JSON_PREFIX = "BENCHMARK_JSON"


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Dice ``2|A∩B| / (|A|+|B|)`` of each label between two label maps of the same shape.

    A label that is absent from both maps scores 1.0 (nothing to find, nothing found).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    scores: dict[int, float] = {}
    for label in labels:
        in_pred = pred == label
        in_ref = ref == label
        size = int(in_pred.sum()) + int(in_ref.sum())
        overlap = int(np.logical_and(in_pred, in_ref).sum())
        scores[int(label)] = 1.0 if size == 0 else 2.0 * overlap / size
    return scores


def _jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays, paths and non-string keys turned into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def emit_json(d: Mapping[str, Any]) -> str:
    """Print ``d`` as one line ``BENCHMARK_JSON {...}`` (and return that line)."""
    line = f"{JSON_PREFIX} {json.dumps(_jsonable(d), sort_keys=False, allow_nan=True)}"
    print(line, flush=True)
    return line


def machine_and_date() -> dict[str, Any]:
    """Where and when a benchmark ran, for its JSON line: processor, CPU count and the UTC time."""
    return {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def shared_data(name: str) -> Path | None:
    """The folder ``../shared/data/NAME`` next to the project's root, or None when it is absent."""
    path = REPO_ROOT.parent / "shared" / "data" / name
    return path if path.is_dir() else None


def _process_group(pgid: int) -> list[Path]:
    """The ``/proc`` folders of the live processes in process group ``pgid`` (Linux)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # the process ended while being read
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:  # fields after "(comm)": state ppid pgrp
                members.append(entry)
    return members


def _pss_bytes(processes: list[Path]) -> int:
    """Summed proportional set size of ``processes``: pages shared by several count once in all."""
    total_kb = 0
    for proc in processes:
        try:
            for line in (proc / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
        except (OSError, ValueError):  # the process ended while being read
            continue
    return total_kb * 1024


def run_measured(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, interval_s: float = 0.2
) -> tuple[int, float, int, str]:
    """Run ``cmd`` in a process group of its own; returns (exit code, wall seconds, peak memory bytes, output).

    Peak memory is the highest summed PSS of the command and every process it started (sampled every
    ``interval_s``; the process group is listed anew every fourth sample), so a tool that predicts in worker
    processes is charged for all of them.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        members: list[Path] = []
        for n in itertools.count():
            if done.is_set():
                return
            if n % 4 == 0:
                members = _process_group(proc.pid)
            peak = max(peak, _pss_bytes(members))
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return proc.returncode, seconds, peak, output
