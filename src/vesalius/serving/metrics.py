"""The service's Prometheus metrics, in a registry of their own (so two services in one process, as in tests,
never share counters).

==========================================  =========  ==========================================================
name                                        type       labels
==========================================  =========  ==========================================================
``vesalius_requests_total``                 counter    ``route``, ``method``, ``status``, ``model``, ``version``
``vesalius_request_seconds``                histogram  ``route``, ``method``
``vesalius_jobs_total``                     counter    ``model``, ``version``, ``state`` (jobs that ended)
``vesalius_job_seconds``                    histogram  ``model``, ``version`` (start to end of a job's work)
``vesalius_job_queue_seconds``              histogram  ``model``, ``version`` (waiting in the queue)
``vesalius_queue_depth``                    gauge      (queued jobs)
``vesalius_workers``                        gauge      (prediction threads)
``vesalius_workers_busy``                   gauge      (threads working on a job; utilisation = busy / workers)
``vesalius_drift_score``                    gauge      ``model``, ``version``, ``kind`` (input/output), ``feature``
``vesalius_drift_warning``                  gauge      ``model``, ``version`` (1 when a score is over threshold)
``vesalius_shadow_agreement``               gauge      ``model``, ``production``, ``staging`` (mean Dice)
==========================================  =========  ==========================================================

Routes are the app's route templates (``/v1/jobs/{job_id}``), never the requested paths, so the label values stay
few whatever clients send.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServiceMetrics"]

#: Latency buckets in seconds: from a status poll (milliseconds) to a large volume (minutes).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServiceMetrics:
    """The metrics of one service (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vesalius_requests", "HTTP requests answered", ["route", "method", "status", "model", "version"], registry=r
        )
        self.request_seconds = Histogram(
            "vesalius_request_seconds", "Time to answer a request", ["route", "method"], buckets=_BUCKETS, registry=r
        )
        self.jobs = Counter("vesalius_jobs", "Jobs that ended, by state", ["model", "version", "state"], registry=r)
        self.job_seconds = Histogram(
            "vesalius_job_seconds", "Time a worker spent on a job", ["model", "version"], buckets=_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "vesalius_job_queue_seconds",
            "Time a job waited in the queue",
            ["model", "version"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("vesalius_queue_depth", "Jobs waiting in the queue", registry=r)
        self.workers = Gauge("vesalius_workers", "Prediction threads", registry=r)
        self.workers_busy = Gauge("vesalius_workers_busy", "Prediction threads working on a job", registry=r)
        self.drift_score = Gauge(
            "vesalius_drift_score",
            "Drift score of a feature over the recent jobs (robust z)",
            ["model", "version", "kind", "feature"],
            registry=r,
        )
        self.drift_warning = Gauge(
            "vesalius_drift_warning", "1 when a drift score is over the threshold", ["model", "version"], registry=r
        )
        self.shadow_agreement = Gauge(
            "vesalius_shadow_agreement",
            "Mean Dice between production and staging on shadowed requests",
            ["model", "production", "staging"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)
