"""What ``/monitor`` shows: for every model version that served a job, its drift reference, recent features and
current scores (:class:`~vesalius.serving.monitor_page.ModelDriftView`), read from the job store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from vesalius.errors import VesaliusError
from vesalius.serving.drift import drift_scores
from vesalius.serving.monitor_page import ModelDriftView

if TYPE_CHECKING:
    from vesalius.serving.app import Service

__all__ = ["monitor_views"]

#: The page plots this many windows of history.
HISTORY_WINDOWS = 4


def monitor_views(service: Service) -> list[ModelDriftView]:
    """One view per (model, version) that has served jobs; versions no longer in the registry are left out."""
    settings = service.settings
    views = []
    for model, version in service.store.served_versions():
        try:
            registered = service.registry.resolve(model, version)
        except VesaliusError:
            continue
        _, reference = service.workers.models.get(registered)
        history = service.store.recent_features(model, version, settings.drift_window * HISTORY_WINDOWS)
        window = [features for _, features in history[-settings.drift_window :]]
        views.append(
            ModelDriftView(
                name=model,
                version=version,
                reference=reference,
                observations=[(datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds"), f) for t, f in history],
                scores=drift_scores(reference, window, min_observations=settings.drift_min_jobs),
                threshold=settings.drift_threshold,
                window=settings.drift_window,
                min_observations=settings.drift_min_jobs,
            )
        )
    return views
