"""The viewer's web server: a FastAPI app over a list of :class:`~vesalius.viewer.cases.ViewerCase`.

Routes:

- ``/``: the page (``static/index.html``, with ``viewer.js`` and ``viewer.css``);
- ``/niivue.js``: NiiVue's browser bundle from ``node_modules`` next to this file (installed by ``make setup``
  from ``package-lock.json``; never copied into the repository);
- ``/api/status``: whether NiiVue is installed (and the one line that installs it), the label palette (the one of
  ``vesalius overlay`` and the HTML report: :data:`vesalius.reporting.overlay.PALETTE`), the verdicts;
- ``/api/cases``: the case list with per-case metrics, the review (verdict, note, corrected) and ``broken`` (why a
  case cannot be shown, or ``null``). Where a case has a prediction and a reference, its ``dice NAME`` and
  ``hd95 NAME`` per label are computed once (cached for the server's life) with
  :func:`vesalius.metrics.segmentation.segmentation_metrics`, as ``vesalius evaluate`` does (tolerance 1 mm,
  the case's labels, else every label value found in the references): the same figures as its ``metrics.csv``;
- ``PUT /api/cases/{index}/review``: ``{"verdict": one of VERDICTS or null, "note": text}``, saved to the review
  folder (:mod:`vesalius.evaluation.review`);
- ``POST /api/cases/{index}/correction``: the page's drawing (NiiVue's NIfTI of it, optionally gzipped), written
  as ``corrections/CASE.nii.gz`` on the case image's exact grid (a drawing of another shape is refused, 422);
- ``/api/cases/{index}/{image|prediction|reference}.nii.gz``: a volume as gzipped NIfTI. NIfTI files are sent as
  they are, once checked (a corrupt or truncated file is refused, not handed to the browser to fail there), unless
  their header holds free text or extensions (:func:`~vesalius.io.has_header_text`); those and other formats are
  converted once into the app's own temporary folder (pictures with three channels become grey), never next to
  the data. The browser thus gets geometry and voxels only, never what a DICOM converter copied into a header
  (a patient's name in ``descrip``, the whole DICOM header as an extension), which the page would not show but a
  download of the volume would carry.

Cases are addressed by their index in the list, so no path from a request ever reaches the file system. Error
responses are ``{"error": "<one short line>"}``: they never carry file paths or library messages (the page may be
reached by other programs on the machine); the details go to the server's log (``logging``, ``vesalius.viewer``).
:func:`serve` answers only requests whose ``Host`` header names the address it listens on (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import struct
import tempfile
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from vesalius.errors import VesaliusError
from vesalius.evaluation.review import MAX_NOTE, VERDICTS, Review, drawing_to_labels
from vesalius.io import has_header_text, image_suffix
from vesalius.reporting.overlay import PALETTE
from vesalius.viewer.cases import ViewerCase

__all__ = ["NIIVUE_BUNDLE", "create_app", "install_hint", "protect", "serve", "trusted_hosts"]

log = logging.getLogger("vesalius.viewer")

VIEWER_DIR = Path(__file__).parent
STATIC_DIR = VIEWER_DIR / "static"
NIIVUE_BUNDLE = VIEWER_DIR / "node_modules" / "@niivue" / "niivue" / "dist" / "niivue.umd.js"
"""NiiVue's UMD bundle, installed by ``npm ci`` in this folder."""

KINDS = ("image", "prediction", "reference")
MAX_REVIEW_BODY = 16 * 1024
"""Bytes of a review request (a verdict and a note of at most MAX_NOTE characters)."""
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
"""``Host`` values of this machine's loopback interface, as a browser sends them (IPv6 in brackets)."""


def install_hint() -> str:
    """The one command that installs NiiVue for the viewer."""
    return f"npm ci --prefix {VIEWER_DIR} (or 'make setup')"


