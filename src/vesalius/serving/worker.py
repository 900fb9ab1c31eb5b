"""The workers that run the jobs: a fixed number of threads taking queued jobs from the job store.

Threads, not processes: ONNX Runtime releases the GIL while it computes, and each worker's session uses
``threads_per_worker`` intra-op threads, so ``workers x threads`` covers the cores without oversubscribing them.
Models are opened once per package SHA-256 and kept (:class:`LoadedModels`); a job names its model version when it
is queued, so a promotion while it waits or runs changes nothing for it: it finishes on its version, and its result
records the model's name, version and package SHA-256.

A job's files live in ``jobs/ID/``: ``input/`` (what the client sent), ``result/`` (the label map in the input's
format, ``CASE_seg.dcm`` for a DICOM series, ``measurements.json``; for a classifier ``result.json``), ``shadow/``
(the staging version's label map when the request was shadowed) and ``feedback/``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.inference.files import ModelInput, predicted_name, segment_cases
from vesalius.inference.inputs import InputCase, list_inputs
from vesalius.io import Image
from vesalius.io.atomic import write_json_atomic
from vesalius.metrics.segmentation import dice_per_class
from vesalius.runtime import Predictor
from vesalius.runtime.contract import SegmentationContract
from vesalius.runtime.package import Package
from vesalius.serving.drift import DriftReference, drift_scores, input_features, is_output_feature, output_features
from vesalius.serving.jobs import Job, JobStore
from vesalius.serving.metrics import ServiceMetrics
from vesalius.serving.registry import ModelVersion, Registry
from vesalius.serving.settings import ServeSettings

__all__ = ["LoadedModels", "WorkerPool", "job_input", "mean_dice", "remove_job_files"]

log = logging.getLogger("vesalius.serve")


class LoadedModels:
    """Predictors and drift references of model versions, opened on first use and kept (the last ``capacity``)."""

    def __init__(self, threads: int, capacity: int = 4) -> None:
        self.threads = threads
        self.capacity = capacity
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, tuple[Predictor, DriftReference]] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, version: ModelVersion) -> tuple[Predictor, DriftReference]:
        """The predictor and drift reference of ``version`` (opened once, even when asked for by many threads)."""
        with self._lock:
            if version.sha256 in self._loaded:
                self._loaded.move_to_end(version.sha256)
                return self._loaded[version.sha256]
            loading = self._loading.setdefault(version.sha256, threading.Lock())
        with loading:
            with self._lock:
                if version.sha256 in self._loaded:
                    return self._loaded[version.sha256]
            predictor = Predictor(version.path, threads=self.threads)
            with Package(version.path) as package:
                reference = DriftReference.from_package(package)
            with self._lock:
                self._loaded[version.sha256] = (predictor, reference)
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
                self._loading.pop(version.sha256, None)
            return predictor, reference


def job_input(folder: Path) -> Path:
    """The uploaded input of a job folder: ``input/input.SUFFIX`` or the DICOM folder ``input/dicom``."""
    entries = sorted((folder / "input").iterdir())
    if len(entries) != 1:
        raise VesaliusError("the job's input is missing (deleted after the retention time?)", None, "send it again")
    return entries[0]


def mean_dice(a: np.ndarray, b: np.ndarray, labels: list[int]) -> float:
    """Mean Dice over ``labels`` of two label maps (a label absent from both counts as 1)."""
    scores = dice_per_class(a, b, labels)
    return float(np.mean([1.0 if np.isnan(v) else v for v in scores.values()])) if scores else 1.0


class WorkerPool:
    """``settings.workers`` threads running queued jobs until :meth:`stop`.

    Args:
        settings: the service's settings.
        store: the job store.
        registry: the model registry (to find each job's package).
        metrics: where job counts, durations, queue depth, utilisation and drift scores go.
    """

    def __init__(
        self,
        settings: ServeSettings,
        store: JobStore,
        registry: Registry,
        metrics: ServiceMetrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.models = LoadedModels(settings.intra_op_threads)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._explainers: dict[str, Callable[[Image, int], tuple[np.ndarray, np.ndarray]]] = {}

    def start(self) -> None:
        self.metrics.workers.set(self.settings.workers)
        for i in range(self.settings.workers):
            thread = threading.Thread(target=self._loop, name=f"vesalius-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running jobs finish (up to ``timeout``), then return; queued jobs stay queued for the next start."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def notify(self) -> None:
        """A job was queued: wake an idle worker."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim()
            self.metrics.queue_depth.set(self.store.count())
            if job is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            with self._busy_lock:
                self._busy += 1
                self.metrics.workers_busy.set(self._busy)
            try:
                self._run(job)
            except Exception:  # the store failed while ending the job: the worker goes on with the next
                log.exception("job %s could not be ended", job.id)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    self.metrics.workers_busy.set(self._busy)
        self.store.close()

    # -- one job -----------------------------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        started = time.time()
        folder = self.settings.jobs_dir / job.id
        try:
            outcome = self._predict(job, folder)
        except VesaliusError as e:  # the input does not fit the model: the client's to fix, told without paths
            self._end(job, "failed", started, error=_client_message(e))
            return
        except Exception:
            log.exception("job %s failed", job.id)
            self._end(job, "failed", started, error="internal error while predicting (logged by the service)")
            return
        self._end(job, "succeeded", started, **outcome)

    def _end(self, job: Job, state: str, started: float, **values: Any) -> None:
        finished = time.time()
        timings = {**values.pop("timings", {}), "queued_s": started - job.created, "total_s": finished - started}
        self.store.finish(
            job.id, state, timings=timings, **({"progress": 1.0} if state == "succeeded" else {}), **values
        )
        self.metrics.jobs.labels(job.model, job.version, state).inc()
        self.metrics.job_seconds.labels(job.model, job.version).observe(finished - started)
        self.metrics.queue_seconds.labels(job.model, job.version).observe(started - job.created)
        if state == "succeeded":
            try:
                self._update_drift(job)
            except Exception:  # monitoring must never stop a worker
                log.exception("drift scores of %s %s not updated", job.model, job.version)

    def _predict(self, job: Job, folder: Path) -> dict[str, Any]:
        version = self.registry.resolve(job.model, job.version)
        if version.sha256 != job.package_sha256:
            raise VesaliusError("the model version's package changed since the job was queued", None, "send it again")
        predictor, _ = self.models.get(version)
        contract = predictor.contract
        source = job_input(folder)
        case = list_inputs(source)[0]
        model = ModelInput(len(contract.channels), contract.spatial_dims, version.path)
        timings: dict[str, float] = {}
        tick = time.perf_counter()
        if isinstance(contract, SegmentationContract):
            return self._segment(job, folder, predictor, model, case, source, timings, tick)
        image = model.read(case)
        timings["read_s"] = time.perf_counter() - tick
        self.store.update(job.id, progress=0.2)
        tick = time.perf_counter()
        probabilities = predictor.classify(image)
        timings["predict_s"] = time.perf_counter() - tick
        names = list(contract.class_names)
        result = {
            "task": "classification",
            "predicted": predicted_name(probabilities, names, contract.target_type),
            "probabilities": {n: float(p) for n, p in zip(names, probabilities, strict=True)},
            **_provenance(job),
        }
        if job.options.get("explain") == "gradcam":
            result["files"] = {"gradcam": self._gradcam(version, image, probabilities, folder / "result")}
        write_json_atomic(folder / "result" / "result.json", result)
        features = input_features(image, None, "classification") | output_features(
            "classification", probabilities=probabilities, names=names
        )
        return {"result": result, "features": features, "timings": timings}

    def _gradcam(self, version: ModelVersion, image: Image, probabilities: np.ndarray, folder: Path) -> str:
        """The Grad-CAM overlay of the predicted class (``gradcam.png``), from the package's torch programs."""
        try:
            from vesalius.deploy.torch_backend import package_gradcam
            from vesalius.inference.gradcam import write_overlay
        except ModuleNotFoundError as e:
            raise VesaliusError(
                f"Grad-CAM needs {e.name}, which this install leaves out",
                None,
                "install vesalius[all] beside the service",
            ) from None
        explain = self._explainers.get(version.sha256)
        if explain is None:
            explain = self._explainers.setdefault(version.sha256, package_gradcam(version.path))
        prepared, heat = explain(image, int(np.argmax(probabilities)))
        write_overlay(prepared, heat, folder / "gradcam.png")
        return "gradcam.png"

    def _segment(
        self,
        job: Job,
        folder: Path,
        predictor: Predictor,
        model: ModelInput,
        case: InputCase,
        source: Path,
        timings: dict[str, float],
        tick: float,
    ) -> dict[str, Any]:
        from vesalius.evaluation.measure import measure_segmentation

        contract = predictor.contract
        assert isinstance(contract, SegmentationContract)
        seen: dict[str, Image] = {}

        def segment(image: Image) -> tuple[Image, None]:
            timings["read_s"] = time.perf_counter() - tick
            self.store.update(job.id, progress=0.1)
            start = time.perf_counter()
            labels = predictor.segment(image)
            timings["predict_s"] = time.perf_counter() - start
            self.store.update(job.id, progress=0.8)
            seen.update(image=image, labels=labels)  # type: ignore[arg-type]
            return labels, None  # type: ignore[return-value]

        start_write = 0.0

        def written(_case: InputCase) -> None:
            nonlocal start_write
            start_write = time.perf_counter()

        result_dir = folder / "result"
        (path,) = segment_cases(source, result_dir, model, segment, contract.labels, on_case=written)
        image, labels = seen["image"], seen["labels"]
        measurements = measure_segmentation(labels, image, contract.labels).to_dict()
        write_json_atomic(result_dir / "measurements.json", measurements)
        files = {"labels": path.name}
        seg = result_dir / f"{case.case_id}_seg.dcm"
        if seg.is_file():
            files["dicom_seg"] = seg.name
        timings["write_s"] = time.perf_counter() - tick - timings["read_s"] - timings["predict_s"]
        features = input_features(image, labels.array[0], "segmentation") | output_features(
            "segmentation", labels=labels, names=contract.labels
        )
        outcome: dict[str, Any] = {
            "result": {
                "task": "segmentation",
                "files": files,
                "labels": {str(k): v for k, v in contract.labels.items()},
                **_provenance(job),
            },
            "features": features,
            "timings": timings,
        }
        if job.options.get("shadow"):
            outcome["shadow"] = self._shadow(job, folder, image, labels, contract)
        return outcome

    def _shadow(
        self, job: Job, folder: Path, image: Image, labels: Image, contract: SegmentationContract
    ) -> dict[str, Any]:
        """Predict the same image with the shadowed (staging) version; its label map and agreement are kept, never
        returned to the client."""
        from vesalius.io import write_image

        wanted = job.options["shadow"]
        try:
            version = self.registry.resolve(job.model, wanted["version"])
            predictor, _ = self.models.get(version)
            start = time.perf_counter()
            shadow = predictor.segment(image)
            seconds = time.perf_counter() - start
        except Exception as e:  # the staging version's trouble must never fail a production request
            log.warning("shadow prediction of job %s with %s %s failed: %s", job.id, job.model, wanted, e)
            return {"version": wanted["version"], "error": str(e)[:200]}
        write_image(shadow, folder / "shadow" / "labels.nii.gz")  # type: ignore[arg-type]
        agreement = mean_dice(labels.array[0], shadow.array[0], [int(k) for k in contract.labels if int(k)])  # type: ignore[union-attr]
        self.metrics.shadow_agreement.labels(job.model, job.version, version.version).set(agreement)
        return {
            "version": version.version,
            "package_sha256": version.sha256,
            "agreement": agreement,
            "seconds": seconds,
        }

    def _update_drift(self, job: Job) -> None:
        version = self.registry.resolve(job.model, job.version)
        _, reference = self.models.get(version)
        window = [f for _, f in self.store.recent_features(job.model, job.version, self.settings.drift_window)]
        if len(window) < self.settings.drift_min_jobs:
            return
        scores = drift_scores(reference, window, min_observations=self.settings.drift_min_jobs)
        over = sorted(f for f, s in scores.items() if s > self.settings.drift_threshold)
        for feature, score in scores.items():
            kind = "output" if is_output_feature(feature) else "input"
            self.metrics.drift_score.labels(job.model, job.version, kind, feature).set(score)
        self.metrics.drift_warning.labels(job.model, job.version).set(1.0 if over else 0.0)
        key = (job.model, job.version)
        if over and key not in self._warned:
            log.warning(
                "drift: %s %s over threshold %.1f on %s (last %d jobs)",
                job.model,
                job.version,
                self.settings.drift_threshold,
                ", ".join(f"{f}={scores[f]:.1f}" for f in over),
                len(window),
            )
            self._warned.add(key)
        elif not over:
            self._warned.discard(key)


def _provenance(job: Job) -> dict[str, str]:
    return {"model": job.model, "version": job.version, "package_sha256": job.package_sha256}


def _client_message(error: VesaliusError) -> str:
    """A user error as a line for the client: the problem and the remedy, without the server's file paths."""
    text = error.problem.rstrip(".")
    return f"{text}. {error.remedy}" if error.remedy else text


def remove_job_files(folder: Path) -> None:
    """Delete a job's files (retention, or ``DELETE /v1/jobs/ID``); the row stays in the store."""
    shutil.rmtree(folder, ignore_errors=True)
