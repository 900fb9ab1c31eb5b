"""How a service runs: :class:`ServeSettings`, one frozen value that ``vesalius serve``'s options fill in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vesalius.serving.uploads import Limits

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one service.

    Attributes:
        root: the serving folder (``WORKSPACE/serving``, :mod:`vesalius.serving`).
        workers: prediction threads (ONNX Runtime releases the GIL while it computes).
        threads_per_worker: ONNX Runtime's intra-op threads per worker (``None``: the cores shared out).
        queue_limit: queued jobs beyond which a prediction request is answered ``429`` with ``Retry-After``.
        limits: upload limits (size, voxels, zip members, unzipped size, compression ratio).
        retention_s: a finished job's input and result files are deleted this long after it ended.
        rate_per_minute: requests per minute per API key (token bucket; ``0``: no limit).
        burst: the bucket's size (``None``: a tenth of a minute's worth, at least 10).
        cors_origins: origins allowed to call from a browser (empty: CORS off).
        shadow_fraction: share of requests also predicted by the ``staging`` version, for comparison.
        drift_window: drift scores use the last this many jobs of a model version.
        drift_min_jobs: no drift score before this many jobs.
        drift_threshold: a score above it is a warning (log and metrics).
        max_wait_s: the longest ``?wait=`` a client may ask for.
        seed: seeds the choice of shadowed requests (reproducible from the settings).
    """

    root: Path
    workers: int = 2
    threads_per_worker: int | None = None
    queue_limit: int = 64
    limits: Limits = field(default_factory=Limits)
    retention_s: float = 7 * 24 * 3600.0
    rate_per_minute: float = 600.0
    burst: int | None = None
    cors_origins: tuple[str, ...] = ()
    shadow_fraction: float = 0.0
    drift_window: int = 50
    drift_min_jobs: int = 10
    drift_threshold: float = 3.0
    max_wait_s: float = 300.0
    seed: int = 0

    @property
    def intra_op_threads(self) -> int:
        """ONNX Runtime threads per worker: as set, else the cores shared out among the workers."""
        if self.threads_per_worker:
            return self.threads_per_worker
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // max(1, self.workers))

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite3"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def keys_file(self) -> Path:
        return self.root / "keys.json"

    @property
    def audit_file(self) -> Path:
        return self.root / "audit.jsonl"
