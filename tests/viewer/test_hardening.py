"""The viewer under hostile or broken conditions: foreign ``Host`` headers (DNS rebinding), errors that must not
leak paths or library text, broken data sets and files, and wrong ports. Each broken thing must leave the rest of
the viewer working, and the command-line tool must answer with one line, never an internal error."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.viewer.browser import serving
from vesalius.data.synthetic import make_segmentation_case, write_segmentation_dataset
from vesalius.errors import VesaliusError
from vesalius.io import write_image
from vesalius.viewer import app as viewer_app
from vesalius.viewer.cases import collect_cases, workspace_cases

GARBAGE = b"\x00\x01 this is not an image \xff\xfe" * 40


@pytest.fixture(scope="module")
def small_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with one 3-case 2D phantom set ``good`` (shared: copy it to break it)."""
    import vesalius

    root = tmp_path_factory.mktemp("hardening")
    write_segmentation_dataset(root / "src", 3, ndim=2, seed=5)
    vesalius.import_dataset(root / "src", "good", workspace=root / "ws")
    return root / "ws"


@pytest.fixture
def workspace(small_workspace: Path, tmp_path: Path) -> Path:
    """A private copy of ``small_workspace`` (files, not links) to break."""
    return Path(shutil.copytree(small_workspace, tmp_path / "ws", symlinks=False))


def _client(app: Any, **kwargs: Any) -> Any:
    from fastapi.testclient import TestClient

    return TestClient(app, **kwargs)


def _no_internals(text: str, *paths: Path) -> None:
    """An error text that shows no path, memory address or library message."""
    for path in paths:
        assert str(path) not in text and path.name not in text, text
    for leak in ("/", "\\", "0x", "Traceback", "itk", "ITK", "zlib", "Error:", "loc"):
        assert leak not in text, (leak, text)


# ------------------------------------------------------------------------------------------------ Host header


