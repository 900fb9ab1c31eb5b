"""The HTTP API of ``vesalius serve`` (FastAPI; the OpenAPI description at ``/openapi.json``, pages at ``/docs``).

Routes (``KEY``: the header ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; role ``predict`` or ``admin``):

=========================================  ========  =================================================================
``POST /v1/models/{name}/predict``         predict   body: the image's bytes (NIfTI, NRRD, MHA, PNG, JPEG, or a zip of
                                                     one DICOM series); ``202`` and the job, or with ``?wait=S`` the
                                                     finished job (``200``) when it ends within S seconds
``GET /v1/jobs/{id}``                      predict   state, progress, timings, model name/version/package SHA-256
``GET /v1/jobs/{id}/result``               predict   the label map in the input's format and grid (DICOM input: a
                                                     DICOM-SEG); a classifier's probabilities as JSON
``GET /v1/jobs/{id}/result/{part}``        predict   ``labels``, ``dicom-seg``, ``measurements`` (JSON); a classifier's
                                                     ``gradcam`` (PNG) when asked for with ``?explain=gradcam``
``DELETE /v1/jobs/{id}``                   predict   cancel a queued job, or delete a finished job's files
``POST /v1/jobs/{id}/feedback``            predict   the corrected label map (its bytes), or ``{"label": NAME}``
``GET /v1/models``                         predict   the registry: versions, aliases, metrics
``POST /v1/models/{name}/versions``        admin     body: a ``.vpkg``; registers the next version
``PUT /v1/models/{name}/aliases/{alias}``  admin     ``{"version": "v2"}``: promote
``POST /v1/models/{name}/rollback``        admin     ``?alias=production``: the alias back to its previous version
``GET /healthz``, ``/readyz``              -         alive; ready (database, workers, registry)
``GET /metrics``                           -         Prometheus metrics (:mod:`.metrics`)
``GET /monitor``                           -         drift scores and plots (HTML)
=========================================  ========  =================================================================

A client sees only its own jobs (an admin key sees all); another key's job answers ``404``, as an unknown one.
Errors are ``{"error": "<one line>"}``: never a server path, never a traceback (those go to the log). Every request
that touches a model, a job or the registry is written to the audit log (:mod:`.audit`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vesalius.errors import VesaliusError
from vesalius.serving.audit import AuditLog
from vesalius.serving.jobs import ACTIVE_STATES, FINAL_STATES, Job, JobStore, new_job_id
from vesalius.serving.keys import ApiKey, KeyStore
from vesalius.serving.metrics import ServiceMetrics
from vesalius.serving.ratelimit import RateLimiter, retry_after
from vesalius.serving.registry import ModelVersion, NotInRegistry, Registry
from vesalius.serving.settings import ServeSettings
from vesalius.serving.uploads import Upload, UploadError, check_voxels, receive
from vesalius.serving.worker import WorkerPool, remove_job_files

__all__ = ["ApiError", "Service", "create_app"]

log = logging.getLogger("vesalius.serve")

_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_MEDIA_TYPES = {".nii.gz": "application/gzip", ".nii": "application/octet-stream", ".png": "image/png"}


class ApiError(Exception):
    """An answer other than success: ``status`` and a one-line ``message`` for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Service:
    """The state of one running service: store, registry, keys, limits, audit log, metrics and workers."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.database)
        self.registry = Registry(settings.registry_dir)
        self.keys = KeyStore(settings.keys_file)
        self.limiter = RateLimiter(settings.rate_per_minute, settings.burst)
        self.audit = AuditLog(settings.audit_file)
        self.metrics = ServiceMetrics()
        self.workers = WorkerPool(settings, self.store, self.registry, self.metrics)
        self._stop = threading.Event()
        self._admission = threading.Lock()
        self._uploading = 0
        self._retention: threading.Thread | None = None

    def start(self) -> None:
        requeued, failed = self.store.recover()
        if requeued or failed:
            log.warning(
                "after a stop: %d interrupted job(s) queued again, %d failed (interrupted twice)", requeued, failed
            )
        shutil.rmtree(self.settings.jobs_dir / ".incoming", ignore_errors=True)  # uploads cut off by the stop
        self.workers.start()
        self._retention = threading.Thread(target=self._expire_loop, name="vesalius-retention", daemon=True)
        self._retention.start()

    def stop(self) -> None:
        self._stop.set()
        self.workers.stop()

    def expire(self) -> int:
        """Delete the files of jobs that ended more than the retention time ago; returns how many."""
        ids = self.store.expire(time.time() - self.settings.retention_s)
        for job_id in ids:
            remove_job_files(self.settings.jobs_dir / job_id)
        return len(ids)

    def _expire_loop(self) -> None:
        interval = min(60.0, max(1.0, self.settings.retention_s / 4))
        while not self._stop.wait(interval):
            try:
                self.expire()
            except Exception:  # a failed sweep is retried at the next one
                log.exception("retention sweep failed")

    def admit(self) -> bool:
        """Reserve a place in the queue for a request whose upload is about to be received; ``False`` when the queue
        (jobs queued and uploads in progress) is full. Requests that arrive together are counted as they come, not
        only once their jobs are stored, so a burst cannot overfill the queue. :meth:`admitted` ends the
        reservation."""
        with self._admission:
            if self.store.count() + self._uploading >= self.settings.queue_limit:
                return False
            self._uploading += 1
            return True

    def admitted(self) -> None:
        """End a reservation of :meth:`admit` (the job is stored, or the upload was refused)."""
        with self._admission:
            self._uploading -= 1

    def retry_after(self) -> int:
        """Seconds a client should wait before sending again when the queue is full."""
        per_job = self.store.mean_seconds() or 1.0
        return max(1, round(self.store.count() * per_job / max(1, self.settings.workers)))


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def job_status(job: Job) -> dict[str, Any]:
    """A job as the API shows it."""
    base = f"/v1/jobs/{job.id}"
    return {
        "id": job.id,
        "state": job.state,
        "progress": job.progress,
        "model": job.model,
        "version": job.version,
        "package_sha256": job.package_sha256,
        "task": job.task,
        "created": _iso(job.created),
        "started": _iso(job.started),
        "finished": _iso(job.finished),
        "attempts": job.attempts,
        "timings": job.timings,
        "input": {"kind": job.input_kind, "sha256": job.input_sha256, "bytes": job.input_bytes},
        "error": job.error,
        "feedback": job.feedback is not None,
        "links": {"self": base, "result": f"{base}/result"},
    }


def _authenticated(request: Request, role: str) -> ApiKey:
    """The request's API key, checked for ``role`` and the key's rate limit (``401``, ``403``, ``429`` otherwise)."""
    service: Service = request.app.state.service
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
    key = service.keys.authenticate(token) if token else None
    if key is None:
        what = "wrong API key" if token else "no API key"
        raise ApiError(
            401, f"{what}: send 'Authorization: Bearer KEY'", {"WWW-Authenticate": 'Bearer realm="vesalius"'}
        )
    if not key.allows(role):
        action = getattr(request.scope.get("route"), "name", "unknown")
        service.audit.record(action=action, status=403, key=key.name, role=key.role)
        raise ApiError(403, f"the key '{key.name}' has role '{key.role}'; this needs '{role}'")
    wait = service.limiter.check(key.name)
    if wait > 0:
        raise ApiError(429, "rate limit of this key reached", {"Retry-After": str(retry_after(wait))})
    return key


def _predict_key(request: Request) -> ApiKey:
    return _authenticated(request, "predict")


def _admin_key(request: Request) -> ApiKey:
    return _authenticated(request, "admin")


PredictKey = Annotated[ApiKey, Depends(_predict_key)]
AdminKey = Annotated[ApiKey, Depends(_admin_key)]


def create_app(settings: ServeSettings, *, start_workers: bool = True) -> FastAPI:
    """The service's app; its workers start with the app (``start_workers=False``: requests only, for schema tests
    that must not predict)."""
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if start_workers:
            service.start()
        yield
        service.stop()

    app = FastAPI(
        title="Vesalius",
        summary="Medical image segmentation and classification with versioned model packages.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        request.state.model = request.state.version = ""
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics = service.metrics
        metrics.request_seconds.labels(template, request.method).observe(time.perf_counter() - start)
        metrics.requests.labels(
            template, request.method, str(response.status_code), request.state.model, request.state.version
        ).inc()
        return response

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"error": "internal error (logged by the service)"}, status_code=500)

    # -- helpers ------------------------------------------------------------------------------------------------------
    def _audit(request: Request, key: ApiKey | None, status: int, **details: Any) -> None:
        action = getattr(request.scope.get("route"), "name", "unknown")
        service.audit.record(
            action=action, status=status, key=key.name if key else None, role=key.role if key else None, **details
        )

    def resolve(name: str, ref: str | None) -> ModelVersion:
        try:
            return service.registry.resolve(name, ref)
        except VesaliusError as e:
            raise ApiError(404, e.problem) from None

    def own_job(job_id: str, key: ApiKey) -> Job:
        job = service.store.get(job_id) if job_id.isalnum() and len(job_id) <= 64 else None
        if job is None or (key.role != "admin" and job.key_name != key.name):
            raise ApiError(404, "no such job")
        return job

    # -- predictions -------------------------------------------------------------------------------------------------
    @app.post("/v1/models/{name}/predict", name="predict", status_code=202, openapi_extra=_BINARY_BODY)
    async def predict(
        request: Request,
        name: str,
        key: PredictKey,
        wait: Annotated[float, Query(ge=0, description="seconds to wait for the result")] = 0.0,
        version: Annotated[str | None, Query(description="a version (v2) or alias; default: production")] = None,
        explain: Annotated[
            Literal["gradcam"] | None, Query(description="classification: also a Grad-CAM overlay (needs torch)")
        ] = None,
    ) -> JSONResponse:
        chosen = resolve(name, version)
        request.state.model, request.state.version = chosen.name, chosen.version
        if not service.admit():
            _audit(request, key, 429, model=chosen.name, version=chosen.version)
            raise ApiError(429, "the queue is full", {"Retry-After": str(service.retry_after())})
        job_id = new_job_id()
        incoming = settings.jobs_dir / ".incoming" / job_id
        try:
            upload = await _receive(request, incoming / "input")
            await run_in_threadpool(check_voxels, upload, settings.limits)
        except UploadError as e:
            service.admitted()
            shutil.rmtree(incoming, ignore_errors=True)
            _audit(request, key, e.status, model=chosen.name, version=chosen.version)
            raise ApiError(e.status, e.message) from None
        except BaseException:
            service.admitted()
            raise
        options: dict[str, Any] = {"explain": explain} if explain and chosen.task == "classification" else {}
        shadow = _shadow_version(name, chosen, job_id) if version is None else None
        if shadow is not None:
            options["shadow"] = {"version": shadow.version}
        job = Job(
            id=job_id,
            key_name=key.name,
            model=chosen.name,
            version=chosen.version,
            package_sha256=chosen.sha256,
            task=chosen.task,
            state="queued",
            progress=0.0,
            attempts=0,
            created=time.time(),
            started=None,
            finished=None,
            input_kind=upload.kind,
            input_sha256=upload.sha256,
            input_bytes=upload.size_bytes,
            options=options,
        )
        incoming.rename(settings.jobs_dir / job_id)
        try:
            await run_in_threadpool(service.store.add, job)
        finally:
            service.admitted()
        service.workers.notify()
        _audit(
            request,
            key,
            202,
            model=chosen.name,
            version=chosen.version,
            package_sha256=chosen.sha256,
            job=job_id,
            input_sha256=upload.sha256,
        )
        deadline = time.monotonic() + min(wait, settings.max_wait_s)
        current = job
        while current.state in ACTIVE_STATES and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            current = await run_in_threadpool(service.store.get, job_id) or current
        status = 200 if current.state in FINAL_STATES else 202
        return JSONResponse(job_status(current), status_code=status, headers={"Location": f"/v1/jobs/{job_id}"})

    async def _receive(request: Request, folder: Path) -> Upload:
        length = request.headers.get("content-length")
        declared = int(length) if length and length.isdigit() else None
        return await receive(request.stream(), folder, settings.limits, declared)

    def _shadow_version(name: str, chosen: ModelVersion, job_id: str) -> ModelVersion | None:
        if settings.shadow_fraction <= 0 or chosen.task != "segmentation":
            return None
        try:
            staging = service.registry.resolve(name, "staging")
        except VesaliusError:
            return None
        draw = int(hashlib.sha256(f"{settings.seed}:{job_id}".encode()).hexdigest()[:8], 16) / 0x100000000
        return staging if staging.version != chosen.version and draw < settings.shadow_fraction else None

    @app.get("/v1/jobs/{job_id}", name="job")
    def get_job(job_id: str, key: PredictKey) -> dict[str, Any]:
        return job_status(own_job(job_id, key))

    @app.get("/v1/jobs/{job_id}/result", name="result")
    def get_result(request: Request, job_id: str, key: PredictKey) -> Response:
        job = own_job(job_id, key)
        if job.task == "classification":
            return JSONResponse(
                {k: v for k, v in (_finished(job).result or {}).items() if k != "files"},
                headers=_provenance_headers(job),
            )
        part = "dicom-seg" if "dicom_seg" in (_finished(job).result or {}).get("files", {}) else "labels"
        return get_result_part(request, job_id, part, key)

    @app.get("/v1/jobs/{job_id}/result/{part}", name="result_part")
    def get_result_part(request: Request, job_id: str, part: str, key: PredictKey) -> Response:
        job = _finished(own_job(job_id, key))
        folder = settings.jobs_dir / job.id / "result"
        files = (job.result or {}).get("files", {})
        headers = _provenance_headers(job)
        if part == "measurements" and job.task == "segmentation":
            return JSONResponse(json.loads((folder / "measurements.json").read_bytes()), headers=headers)
        member = {"labels": files.get("labels"), "dicom-seg": files.get("dicom_seg"), "gradcam": files.get("gradcam")}
        if member.get(part) is None:
            available = {p for p, f in member.items() if f} | (
                {"measurements"} if job.task == "segmentation" else set()
            )
            raise ApiError(404, f"no result part '{part[:40]}'; this job has: {', '.join(sorted(available))}")
        path = folder / member[part]
        media = "application/dicom" if part == "dicom-seg" else _media_type(path)
        _audit(request, key, 200, model=job.model, version=job.version, job=job.id)
        return FileResponse(path, media_type=media, filename=f"{job.id}_{part}{_suffix(path)}", headers=headers)

    def _finished(job: Job) -> Job:
        if job.state == "succeeded":
            return job
        if job.state == "failed":
            raise ApiError(409, f"the job failed: {job.error}")
        if job.state in ("expired", "deleted"):
            raise ApiError(410, "the job's files were deleted (retention time passed, or deleted)")
        raise ApiError(409, f"the job is {job.state}; ask again when it has succeeded")

    @app.delete("/v1/jobs/{job_id}", name="delete_job")
    def delete_job(request: Request, job_id: str, key: PredictKey) -> dict[str, Any]:
        job = own_job(job_id, key)
        if job.state == "running":
            raise ApiError(409, "the job is running; delete it when it has ended")
        if job.state == "queued" and not service.store.cancel(job.id):
            raise ApiError(409, "the job started meanwhile; delete it when it has ended")
        if job.state in FINAL_STATES:
            service.store.update(job.id, state="deleted")
        remove_job_files(settings.jobs_dir / job.id)
        _audit(request, key, 200, model=job.model, version=job.version, job=job.id)
        return job_status(service.store.get(job.id))  # type: ignore[arg-type]

    @app.post("/v1/jobs/{job_id}/feedback", name="feedback", openapi_extra=_BINARY_BODY)
    async def feedback(request: Request, job_id: str, key: PredictKey) -> dict[str, Any]:
        from vesalius.serving.feedback import FeedbackError, classification_feedback, segmentation_feedback

        job = _finished(await run_in_threadpool(own_job, job_id, key))
        folder = settings.jobs_dir / job.id
        try:
            if job.task == "classification":
                record = classification_feedback(job, await request.body())
            else:
                shutil.rmtree(folder / "feedback", ignore_errors=True)
                upload = await _receive(request, folder / "feedback")
                await run_in_threadpool(check_voxels, upload, settings.limits)
                record = await run_in_threadpool(segmentation_feedback, job, folder, upload)
        except (UploadError, FeedbackError) as e:
            _audit(request, key, e.status, model=job.model, version=job.version, job=job.id)
            raise ApiError(e.status, e.message) from None
        record = {**record, "received": _iso(time.time()), "key": key.name}
        await run_in_threadpool(lambda: service.store.update(job.id, feedback=record))
        _audit(request, key, 200, model=job.model, version=job.version, job=job.id)
        return record

    # -- registry ----------------------------------------------------------------------------------------------------
    @app.get("/v1/models", name="models")
    def list_models(key: PredictKey) -> dict[str, Any]:
        return {"models": [_public(m.to_json()) for m in service.registry.models()]}

    @app.post("/v1/models/{name}/versions", name="add_version", status_code=201, openapi_extra=_BINARY_BODY)
    async def add_version(request: Request, name: str, key: AdminKey) -> dict[str, Any]:
        incoming = settings.jobs_dir / ".incoming" / f"package-{new_job_id()}"
        incoming.mkdir(parents=True)
        try:
            path = incoming / "package.vpkg"
            size = 0
            with open(path, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.limits.max_upload_bytes:
                        raise ApiError(413, "the package is larger than the upload limit")
                    f.write(chunk)
            try:
                added = await run_in_threadpool(service.registry.add, path, name)
            except VesaliusError as e:
                raise ApiError(422, e.problem) from None
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        _audit(request, key, 201, model=added.name, version=added.version, package_sha256=added.sha256)
        return _public(added.to_json())

    @app.put("/v1/models/{name}/aliases/{alias}", name="promote")
    def promote(request: Request, name: str, alias: str, body: dict[str, str], key: AdminKey) -> dict[str, Any]:
        try:
            promoted = service.registry.promote(name, str(body.get("version", "")), alias, actor=key.name)
        except VesaliusError as e:
            raise ApiError(404 if isinstance(e, NotInRegistry) else 422, e.problem) from None
        _audit(request, key, 200, model=name, version=promoted.version, package_sha256=promoted.sha256, alias=alias)
        return _public(promoted.to_json())

    @app.post("/v1/models/{name}/rollback", name="rollback")
    def rollback(request: Request, name: str, key: AdminKey, alias: str = "production") -> dict[str, Any]:
        try:
            back = service.registry.rollback(name, alias, actor=key.name)
        except VesaliusError as e:
            raise ApiError(404 if isinstance(e, NotInRegistry) else 409, e.problem) from None
        _audit(request, key, 200, model=name, version=back.version, package_sha256=back.sha256, alias=alias)
        return _public(back.to_json())

    # -- operations --------------------------------------------------------------------------------------------------
    @app.get("/healthz", name="healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", name="readyz")
    def readyz() -> JSONResponse:
        problems = []
        try:
            service.store.count()
        except Exception as e:
            problems.append(f"job store: {type(e).__name__}")
        if start_workers and not service.workers.alive:
            problems.append("workers not running")
        try:
            if not service.registry.models():
                problems.append("no model registered")
        except VesaliusError as e:
            problems.append(f"registry: {e.problem}")
        body = {"status": "not ready", "problems": problems} if problems else {"status": "ready"}
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/metrics", name="metrics")
    def metrics() -> Response:
        service.metrics.queue_depth.set(service.store.count())
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/monitor", name="monitor", response_class=HTMLResponse)
    def monitor() -> HTMLResponse:
        from vesalius.serving.monitor_page import render_monitor_page
        from vesalius.serving.monitoring import monitor_views

        return HTMLResponse(render_monitor_page(monitor_views(service)))

    return app


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A registry record without the server's file paths (a version's ``path`` and ``source``)."""
    hidden = ("path", "source")
    public = {k: v for k, v in record.items() if k not in hidden}
    if "versions" in public:
        public["versions"] = [{k: v for k, v in version.items() if k not in hidden} for version in public["versions"]]
    return public


def _provenance_headers(job: Job) -> dict[str, str]:
    return {
        "X-Vesalius-Model": job.model,
        "X-Vesalius-Version": job.version,
        "X-Vesalius-Package-SHA256": job.package_sha256,
    }


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


def _media_type(path: Path) -> str:
    return _MEDIA_TYPES.get(_suffix(path), "application/octet-stream")
