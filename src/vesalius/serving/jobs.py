"""The service's jobs, kept in SQLite so that none is lost when the service stops, however it stops.

One row per job (:class:`Job`). States::

    queued -> running -> succeeded | failed
    queued -> cancelled                     (DELETE before a worker took it)
    succeeded | failed | cancelled -> expired   (retention: the job's files deleted, the row kept for the record)

Durability: the database runs in WAL mode (readers never wait for the writer, a crash never leaves a half-written
page) with ``synchronous=NORMAL``, which survives the process being killed at any point (only a power cut may lose
the last transactions). A worker takes a job with one ``UPDATE ... RETURNING`` statement, so two workers never take
the same job. After a crash, :meth:`JobStore.recover` puts the jobs that were running back in the queue once;
a job interrupted a second time is failed with the reason, so a job that kills the service cannot do it forever.

Each thread uses its own connection (SQLite connections are not shared across threads); ``busy_timeout`` makes a
writer wait for another instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "MAX_ATTEMPTS", "Job", "JobStore"]

#: States of a job that is not over.
ACTIVE_STATES = ("queued", "running")
#: States of a job that is over (its files kept until the retention time).
FINAL_STATES = ("succeeded", "failed", "cancelled")
#: A job is started at most this often: once, and once more after the service stopped while it ran.
MAX_ATTEMPTS = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key_name TEXT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    package_sha256 TEXT NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    input_kind TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    input_bytes INTEGER NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    timings TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    features TEXT,
    shadow TEXT,
    feedback TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
CREATE INDEX IF NOT EXISTS jobs_by_model ON jobs (model, version, finished);
"""
_JSON_COLUMNS = ("options", "timings", "result", "features", "shadow", "feedback")


@dataclass(frozen=True)
class Job:
    """One row of the jobs table (times are seconds since the epoch; JSON columns decoded)."""

    id: str
    key_name: str | None
    model: str
    version: str
    package_sha256: str
    task: str
    state: str
    progress: float
    attempts: int
    created: float
    started: float | None
    finished: float | None
    input_kind: str
    input_sha256: str
    input_bytes: int
    options: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    features: dict[str, float] | None = None
    shadow: dict[str, Any] | None = None
    feedback: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        for column in _JSON_COLUMNS:
            if values[column] is not None:
                values[column] = json.loads(values[column])
        return cls(**values)


def new_job_id() -> str:
    """A random job id (UUID4 hex): unguessable, so one client cannot read another's results by counting."""
    return uuid.uuid4().hex


class JobStore:
    """The jobs table in ``path`` (created with its folder when missing).

    Args:
        path: the SQLite database file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        yield db

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- writing -----------------------------------------------------------------------------------------------------
    def add(self, job: Job) -> Job:
        """Insert ``job`` (state ``queued``)."""
        values = {k: getattr(job, k) for k in Job.__dataclass_fields__}
        for column in _JSON_COLUMNS:
            if values[column] is not None:
                values[column] = json.dumps(values[column])
        names = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        with self._connection() as db:
            db.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", values)
        return job

    def claim(self) -> Job | None:
        """Take the oldest queued job for a worker (``running``, one more attempt); ``None`` when the queue is
        empty."""
        with self._connection() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, progress = 0 "
                "WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, id LIMIT 1) "
                "AND state = 'queued' RETURNING *",
                (time.time(),),
            ).fetchone()
        return Job._from_row(row) if row else None

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of job ``job_id`` (JSON columns given as Python values)."""
        for column in _JSON_COLUMNS:
            if column in values and values[column] is not None:
                values[column] = json.dumps(values[column])
        assignments = ", ".join(f"{k} = :{k}" for k in values)
        with self._connection() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = :id", {**values, "id": job_id})

    def finish(self, job_id: str, state: str, **values: Any) -> None:
        """End a running job as ``succeeded`` or ``failed`` (with ``error``), with its other columns."""
        self.update(job_id, state=state, finished=time.time(), **values)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job; ``False`` when it is no longer queued."""
        with self._connection() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
                (time.time(), job_id),
            )
        return cursor.rowcount == 1

    def recover(self) -> tuple[int, int]:
        """After a stop: jobs found ``running`` go back to the queue, or fail when they had their second attempt.

        Returns ``(requeued, failed)``.
        """
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            failed = db.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE state = 'running' AND attempts >= ?",
                (time.time(), "the service stopped while the job ran, twice; not retried again", MAX_ATTEMPTS),
            ).rowcount
            requeued = db.execute("UPDATE jobs SET state = 'queued', progress = 0 WHERE state = 'running'").rowcount
            db.execute("COMMIT")
        return requeued, failed

    def expire(self, before: float) -> list[str]:
        """Mark the jobs that ended before ``before`` as ``expired``; returns their ids (for deleting files)."""
        marks = ", ".join("?" for _ in FINAL_STATES)
        with self._connection() as db:
            rows = db.execute(
                f"UPDATE jobs SET state = 'expired' WHERE state IN ({marks}) AND finished < ? RETURNING id",
                (*FINAL_STATES, before),
            ).fetchall()
        return [r["id"] for r in rows]

    # -- reading -----------------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._connection() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job._from_row(row) if row else None

    def count(self, states: Sequence[str] = ("queued",)) -> int:
        """How many jobs are in ``states``."""
        marks = ", ".join("?" for _ in states)
        with self._connection() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", tuple(states)).fetchone()[0])

    def recent_features(self, model: str, version: str, limit: int) -> list[tuple[float, dict[str, float]]]:
        """The drift features of the last ``limit`` succeeded jobs of a model version, oldest first, with their
        finishing times."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT finished, features FROM jobs WHERE model = ? AND version = ? AND features IS NOT NULL "
                "AND state IN ('succeeded', 'expired') ORDER BY finished DESC LIMIT ?",
                (model, version, limit),
            ).fetchall()
        return [(r["finished"], json.loads(r["features"])) for r in reversed(rows)]

    def served_versions(self) -> list[tuple[str, str]]:
        """The (model, version) pairs that have served at least one job."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT DISTINCT model, version FROM jobs WHERE features IS NOT NULL ORDER BY model, version"
            ).fetchall()
        return [(r["model"], r["version"]) for r in rows]

    def jobs_of(self, model: str) -> list[Job]:
        """Every job of ``model``, oldest first (for ``vesalius monitor report``)."""
        with self._connection() as db:
            rows = db.execute("SELECT * FROM jobs WHERE model = ? ORDER BY created, id", (model,)).fetchall()
        return [Job._from_row(r) for r in rows]

    def mean_seconds(self, limit: int = 50) -> float | None:
        """Mean duration of the last ``limit`` succeeded jobs (for ``Retry-After``); ``None`` before the first."""
        with self._connection() as db:
            row = db.execute(
                "SELECT AVG(finished - started) FROM (SELECT finished, started FROM jobs WHERE state = 'succeeded' "
                "ORDER BY finished DESC LIMIT ?)",
                (limit,),
            ).fetchone()
        return None if row[0] is None else float(row[0])