def test_foreign_host_headers_are_refused(workspace: Path) -> None:
    app = viewer_app.protect(viewer_app.create_app(collect_cases([workspace])), "127.0.0.1")
    with _client(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/api/status").status_code == 200
        for host in ("127.0.0.1", "localhost:8765", "LOCALHOST", "[::1]:8765", "[::1]"):
            assert c.get("/api/cases", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost.evil.example"):
            response = c.get("/api/cases", headers={"host": host})
            assert response.status_code == 400, host
            assert "phantom" not in response.text


def test_trusted_hosts_follow_the_bound_address() -> None:
    assert viewer_app.trusted_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
    assert set(viewer_app.trusted_hosts("::1")) == {"[::1]", "127.0.0.1", "localhost"}
    assert viewer_app.trusted_hosts("192.168.7.9") == ["192.168.7.9"]  # loopback names cannot reach it anyway
    assert viewer_app.trusted_hosts("viewer.lan") == ["viewer.lan"]
    everywhere = viewer_app.trusted_hosts("0.0.0.0")
    assert {"127.0.0.1", "localhost", "[::1]", socket.gethostname().lower()} <= set(everywhere)
    assert "evil.example" not in everywhere


def test_serve_puts_the_host_check_in_front(monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    """What ``serve`` hands to uvicorn refuses a foreign ``Host`` (uvicorn itself is not started)."""
    import uvicorn

    served: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(self.config.app))
    addresses: list[str] = []
    viewer_app.serve(viewer_app.create_app(collect_cases([workspace])), "127.0.0.1", 0, on_ready=addresses.append)
    assert addresses and addresses[0].startswith("http://127.0.0.1:")
    with _client(served[0], base_url=addresses[0].rstrip("/")) as c:
        assert c.get("/api/status").status_code == 200
        assert c.get("/api/status", headers={"host": "evil.example"}).status_code == 400


def test_a_real_server_refuses_a_rebound_name(workspace: Path) -> None:
    """Over a socket, as a browser would send it after DNS rebinding: ``Host: evil.example`` gets 400."""
    import http.client
    from urllib.parse import urlparse

    app = viewer_app.protect(viewer_app.create_app(collect_cases([workspace])), "127.0.0.1")
    with serving(app) as url:
        port = urlparse(url).port

        def status(host: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.putrequest("GET", "/api/cases", skip_host=True)
            connection.putheader("Host", host)
            connection.endheaders()
            code = connection.getresponse().status
            connection.close()
            return code

        assert status(f"127.0.0.1:{port}") == 200
        assert status(f"localhost:{port}") == 200
        assert status(f"evil.example:{port}") == 400


# ------------------------------------------------------------------------------------------------ errors


def _image_of(workspace: Path, index: int) -> Path:
    return collect_cases([workspace])[index].image


def test_a_corrupt_image_is_an_error_without_internals(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    corrupt = _image_of(workspace, 1)
    corrupt.write_bytes(GARBAGE)
    with _client(viewer_app.create_app(collect_cases([workspace]))) as c, caplog.at_level(logging.INFO):
        cases = c.get("/api/cases").json()["cases"]
        assert [x["broken"] for x in cases] == [None, "image unreadable", None]
        assert cases[1]["volumes"] == [] and cases[0]["volumes"] == ["image", "reference"]
        response = c.get("/api/cases/1/image.nii.gz")
        assert response.status_code == 422
        assert response.json() == {"error": "case 1: the image could not be read (unreadable)"}
        _no_internals(response.text, corrupt, workspace)
        assert c.get("/api/cases/0/image.nii.gz").status_code == 200  # the others still work
        assert c.get("/api/cases/2/reference.nii.gz").status_code == 200
    assert str(corrupt) in caplog.text  # the detail is in the server's log


def test_a_truncated_image_is_found_when_it_is_asked_for(workspace: Path) -> None:
    """A whole header but a cut gzip stream passes the list's quick look; the volume request refuses it and the
    list marks it from then on."""
    truncated = _image_of(workspace, 2)
    content = truncated.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    with _client(viewer_app.create_app(collect_cases([workspace]))) as c:
        assert c.get("/api/cases").json()["cases"][2]["broken"] is None
        response = c.get("/api/cases/2/image.nii.gz")
        assert response.status_code == 422 and response.json()["error"].startswith("case 2:")
        _no_internals(response.text, truncated, workspace)
        assert c.get("/api/cases").json()["cases"][2]["broken"] == "image unreadable"
        assert c.get("/api/cases/2/image.nii.gz").status_code == 422  # remembered, not read again


def test_a_nifti_whose_voxels_are_missing_is_refused(tmp_path: Path) -> None:
    """A complete gzip stream of a NIfTI file that holds fewer voxel bytes than its header promises."""
    image, _ = make_segmentation_case(1, ndim=2)
    path = write_image(image, tmp_path / "cut.nii.gz")
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with _client(viewer_app.create_app(collect_cases([path]))) as c:
        assert c.get("/api/cases/0/image.nii.gz").status_code == 422


def test_a_missing_image_and_a_corrupt_overlay_are_marked(tmp_path: Path) -> None:
    image, label = make_segmentation_case(2, ndim=2)
    write_image(image, tmp_path / "images" / "a.nii.gz")
    write_image(image, tmp_path / "images" / "b.nii.gz")
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "a.nii.gz").write_bytes(GARBAGE)
    write_image(label, tmp_path / "seg" / "b.nii.gz")
    cases = collect_cases([tmp_path / "images"], seg=tmp_path / "seg")
    (tmp_path / "images" / "b.nii.gz").unlink()  # gone after the viewer started
    with _client(viewer_app.create_app(cases)) as c:
        rows = c.get("/api/cases").json()["cases"]
        assert (rows[0]["broken"], rows[0]["volumes"]) == ("prediction unreadable", ["image"])
        assert (rows[1]["broken"], rows[1]["volumes"]) == ("image missing", [])
        assert c.get("/api/cases/0/image.nii.gz").status_code == 200
        response = c.get("/api/cases/1/image.nii.gz")
        assert response.status_code == 422 and response.json() == {
            "error": "case 1: the image could not be read (missing)"
        }
        _no_internals(response.text, tmp_path)


def test_an_unreadable_picture_fails_its_conversion_quietly(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(GARBAGE)
    with _client(viewer_app.create_app(collect_cases([tmp_path / "photo.png"]))) as c:
        response = c.get("/api/cases/0/image.nii.gz")
        assert response.status_code == 422
        _no_internals(response.text, tmp_path / "photo.png")


def test_other_errors_are_short(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _client(viewer_app.create_app(collect_cases([workspace])), raise_server_exceptions=False) as c:
        for url in ("/api/cases/99/image.nii.gz", "/api/cases/0/segmentation.nii.gz", "/nowhere", "/static/nope.js"):
            response = c.get(url)
            assert response.status_code == 404 and set(response.json()) == {"error"}, url
            _no_internals(response.text, workspace)
        response = c.get("/api/cases/abc/image.nii.gz")
        assert response.status_code == 422 and response.json() == {"error": "invalid request"}
        assert c.post("/api/cases").status_code == 405
        monkeypatch.setattr(viewer_app, "PALETTE", None)  # a bug in a route
        response = c.get("/api/status")
        assert response.status_code == 500 and response.json() == {"error": "internal error"}


# ------------------------------------------------------------------------------------------------ broken data sets


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", "5", '{"vesalius_dataset": 1}'])
def test_a_broken_data_set_is_skipped_with_a_warning(workspace: Path, content: str) -> None:
    bad = workspace / "datasets" / "bad"
    shutil.copytree(workspace / "datasets" / "good", bad)
    (bad / "dataset.json").write_text(content)
    with pytest.warns(UserWarning, match="data set 'bad' skipped"):
        cases = collect_cases([workspace])
    assert {c.group for c in cases} == {"good"} and len(cases) == 3


def test_malformed_run_results_keep_the_data_set(workspace: Path) -> None:
    validation = workspace / "runs" / "good" / "2d" / "fold_0" / "validation"
    validation.mkdir(parents=True)
    shutil.copy(_image_of(workspace, 0), validation / "phantom_000.nii.gz")
    (validation / "summary.json").write_text("[")
    with pytest.warns(UserWarning, match="'good'"):
        cases = workspace_cases(workspace)
    assert len(cases) == 3


def test_only_broken_data_sets_is_a_user_error(workspace: Path) -> None:
    (workspace / "datasets" / "good" / "dataset.json").write_text("[]")
    with pytest.warns(UserWarning), pytest.raises(VesaliusError, match="no data set could be read"):
        collect_cases([workspace])


# ------------------------------------------------------------------------------------------------ ports


@pytest.mark.parametrize("port", [70000, -1, 65536])
def test_a_port_out_of_range_is_a_user_error(port: int) -> None:
    with pytest.raises(VesaliusError, match="out of range"):
        viewer_app.serve(object(), "127.0.0.1", port, on_ready=lambda _: pytest.fail("started"))


def test_view_command_answers_in_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``vesalius view`` with a broken data set in the workspace gets as far as the port: out of range, then taken."""
    from vesalius.cli import main

    (workspace / "datasets" / "bad").mkdir()
    (workspace / "datasets" / "bad" / "dataset.json").write_text(json.dumps([1, 2]))
    with pytest.warns(UserWarning, match="'bad'"):
        assert main(["view", str(workspace), "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "port 70000 is out of range" in err and "internal error" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.warns(UserWarning):
            assert main(["view", str(workspace), "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture
def broken_server(workspace: Path) -> Iterator[str]:
    """The viewer of ``workspace`` with case 0's image corrupt and case 2's truncated, served (host check on)."""

    _image_of(workspace, 0).write_bytes(GARBAGE)
    truncated = _image_of(workspace, 2)  # found only when the page asks for it
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with serving(viewer_app.protect(viewer_app.create_app(collect_cases([workspace])), "127.0.0.1")) as url:
        yield url


@pytest.mark.browser
def test_page_marks_a_broken_case_and_shows_the_others(browser: Any, broken_server: str) -> None:
    if not viewer_app.NIIVUE_BUNDLE.is_file():
        pytest.skip(f"NiiVue is not installed: {viewer_app.install_hint()}")
    page = browser.new_page(viewport={"width": 1000, "height": 600})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(broken_server)
    page.wait_for_function("window.vesalius.error || window.vesalius.ready", timeout=60_000)
    assert page.evaluate("window.vesalius.caseIndex") == 1  # the first case that can be shown
    first = page.locator("#cases tbody tr").first
    assert "broken" in (first.get_attribute("class") or "")
    assert first.locator(".broken-mark").text_content() == "image unreadable"
    first.click()
    page.wait_for_function("document.getElementById('message').textContent.includes('cannot show')")
    assert page.locator("#gl").evaluate("e => getComputedStyle(e).visibility") == "hidden"
    page.locator("#cases tbody tr").nth(2).click()
    page.wait_for_function("window.vesalius.error || (window.vesalius.ready && window.vesalius.caseIndex === 2)")
    assert page.evaluate("window.vesalius.error") is not None  # refused by the server, not drawn
    assert page.locator("#cases tbody tr").nth(2).locator(".broken-mark").text_content() == "unreadable"
    page.locator("#cases tbody tr").nth(1).click()
    page.wait_for_function("window.vesalius.error || (window.vesalius.ready && window.vesalius.caseIndex === 1)")
    assert page.evaluate("window.vesalius.error") is None
    assert page.locator("#case-title").text_content() == "good / phantom_001" and not errors, errors
    assert page.locator("#gl").evaluate("e => getComputedStyle(e).visibility") == "visible"
    page.close()