class _Unreadable(Exception):
    """A volume that cannot be shown; ``reason`` is for the page (no path), ``detail`` for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Volumes:
    """NIfTI files for the browser: the original when it is NIfTI (checked once), else a conversion in a private
    folder. Remembers which volumes failed, so that the case list can mark their cases as broken."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="vesalius-viewer-"))
        self.lock = threading.Lock()
        self.locks: dict[tuple[int, str], threading.Lock] = {}
        self.converted: dict[tuple[int, str], Path] = {}
        self.problems: dict[tuple[int, str], str | None] = {}

    def problem(self, index: int, kind: str, source: Path) -> str | None:
        """Why the volume cannot be shown (``"missing"``, ``"unreadable"``) or ``None``, from a cheap look at the
        file (its header) made once: the case list checks every case, so it must not read whole volumes."""
        key = (index, kind)
        if key not in self.problems:
            try:
                _quick_check(source)
                found = None
            except _Unreadable as e:
                log.warning("%s of case %d: %s", kind, index, e.detail)
                found = e.reason
            with self.lock:
                self.problems.setdefault(key, found)
        return self.problems[key]

    def nifti(self, index: int, kind: str, source: Path) -> Path:
        """The NIfTI file to send; raises :class:`_Unreadable` (and remembers it) when there is none. One lock per
        volume: NiiVue asks for a case's volumes at once, and one large file must not hold up the others."""
        key = (index, kind)
        with self.lock:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            if self.problems.get(key) is not None:
                raise _Unreadable(self.problems[key] or "unreadable", f"{source}: failed before")
            try:
                if key not in self.converted:
                    as_is = image_suffix(source) == ".nii.gz" and (kind == "image" or _small_integers(source))
                    if as_is and not has_header_text(source):
                        _full_check(source)
                        self.converted[key] = source
                    else:
                        target = self.folder / f"{index}_{kind}.nii.gz"
                        self.converted[key] = self._convert(source, target, labels=kind != "image")
                return self.converted[key]
            except _Unreadable as e:
                self.problems[key] = e.reason
                raise
            except Exception as e:  # whatever reading raises (VesaliusError, ITK, OS): the case is unreadable
                self.problems[key] = "missing" if not source.exists() else "unreadable"
                raise _Unreadable(self.problems[key], f"{source}: {type(e).__name__}: {e}") from e

    @staticmethod
    def _convert(source: Path, target: Path, *, labels: bool) -> Path:
        """``source`` as gzipped NIfTI; a label map as 8- or 16-bit integers (NiiVue's label shader takes no others:
        a float or 32-bit label map would be drawn with the grey-level shader, which tints the whole image)."""
        from vesalius.io import Image, read_image, write_image

        image = read_image(source)
        if labels:
            values = np.rint(image.array)
            high = float(values.max()) if values.size else 0.0
            image = Image(values.astype(np.uint8 if high <= 255 else np.uint16), image.geometry)
        elif image.num_channels > 1 and image.ndim == 2:  # a colour picture: NiiVue shows one grey channel
            image = Image(image.array.astype(np.float32).mean(axis=0, keepdims=True), image.geometry)
        return write_image(image, target)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _small_integers(source: Path) -> bool:
    """Whether the image file ``source`` holds 8- or 16-bit integers (read from its header only)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    reader.ReadImageInformation()
    small = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16)
    return reader.GetPixelID() in small and reader.GetNumberOfComponents() == 1


def _nifti_head(head: bytes) -> tuple[int, int] | None:
    """``(vox_offset, voxel bytes)`` promised by a NIfTI-1 or NIfTI-2 header (either byte order), or ``None``."""
    for e in "<>":
        if len(head) >= 348 and struct.unpack(f"{e}i", head[:4])[0] == 348:
            dims = struct.unpack(f"{e}8h", head[40:56])
            (bitpix,) = struct.unpack(f"{e}h", head[72:74])
            offset = max(int(struct.unpack(f"{e}f", head[108:112])[0]), 352)
        elif len(head) >= 540 and struct.unpack(f"{e}i", head[:4])[0] == 540:
            dims = struct.unpack(f"{e}8q", head[16:80])
            (bitpix,) = struct.unpack(f"{e}h", head[14:16])
            offset = max(struct.unpack(f"{e}q", head[168:176])[0], 544)
        else:
            continue
        if not 1 <= dims[0] <= 7 or any(d < 0 for d in dims[1 : dims[0] + 1]) or bitpix <= 0:
            return None
        return offset, int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64)) * bitpix // 8
    return None


def _read_start(path: Path, size: int = 540) -> bytes:
    """The first ``size`` bytes of a file's content (decompressed for ``.gz``)."""
    with open(path, "rb") as f:
        if not path.name.lower().endswith(".gz"):
            return f.read(size)
        decompressor = zlib.decompressobj(wbits=31)
        out = b""
        while len(out) < size and (chunk := f.read(4096)) and not decompressor.eof:
            out += decompressor.decompress(chunk, size - len(out))
        return out


