"""The viewer's web server: a FastAPI app over a list of :class:`~vesalius.viewer.cases.ViewerCase`.

Routes:

- ``/``: the page (``static/index.html``, with ``viewer.js`` and ``viewer.css``);
- ``/niivue.js``: NiiVue's browser bundle from ``node_modules`` next to this file (installed by ``make setup``
  from ``package-lock.json``; never copied into the repository);
- ``/api/status``: whether NiiVue is installed (and the one line that installs it), the label palette;
- ``/api/cases``: the case list with per-case metrics;
- ``/api/cases/{index}/{image|prediction|reference}.nii.gz``: a volume as gzipped NIfTI. NIfTI files are sent as
  they are; other formats are converted once into the app's own temporary folder (pictures with three channels
  become grey), never next to the data.

Cases are addressed by their index in the list, so no path from a request ever reaches the file system.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.io import image_suffix
from vesalius.reporting.overlay import PALETTE
from vesalius.viewer.cases import ViewerCase

__all__ = ["NIIVUE_BUNDLE", "create_app", "install_hint", "serve"]

VIEWER_DIR = Path(__file__).parent
STATIC_DIR = VIEWER_DIR / "static"
NIIVUE_BUNDLE = VIEWER_DIR / "node_modules" / "@niivue" / "niivue" / "dist" / "niivue.umd.js"
"""NiiVue's UMD bundle, installed by ``npm ci`` in this folder."""

KINDS = ("image", "prediction", "reference")


def install_hint() -> str:
    """The one command that installs NiiVue for the viewer."""
    return f"npm ci --prefix {VIEWER_DIR} (or 'make setup')"


class _Volumes:
    """NIfTI files for the browser: the original when it is NIfTI, else a conversion in a private folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="vesalius-viewer-"))
        self.lock = threading.Lock()
        self.converted: dict[tuple[int, str], Path] = {}

    def nifti(self, index: int, kind: str, source: Path) -> Path:
        if image_suffix(source) == ".nii.gz":
            return source
        with self.lock:
            if (index, kind) not in self.converted:
                self.converted[(index, kind)] = self._convert(source, self.folder / f"{index}_{kind}.nii.gz")
            return self.converted[(index, kind)]

    @staticmethod
    def _convert(source: Path, target: Path) -> Path:
        from vesalius.io import Image, read_image, write_image

        image = read_image(source)
        if image.num_channels > 1 and image.ndim == 2:  # a colour picture: NiiVue shows one grey channel
            image = Image(image.array.astype(np.float32).mean(axis=0, keepdims=True), image.geometry)
        return write_image(image, target)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def create_app(cases: list[ViewerCase], title: str = "Vesalius viewer") -> Any:
    """The FastAPI app serving ``cases`` (read-only)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    volumes = _Volumes()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        volumes.close()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/niivue.js", include_in_schema=False)
    def niivue() -> FileResponse:
        if not NIIVUE_BUNDLE.is_file():
            raise HTTPException(404, f"NiiVue is not installed: {install_hint()}")
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
            }
        )

    @app.get("/api/cases")
    def case_list() -> JSONResponse:
        rows = [
            {
                "index": i,
                "id": c.case_id,
                "group": c.group,
                "labels": {str(k): v for k, v in c.labels.items()},
                "metrics": c.metrics,
                "volumes": [k for k in KINDS if _source(c, k) is not None],
            }
            for i, c in enumerate(cases)
        ]
        return JSONResponse({"cases": rows})

    @app.get("/api/cases/{index}/{kind}.nii.gz")
    def volume(index: int, kind: str) -> FileResponse:
        if not 0 <= index < len(cases) or kind not in KINDS:
            raise HTTPException(404, "no such case or volume")
        source = _source(cases[index], kind)
        if source is None:
            raise HTTPException(404, f"case {cases[index].case_id} has no {kind}")
        try:
            path = volumes.nifti(index, kind, source)
        except Exception as e:  # an unreadable file: say which, keep serving the others
            raise HTTPException(422, f"{source}: {e}") from None
        return FileResponse(path, media_type="application/gzip", filename=f"{cases[index].case_id}_{kind}.nii.gz")

    return app


def _source(case: ViewerCase, kind: str) -> Path | None:
    return {"image": case.image, "prediction": case.prediction, "reference": case.reference}[kind]


def serve(app: Any, host: str = "127.0.0.1", port: int = 8765, on_ready: Callable[[str], None] = print) -> None:
    """Serve ``app`` until interrupted; ``on_ready`` gets the address once the port is bound (``port=0``: any)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        from vesalius.errors import VesaliusError

        raise VesaliusError(f"cannot listen on {host}:{port} ({e.strerror})", remedy="choose another --port") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    on_ready(f"http://{shown}:{bound}/")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
