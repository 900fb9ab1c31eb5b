"""The viewer: its API (read-only, NIfTI for every format) and, in headless Chromium, what it draws.

Browser tests (mark ``browser``) drive Debian's Chromium through Playwright (``make setup`` installs both) and
skip, saying why, only when Chromium is missing or cannot start. They judge the pixels of the canvas (NiiVue
draws with WebGL2, software-rendered here), not merely that the page loaded. Screenshots go to
``build/test-artifacts/`` (or ``$VESALIUS_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.viewer.browser import canvas_pixels, serving
from vesalius.data.synthetic import make_segmentation_case, write_segmentation_dataset
from vesalius.io import Geometry, Image, read_image, write_image
from vesalius.viewer import app as viewer_app
from vesalius.viewer.cases import collect_cases


@pytest.fixture(scope="module")
def viewer_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a 3-case 3D phantom set ``ph`` (two cases with validation predictions of a run, one of
    them imperfect) and a 2-case 2D phantom set ``flat``."""
    import vesalius

    root = tmp_path_factory.mktemp("viewer")
    ws = root / "ws"
    write_segmentation_dataset(root / "src3d", 3, ndim=3, seed=3)
    write_segmentation_dataset(root / "src2d", 2, ndim=2, seed=4)
    vesalius.import_dataset(root / "src3d", "ph", workspace=ws)
    vesalius.import_dataset(root / "src2d", "flat", workspace=ws)
    validation = ws / "runs" / "ph" / "3d" / "fold_0" / "validation"
    validation.mkdir(parents=True)
    labels = ws / "datasets" / "ph" / "labelsTr"
    for case_id in ("phantom_000", "phantom_001"):
        reference = read_image(labels / f"{case_id}.nii.gz")
        array = reference.array.copy()
        if case_id == "phantom_001":
            array[array == 2] = 1  # a missed lesion
        write_image(reference.with_array(array), validation / f"{case_id}.nii.gz")
    summary = {"cases": {"phantom_000": {"organ": 1.0, "lesion": 1.0}, "phantom_001": {"organ": 0.97, "lesion": 0.0}}}
    (validation / "summary.json").write_text(json.dumps(summary))
    return ws