def _quick_check(source: Path) -> None:
    """Raise :class:`_Unreadable` for a missing file or a NIfTI file whose header is not NIfTI."""
    if not source.is_file():
        raise _Unreadable("missing", f"{source}: no such file")
    if image_suffix(source) not in (".nii", ".nii.gz"):
        return
    try:
        head = _read_start(source)
    except (OSError, zlib.error) as e:
        raise _Unreadable("unreadable", f"{source}: {e}") from None
    if _nifti_head(head) is None:
        raise _Unreadable("unreadable", f"{source}: not a NIfTI header")


def _full_check(source: Path) -> None:
    """Raise :class:`_Unreadable` unless a ``.nii.gz`` file is whole: a NIfTI header, an intact gzip stream (CRC
    and length) and as many voxel bytes as the header promises. Reads the file without keeping it."""
    _quick_check(source)
    decompressor = zlib.decompressobj(wbits=31)
    head, total = b"", 0
    try:
        with open(source, "rb") as f:
            while (chunk := f.read(1 << 20)) and not decompressor.eof:
                part = decompressor.decompress(chunk)
                head += part[: max(540 - len(head), 0)]
                total += len(part)
    except (OSError, zlib.error) as e:
        raise _Unreadable("unreadable", f"{source}: {e}") from None
    if not decompressor.eof:
        raise _Unreadable("unreadable", f"{source}: truncated gzip stream")
    promised = _nifti_head(head)
    if promised is None or total < promised[0] + promised[1]:
        raise _Unreadable("unreadable", f"{source}: {total} bytes, the NIfTI header promises {promised}")


class _Metrics:
    """Per-case ``dice NAME`` and ``hd95 NAME``, computed once per case as ``vesalius evaluate`` scores it."""

    def __init__(self, cases: list[ViewerCase]) -> None:
        self.cases = cases
        self.lock = threading.Lock()
        self.found: dict[int, dict[str, float | None]] = {}
        self.labels: dict[int, str] | None = None

    def _default_labels(self) -> dict[int, str]:
        """``evaluate``'s labels without names: every non-zero value in the references, named by its value."""
        if self.labels is None:
            from vesalius.io import read_image

            values: set[int] = set()
            for c in self.cases:
                if c.reference is not None and c.prediction is not None:
                    try:
                        values.update(int(v) for v in np.unique(read_image(c.reference).array))
                    except Exception as e:  # an unreadable reference is the case list's business
                        log.warning("reference of %s not read for the labels: %s", c.case_id, type(e).__name__)
            self.labels = {v: str(v) for v in sorted(values) if v != 0}
        return self.labels

    def of(self, index: int) -> dict[str, float | None]:
        """The figures of case ``index`` (empty without a prediction and a reference, or when they do not pair)."""
        c = self.cases[index]
        if c.prediction is None or c.reference is None:
            return {}
        with self.lock:
            if index not in self.found:
                self.found[index] = self._compute(c)
            return self.found[index]

    def _compute(self, c: ViewerCase) -> dict[str, float | None]:
        from vesalius.io import read_image
        from vesalius.metrics.segmentation import segmentation_metrics

        labels = c.labels or self._default_labels()
        try:
            prediction, reference = read_image(c.prediction), read_image(c.reference)  # type: ignore[arg-type]
            if prediction.spatial_shape != reference.spatial_shape:
                raise ValueError(f"shape {prediction.spatial_shape} differs from {reference.spatial_shape}")
            scores = segmentation_metrics(
                prediction.array[0], reference.array[0], labels, reference.geometry.spacing, 1.0
            )
        except Exception as e:  # an unreadable or mismatched pair: no figures, the details to the log
            log.warning("metrics of %s not computed: %s: %s", c.case_id, type(e).__name__, e)
            return {}
        figures: dict[str, float | None] = {}
        for metric in ("dice", "hd95"):
            for value, name in labels.items():
                number = float(scores[value][metric])  # type: ignore[literal-required]
                figures[f"{metric} {name}"] = number if np.isfinite(number) else None
        return figures


