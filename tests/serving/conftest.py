"""Packages to serve, and real services: ``vesalius serve`` started as its own process on a free port."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from vesalius.deploy.export import export_model
from vesalius.serving.keys import KeyStore
from vesalius.serving.registry import Registry


@pytest.fixture(scope="session")
def segmentation_packages(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """The briefly trained phantom model (``trained``) exported twice, as two distinct packages (v1, v2)."""
    folder = tmp_path_factory.mktemp("served")
    return (
        export_model(trained.run_dir, folder / "phantom_a.vpkg", name="phantom"),
        export_model(trained.run_dir, folder / "phantom_b.vpkg", name="phantom", intended_use="Second version."),
    )


@pytest.fixture(scope="session")
def classification_package(trained_synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The briefly trained 48 x 48 absent/present classifier (``trained_synthetic``) as a package."""
    return export_model(trained_synthetic.run_dir, tmp_path_factory.mktemp("served_cls") / "spots.vpkg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    """A service process and what a client needs to talk to it."""

    url: str
    workspace: Path
    process: subprocess.Popen[bytes]
    log: Path
    admin: str
    user: str
    verify: ssl.SSLContext | bool = True

    def client(self, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=self.verify)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start(workspace: Path, *options: str, admin: str = "", user: str = "") -> Running:
    """Start ``vesalius serve`` on ``workspace`` with ``options``; returns once ``/healthz`` answers."""
    port = free_port()
    log = workspace / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vesalius", "serve", "--port", str(port), "-w", str(workspace), *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the service and nothing else
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    certificate = options[options.index("--ssl-certfile") + 1] if "--ssl-certfile" in options else None
    scheme = "https" if certificate else "http"
    verify = ssl.create_default_context(cafile=certificate) if certificate else True
    running = Running(f"{scheme}://127.0.0.1:{port}", workspace, process, log, admin, user, verify)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service ended (exit {process.returncode}):\n{running.log_text()}")
        try:
            if httpx.get(f"{running.url}/healthz", timeout=1, verify=running.verify).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    running.stop(signal.SIGKILL)
    raise AssertionError(f"the service did not start within 60 s:\n{running.log_text()}")


@pytest.fixture
def service_workspace(tmp_path: Path, segmentation_packages: tuple[Path, Path]) -> tuple[Path, str, str]:
    """A workspace whose registry holds the phantom model (v1, production) and an admin and a predict key."""
    serving = tmp_path / "ws" / "serving"
    registry = Registry(serving / "registry")
    registry.add(segmentation_packages[0], "phantom")
    registry.promote("phantom", "v1", "production")
    keys = KeyStore(serving / "keys.json")
    return tmp_path / "ws", keys.add("ops", "admin"), keys.add("reader", "predict")


@pytest.fixture
def serve(service_workspace: tuple[Path, str, str]) -> Iterator:  # type: ignore[type-arg]
    """``serve(*options)`` starts a service on the prepared workspace; every one started is stopped afterwards."""
    workspace, admin, user = service_workspace
    started: list[Running] = []

    def run(*options: str) -> Running:
        running = start(workspace, *options, admin=admin, user=user)
        started.append(running)
        return running

    yield run
    for running in started:
        running.stop(signal.SIGKILL)
