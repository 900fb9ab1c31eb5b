"""A real PACS for the tests and the PACS benchmark: Orthanc with its DICOMweb plugin (Debian packages ``orthanc``,
``orthanc-dicomweb``), started on 127.0.0.1 with a temporary configuration and storage, and a bearer-token gateway
in front of it.

Orthanc itself knows only HTTP basic authentication; sites put bearer tokens in a gateway in front of it, and so do
these tests (a small proxy that checks the token and forwards with Orthanc's basic credentials).
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD, TOKEN = "radiologist", "s3cret-pw", "token-0123456789abcdef"


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its DICOMweb root, its REST root (for clean-up), and the gateway's DICOMweb root."""

    url: str
    rest: str
    bearer_url: str

    def clear(self) -> None:
        """Delete every patient (the tests share one server)."""
        for patient in _rest_json(f"{self.rest}/patients"):
            request = urllib.request.Request(f"{self.rest}/patients/{patient}", method="DELETE")
            request.add_header("Authorization", _basic())
            urllib.request.urlopen(request, timeout=10).close()


def _basic() -> str:
    import base64

    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _rest_json(url: str) -> list[str]:
    request = urllib.request.Request(url)
    request.add_header("Authorization", _basic())
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway(target_port: int) -> ThreadingHTTPServer:
    """A proxy on 127.0.0.1 that answers 401 without ``Authorization: Bearer TOKEN`` and else forwards the request
    to Orthanc with basic credentials."""

    class Gateway(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.send_header("WWW-Authenticate", "Bearer")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host")}
            headers["Authorization"] = _basic()
            upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            content = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
            upstream.close()

        do_GET = do_POST = do_DELETE = _forward

        def log_message(self, *args: object) -> None:  # quiet
            pass

    return ThreadingHTTPServer(("127.0.0.1", free_port()), Gateway)


class NotInstalled(RuntimeError):
    """Orthanc or its DICOMweb plugin is missing."""


def installed() -> str | None:
    """Why Orthanc cannot run here, or ``None`` when it can."""
    if shutil.which("Orthanc") is None or not PLUGIN.exists():
        return "Orthanc with DICOMweb is not installed (as root, 'make setup' installs orthanc and orthanc-dicomweb)"
    return None


@contextmanager
def running_orthanc(root: Path) -> Iterator[Orthanc]:
    """Orthanc on 127.0.0.1 (basic authentication, storage in ``root``) with DICOMweb and the bearer gateway."""
    why = installed()
    if why:
        raise NotInstalled(why)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "VesaliusTest",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpDescribeErrors": True,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    log = (root / "orthanc.log").open("wb")
    process = subprocess.Popen(["Orthanc", str(root / "config.json")], stdout=log, stderr=subprocess.STDOUT)
    rest = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            _rest_json(f"{rest}/patients")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.close()
                tail = (root / "orthanc.log").read_text(encoding="utf-8", errors="replace")[-500:]
                raise RuntimeError(f"Orthanc did not start: {tail}") from None
            time.sleep(0.2)
    gateway = _gateway(http_port)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        yield Orthanc(f"{rest}/dicom-web", rest, f"http://127.0.0.1:{gateway.server_address[1]}/dicom-web")
    finally:
        gateway.shutdown()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