def create_app(cases: list[ViewerCase], title: str = "Vesalius viewer", review: Review | None = None) -> Any:
    """The FastAPI app serving ``cases``; ``review``: where verdicts and corrections go (none: read-only)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    volumes = _Volumes()
    metrics = _Metrics(cases)

    class Verdict(BaseModel):
        verdict: str | None = None
        note: str = Field("", max_length=MAX_NOTE)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        volumes.close()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Every error is {"error": one short line}: FastAPI's defaults echo the request and validation internals.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        text = exc.detail if isinstance(exc.detail, str) and exc.status_code != 500 else "internal error"
        return JSONResponse({"error": text}, exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        log.info("invalid request %s: %s", request.url.path, exc.errors())
        return JSONResponse({"error": "invalid request"}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # uvicorn logs the traceback
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return JSONResponse({"error": "internal error"}, 500)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/niivue.js", include_in_schema=False)
    def niivue() -> FileResponse:
        if not NIIVUE_BUNDLE.is_file():
            raise HTTPException(404, "NiiVue is not installed: run 'npm ci' in the viewer folder (or 'make setup')")
        return FileResponse(NIIVUE_BUNDLE, media_type="text/javascript")

    @app.get("/api/status")
    def status() -> JSONResponse:
        return JSONResponse(
            {
                "title": title,
                "niivue": NIIVUE_BUNDLE.is_file(),
                "install": install_hint(),
                "palette": [list(c) for c in PALETTE],
                "cases": len(cases),
                "verdicts": list(VERDICTS),
                "review": review is not None,
            }
        )

    def row(i: int, c: ViewerCase) -> dict[str, Any]:
        """A case for the list: an unusable overlay is left out; ``broken`` says what cannot be shown."""
        shown, problems = [], []
        for kind in KINDS:
            source = _source(c, kind)
            if source is None:
                continue
            problem = volumes.problem(i, kind, source)
            if problem is None:
                shown.append(kind)
            else:
                problems.append(f"{kind} {problem}")
        return {
            "index": i,
            "id": c.case_id,
            "group": c.group,
            "labels": {str(k): v for k, v in c.labels.items()},
            "metrics": {k: _finite(v) for k, v in {**c.metrics, **metrics.of(i)}.items()},
            "review": review.get(_key(c)) if review is not None else {},
            "volumes": shown if "image" in shown else [],
            "broken": ", ".join(problems) or None,
        }

    @app.get("/api/cases")
    def case_list() -> JSONResponse:
        return JSONResponse({"cases": [row(i, c) for i, c in enumerate(cases)]})

    def case_of(index: int) -> ViewerCase:
        if not 0 <= index < len(cases):
            raise HTTPException(404, "no such case")
        return cases[index]

    async def body(request: Request, limit: int) -> bytes:
        """The request's body, refused (413) past ``limit`` bytes without reading it all."""
        if int(request.headers.get("content-length") or 0) > limit:
            raise HTTPException(413, "request too large")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise HTTPException(413, "request too large")
        return data

    def reviewing() -> Review:
        if review is None:
            raise HTTPException(403, "this viewer is read-only")
        return review

    @app.put("/api/cases/{index}/review")
    async def set_review(index: int, request: Request) -> JSONResponse:
        c, store = case_of(index), reviewing()
        try:
            asked = Verdict.model_validate_json(await body(request, MAX_REVIEW_BODY))
        except ValueError:
            raise HTTPException(422, "give {verdict, note}, a note of at most 2000 characters") from None
        if asked.verdict is not None and asked.verdict not in VERDICTS:
            raise HTTPException(422, f"the verdict is one of: {', '.join(VERDICTS)}")
        return JSONResponse(store.set(_key(c), verdict=asked.verdict, note=asked.note))

    @app.post("/api/cases/{index}/correction")
    async def save_correction(index: int, request: Request) -> JSONResponse:
        c, store = case_of(index), reviewing()
        try:
            path = volumes.nifti(index, "image", c.image)
        except _Unreadable:
            raise HTTPException(422, f"case {index}: the image could not be read") from None
        voxels = int(np.prod(_shape_of(path)))
        data = await body(request, voxels + 4096)
        try:
            labels = drawing_to_labels(data, voxels + 4096)
            saved = store.save_correction(_key(c), c.case_id, labels, c.image)
        except ValueError as e:
            log.info("correction of case %d refused: %s", index, e)
            raise HTTPException(422, "the drawing does not match the case's image (shape or format)") from None
        return JSONResponse({"saved": f"corrections/{saved.name}", "labels": sorted(int(v) for v in np.unique(labels))})

    @app.get("/api/cases/{index}/{kind}.nii.gz")
    def volume(index: int, kind: str) -> FileResponse:
        if not 0 <= index < len(cases) or kind not in KINDS:
            raise HTTPException(404, "no such case or volume")
        source = _source(cases[index], kind)
        if source is None:
            raise HTTPException(404, f"case {index} has no {kind}")
        try:
            path = volumes.nifti(index, kind, source)
        except _Unreadable as e:  # say which case, keep serving the others; the file and the cause go to the log
            log.warning("%s of case %d (%s) cannot be shown: %s", kind, index, cases[index].case_id, e.detail)
            raise HTTPException(422, f"case {index}: the {kind} could not be read ({e.reason})") from None
        return FileResponse(path, media_type="application/gzip", filename=f"{cases[index].case_id}_{kind}.nii.gz")

    return app


