"""For the viewer's browser tests: the app served on a free port of this machine, and the canvas read back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread, until the block ends; yields its address."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def canvas_pixels(page: Any, save_as: Path | None = None) -> np.ndarray:
    """The page's NiiVue canvas as an ``(H, W, 3)`` int array (a compositor screenshot), also saved to ``save_as``."""
    import io

    from PIL import Image as PILImage

    png = page.locator("#gl").screenshot()
    if save_as is not None:
        save_as.write_bytes(png)
    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB")).astype(int)
