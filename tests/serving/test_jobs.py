"""The job store: one worker per job, recovery after a stop, retention, in SQLite's WAL mode."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from vesalius.serving.jobs import Job, JobStore, new_job_id


def queued(created: float, model: str = "m", version: str = "v1") -> Job:
    return Job(
        id=new_job_id(),
        key_name="k",
        model=model,
        version=version,
        package_sha256="0" * 64,
        task="segmentation",
        state="queued",
        progress=0.0,
        attempts=0,
        created=created,
        started=None,
        finished=None,
        input_kind="nifti",
        input_sha256="1" * 64,
        input_bytes=10,
        options={"shadow": {"version": "v2"}},
    )


def test_the_database_is_in_wal_mode_and_jobs_round_trip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.add(queued(1.0))
    assert store.get(job.id) == job
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_jobs_are_taken_oldest_first_and_each_by_one_worker_only(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = [store.add(queued(float(i))) for i in range(40)]
    taken: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (job := store.claim()) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(j.id for j in jobs) and len(set(taken)) == 40
    assert store.count(("running",)) == 40 and store.count() == 0
    assert all(store.get(i).attempts == 1 for i in taken)  # type: ignore[union-attr]


def test_recovery_retries_an_interrupted_job_once_then_fails_it(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.add(queued(1.0))
    waiting = store.add(queued(2.0))
    assert store.claim().id == job.id  # type: ignore[union-attr]
    assert JobStore(tmp_path / "jobs.sqlite3").recover() == (1, 0)  # the service stopped while it ran
    assert store.get(job.id).state == "queued" and store.get(waiting.id).state == "queued"  # type: ignore[union-attr]
    assert store.claim().id == job.id  # type: ignore[union-attr]
    assert store.recover() == (0, 1)  # and stopped again
    failed = store.get(job.id)
    assert failed.state == "failed" and failed.attempts == 2 and "twice" in failed.error  # type: ignore[union-attr, operator]


def test_cancel_expire_and_features(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    old, new, waiting = (store.add(queued(float(i))) for i in range(3))
    for job in (old, new):
        assert store.claim().id == job.id  # type: ignore[union-attr]
    store.finish(old.id, "succeeded", features={"spacing:0": 1.0})
    store.update(old.id, finished=time.time() - 100)
    store.finish(new.id, "succeeded", features={"spacing:0": 2.0})
    assert store.cancel(waiting.id) and not store.cancel(old.id)
    assert [f for _, f in store.recent_features("m", "v1", 10)] == [{"spacing:0": 1.0}, {"spacing:0": 2.0}]
    assert store.expire(time.time() - 50) == [old.id]
    assert store.get(old.id).state == "expired" and store.get(new.id).state == "succeeded"  # type: ignore[union-attr]
    assert store.served_versions() == [("m", "v1")]