def _hashes(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def client(viewer_workspace: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(viewer_app.create_app(collect_cases([viewer_workspace]))) as c:
        yield c


def test_case_list_from_a_workspace(client: Any) -> None:
    cases = client.get("/api/cases").json()["cases"]
    assert [(c["group"], c["id"]) for c in cases] == [
        ("flat", "phantom_000"),
        ("flat", "phantom_001"),
        ("ph", "phantom_000"),
        ("ph", "phantom_001"),
        ("ph", "phantom_002"),
    ]
    assert cases[3]["volumes"] == ["image", "prediction", "reference"]
    metrics = cases[3]["metrics"]  # computed from the files (as evaluate does), over the run's summary
    assert set(metrics) == {"run", "dice organ", "dice lesion", "hd95 organ", "hd95 lesion"}
    assert metrics["run"] == "3d/fold_0" and metrics["dice lesion"] == 0.0 and 0.5 < metrics["dice organ"] < 1.0
    assert cases[4]["volumes"] == ["image", "reference"]
    assert cases[3]["labels"] == {"1": "organ", "2": "lesion"}


def test_volumes_are_nifti_and_the_data_is_not_touched(client: Any, viewer_workspace: Path, tmp_path: Path) -> None:
    before = _hashes(viewer_workspace)
    response = client.get("/api/cases/3/prediction.nii.gz")
    assert response.status_code == 200
    path = tmp_path / "prediction.nii.gz"
    path.write_bytes(response.content)
    served = read_image(path)
    original = read_image(viewer_workspace / "runs/ph/3d/fold_0/validation/phantom_001.nii.gz")
    np.testing.assert_array_equal(served.array, original.array)
    assert served.geometry.is_close(original.geometry)
    assert client.get("/api/cases/4/prediction.nii.gz").status_code == 404
    assert client.get("/api/cases/99/image.nii.gz").status_code == 404
    assert client.get("/api/cases/0/../../etc.nii.gz").status_code == 404
    assert _hashes(viewer_workspace) == before


def test_other_formats_are_converted_outside_the_data(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    data = tmp_path / "data"
    rgb = Image(np.random.default_rng(0).integers(0, 256, (3, 9, 7), dtype=np.uint8), Geometry.default(2))
    write_image(rgb, data / "photo.png")
    mask = Image((np.arange(63).reshape(1, 9, 7) % 3 == 0).astype(np.uint8), rgb.geometry)
    write_image(mask, data / "masks" / "photo.png")
    before = sorted(p.name for p in data.rglob("*"))
    with TestClient(viewer_app.create_app(collect_cases([data / "photo.png"], seg=data / "masks"))) as c:
        served = c.get("/api/cases/0/image.nii.gz")
        served_mask = c.get("/api/cases/0/prediction.nii.gz")
    assert served.status_code == served_mask.status_code == 200
    assert gzip.decompress(served.content)[:4] == (348).to_bytes(4, "little")  # a NIfTI-1 header
    path = tmp_path / "out.nii.gz"
    path.write_bytes(served.content)
    grey = read_image(path)
    assert grey.array.shape == (1, 9, 7)
    np.testing.assert_allclose(grey.array[0], rgb.array.astype(np.float32).mean(axis=0), atol=1e-4)
    assert sorted(p.name for p in data.rglob("*")) == before


def test_page_says_how_to_install_niivue_when_it_is_missing(
    client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(viewer_app, "NIIVUE_BUNDLE", tmp_path / "missing.js")
    status = client.get("/api/status").json()
    assert status["niivue"] is False and "npm ci --prefix" in status["install"]
    response = client.get("/niivue.js")
    assert response.status_code == 404 and "npm ci" in response.json()["error"]


def test_view_command_refuses_a_taken_port() -> None:
    from vesalius.errors import VesaliusError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(VesaliusError, match="cannot listen"):
            viewer_app.serve(object(), "127.0.0.1", taken.getsockname()[1], on_ready=lambda _: None)


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture
def server(viewer_workspace: Path) -> Iterator[str]:
    """The viewer of ``viewer_workspace`` served on a free port in a thread; yields its address."""
    with serving(viewer_app.create_app(collect_cases([viewer_workspace]))) as url:
        yield url


@pytest.fixture
def viewer_browser(browser: Any) -> Any:
    if not viewer_app.NIIVUE_BUNDLE.is_file():
        pytest.skip(f"NiiVue is not installed: {viewer_app.install_hint()}")
    return browser


def _red(pixels: np.ndarray) -> int:
    """Pixels tinted by label 1's colour (230, 57, 70): red well above green and blue."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(np.sum((r - g > 40) & (r - b > 40)))


def _wait_for_case(page: Any, index: int) -> None:
    page.wait_for_function(
        f"window.vesalius.error || (window.vesalius.ready && window.vesalius.caseIndex === {index})", timeout=60_000
    )
    assert page.evaluate("window.vesalius.error") is None


@pytest.mark.browser
def test_viewer_draws_toggles_and_switches_cases(viewer_browser: Any, server: str, artifacts: Path) -> None:
    page = viewer_browser.new_page(viewport={"width": 1200, "height": 700})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "#case=3")
    _wait_for_case(page, 3)
    assert page.locator("#case-title").text_content() == "ph / phantom_001"
    shown = canvas_pixels(page, artifacts / "viewer_3d_case.png")
    brightness = shown.mean(axis=-1)
    assert (brightness > 30).mean() > 0.05 and brightness.std() > 10, "the canvas is blank"
    red_all = _red(shown)
    assert red_all > 500, "no label overlay drawn"

    page.uncheck("#show-prediction")
    page.wait_for_timeout(300)
    without_prediction = canvas_pixels(page)
    assert np.abs(without_prediction - shown).mean() > 0.5
    assert _red(without_prediction) < red_all
    page.uncheck("#show-reference")
    page.wait_for_timeout(300)
    bare = canvas_pixels(page, artifacts / "viewer_3d_no_overlays.png")
    assert _red(bare) < 0.05 * red_all, "overlays still drawn after switching them off"
    page.check("#show-prediction")
    page.wait_for_timeout(300)
    assert _red(canvas_pixels(page)) > _red(bare) + 0.3 * red_all

    page.select_option("#window-preset", "bone")  # level 400, width 1800
    page.wait_for_timeout(300)
    assert (page.input_value("#cal-min"), page.input_value("#cal-max")) == ("-500", "1300")
    assert np.abs(canvas_pixels(page) - bare).mean() > 1

    box = page.locator("#gl").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
    page.wait_for_function("document.getElementById('location').textContent.includes('LPS')")
    assert "mm" in page.locator("#location").text_content()

    page.locator("#cases tbody tr", has_text="flat").first.click()  # the first 2D case
    _wait_for_case(page, 0)
    assert page.locator("#case-title").text_content() == "flat / phantom_000"
    flat = canvas_pixels(page, artifacts / "viewer_2d_case.png")
    assert (flat.mean(axis=-1) > 30).mean() > 0.05
    assert flat.shape != shown.shape or np.abs(flat - shown).mean() > 5
    assert page.locator("#layout").is_disabled()  # 2D: one plane, no 3D render
    assert not errors, errors
    page.close()


@pytest.mark.browser
def test_case_list_sorts_by_a_metric(viewer_browser: Any, server: str) -> None:
    page = viewer_browser.new_page(viewport={"width": 1200, "height": 700})
    page.goto(server)
    _wait_for_case(page, 0)
    page.locator("#cases th", has_text="dice lesion").click()
    first = page.locator("#cases tbody tr").first.locator("td").first.text_content()
    assert first == "phantom_001"  # lesion Dice 0.0 sorts first; cases without the metric last
    page.locator("#cases th", has_text="dice lesion").click()
    assert page.locator("#cases tbody tr").first.locator("td").first.text_content() == "phantom_000"
    page.close()


def test_a_2d_phantom_case_loads_through_files_mode(tmp_path: Path) -> None:
    """Files mode: an image, a prediction file and a reference file make one case."""
    image, label = make_segmentation_case(7, ndim=2)
    write_image(image, tmp_path / "c.nii.gz")
    write_image(label, tmp_path / "seg" / "c.nii.gz")
    cases = collect_cases([tmp_path / "c.nii.gz"], seg=tmp_path / "seg" / "c.nii.gz", ref=tmp_path / "seg")
    assert len(cases) == 1 and cases[0].prediction == cases[0].reference == tmp_path / "seg" / "c.nii.gz"