def _finite(value: float | str | None) -> float | str | None:
    """``value``, or ``None`` for NaN and infinities (JSON has no such numbers)."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _key(case: ViewerCase) -> str:
    """A case's key in the review file."""
    return f"{case.group}/{case.case_id}"


def _shape_of(path: Path) -> tuple[int, ...]:
    """The spatial shape promised by a NIfTI file's header."""
    head = _read_start(path)
    endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
    if struct.unpack(f"{endian}i", head[:4])[0] == 348:
        dims = struct.unpack(f"{endian}8h", head[40:56])
    else:
        dims = struct.unpack(f"{endian}8q", head[16:80])
    return tuple(int(d) for d in dims[1 : min(dims[0], 3) + 1])


def _source(case: ViewerCase, kind: str) -> Path | None:
    return {"image": case.image, "prediction": case.prediction, "reference": case.reference}[kind]


def _bare(host: str) -> str:
    """``host`` without the brackets of an IPv6 literal (``[::1]`` -> ``::1``)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def trusted_hosts(host: str) -> list[str]:
    """The ``Host`` header values to answer when listening on ``host``: its own name, and the loopback names when
    it is a loopback or all-interfaces address (then also this machine's name). Other names are refused, so that
    a web page cannot reach the viewer through a domain name that its attacker re-points to this machine."""
    bare = _bare(host).lower()
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    names = [f"[{bare}]" if address is not None and address.version == 6 else bare] if bare else []
    if bare in ("", "localhost") or (address is not None and (address.is_loopback or address.is_unspecified)):
        names += LOOPBACK_NAMES
    if bare == "" or (address is not None and address.is_unspecified):  # all interfaces: this machine's names
        names += [socket.gethostname().lower(), socket.getfqdn().lower()]
        try:
            found = socket.getaddrinfo(socket.gethostname(), None)
        except OSError:
            found = []
        names += [f"[{a[4][0]}]" if a[0] == socket.AF_INET6 else str(a[4][0]) for a in found]
    return list(dict.fromkeys(n for n in names if n))


def protect(app: Any, host: str) -> Any:
    """``app`` behind a ``Host`` check for an app served on ``host`` (see :func:`trusted_hosts`): 400 otherwise."""
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    return TrustedHostMiddleware(app, allowed_hosts=trusted_hosts(host), www_redirect=False)


def serve(app: Any, host: str = "127.0.0.1", port: int = 8765, on_ready: Callable[[str], None] = print) -> None:
    """Serve ``app`` until interrupted; ``on_ready`` gets the address once the port is bound (``port=0``: any).

    The port and address are checked (and the port bound) before anything starts, so that a wrong ``--port`` or a
    taken one is a one-line error, not a server that fails half-started.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise VesaliusError(f"port {port} is out of range", remedy="give a --port from 0 to 65535 (0: any free port)")
    bare = _bare(host)
    try:
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        sock = socket.socket(family)
    except OSError as e:
        raise VesaliusError(f"cannot listen on {host} ({e.strerror})", remedy="choose another --host") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
    except (OSError, OverflowError, UnicodeError) as e:
        sock.close()
        reason = getattr(e, "strerror", None) or str(e)
        raise VesaliusError(
            f"cannot listen on {host}:{port} ({reason})", remedy="choose another --port (or --host)"
        ) from None
    bound = sock.getsockname()[1]
    shown = f"[{bare}]" if ":" in bare else bare
    on_ready(f"http://{shown}:{bound}/")
    server = uvicorn.Server(uvicorn.Config(protect(app, host), log_level="warning"))
    server.run(sockets=[sock])
