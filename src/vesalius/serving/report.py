"""``vesalius monitor report NAME``: how each version of a served model did, from the job store.

Per version: jobs (succeeded, failed), median time per job, the feedback received and the score of the served
predictions against it (mean Dice for segmentation, accuracy for classification), per day. Per pair of production
and shadowed staging version: how often they were compared, how much they agree (mean Dice between their label
maps), and on the cases that got feedback, the score of each: the evidence for (or against) a promotion.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vesalius.serving.jobs import Job, JobStore

__all__ = ["monitor_report"]


def _day(t: float | None) -> str:
    return datetime.fromtimestamp(t or 0.0, UTC).date().isoformat()


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _score(job: Job) -> float | None:
    """The served prediction's score against the job's feedback: mean Dice, or 1/0 for a right/wrong class."""
    feedback = job.feedback or {}
    if feedback.get("kind") == "class":
        return 1.0 if feedback.get("correct") else 0.0
    return feedback.get("mean_dice")


def _summary(jobs: list[Job]) -> dict[str, Any]:
    seconds = [j.finished - j.started for j in jobs if j.state != "failed" and j.finished and j.started]
    scored = [s for s in map(_score, jobs) if s is not None]
    return {
        "jobs": len(jobs),
        "succeeded": sum(j.state in ("succeeded", "expired", "deleted") and j.result is not None for j in jobs),
        "failed": sum(j.state == "failed" for j in jobs),
        "median_seconds": float(np.median(seconds)) if seconds else None,
        "feedback": len(scored),
        "score": _mean(scored),
    }


def monitor_report(store: JobStore, name: str) -> dict[str, Any]:
    """The report of model ``name`` (JSON-ready); ``score`` is mean Dice (segmentation) or accuracy (classification)
    against feedback."""
    jobs = store.jobs_of(name)
    by_version: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_version[job.version].append(job)
    versions = {}
    for version, its_jobs in sorted(by_version.items(), key=lambda kv: int(kv[0].lstrip("v") or 0)):
        days: dict[str, list[Job]] = defaultdict(list)
        for job in its_jobs:
            days[_day(job.finished or job.created)].append(job)
        versions[version] = {**_summary(its_jobs), "days": {d: _summary(js) for d, js in sorted(days.items())}}
    pairs: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in jobs:
        if job.shadow and "agreement" in job.shadow:
            pairs[(job.version, job.shadow["version"])].append(job)
    shadows = []
    for (production, staging), its_jobs in sorted(pairs.items()):
        judged = [j for j in its_jobs if j.feedback and (j.feedback.get("shadow") or {}).get("mean_dice") is not None]
        served = _mean([j.feedback["mean_dice"] for j in judged if j.feedback["mean_dice"] is not None])  # type: ignore[index]
        shadowed = _mean([j.feedback["shadow"]["mean_dice"] for j in judged])  # type: ignore[index]
        shadows.append(
            {
                "production": production,
                "staging": staging,
                "compared": len(its_jobs),
                "agreement": _mean([j.shadow["agreement"] for j in its_jobs]),  # type: ignore[index]
                "feedback": len(judged),
                "production_dice": served,
                "staging_dice": shadowed,
            }
        )
    return {"model": name, "versions": versions, "shadow": shadows}
