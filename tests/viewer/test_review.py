"""The viewer as a reviewing tool: correct label rendering (checked on pixels), per-case metrics equal to
``vesalius evaluate``'s, verdicts saved to the review folder, and corrections written on the image's exact grid.

The data: three small 3D cases on an anisotropic grid (a smooth image, two box-shaped labels in the
prediction, the reference shifted by two voxels), so that where a label lands on screen and in a saved file can be
predicted from the voxel indices alone.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.viewer.browser import canvas_pixels, serving
from vesalius.evaluation.review import Review
from vesalius.evaluation.segmentation import evaluate_folder
from vesalius.io import Geometry, Image, read_image, write_image
from vesalius.viewer import app as viewer_app
from vesalius.viewer.cases import collect_cases

SHAPE = (40, 36, 12)
SPACING = (0.8, 1.1, 2.5)
BOX_1 = (slice(6, 18), slice(6, 18), slice(2, 10))
BOX_2 = (slice(22, 34), slice(18, 30), slice(2, 10))
LABELS = {1: "anterior", 2: "posterior"}
DRAW_OPACITY = 0.8
"""NiiVue's default opacity of the pen's drawing."""


GEOMETRY = Geometry(SPACING, (-12.0, 30.0, 7.0), tuple(np.eye(3).ravel()))
"""Anisotropic, off-origin, axis-aligned (a rotated grid is not yet covered by the browser tests)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``images/``, ``pred/`` and ``ref/`` of three cases, and ``dataset.json`` naming the labels."""
    root = tmp_path_factory.mktemp("review")
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    for k in range(3):
        image = (200 + 4 * x + 3 * y + 10 * z + 20 * k).astype(np.float32)
        prediction = np.zeros(SHAPE, np.uint8)
        prediction[BOX_1] = 1
        prediction[BOX_2] = 2
        reference = np.roll(prediction, k, axis=0)  # case k: shifted by k voxels (case 0 perfect)
        write_image(Image(image[None], GEOMETRY), root / "images" / f"hip_{k}.nii.gz")
        write_image(Image(prediction[None], GEOMETRY), root / "pred" / f"hip_{k}.nii.gz")
        write_image(Image(reference[None], GEOMETRY), root / "ref" / f"hip_{k}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "anterior", "2": "posterior"}}))
    (root / "ref" / "dataset.json").write_text((root / "dataset.json").read_text())
    return root


def _app(data: Path, reviews: Path) -> Any:
    cases = collect_cases([data / "images"], seg=data / "pred", ref=data / "ref")
    return viewer_app.create_app(cases, review=Review(reviews))


@pytest.fixture
def client(data: Path, tmp_path: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(_app(data, tmp_path / "reviews")) as c:
        yield c


# ------------------------------------------------------------------------------------------------ API


def test_labels_come_from_the_data_set_and_metrics_equal_evaluate(client: Any, data: Path, tmp_path: Path) -> None:
    cases = client.get("/api/cases").json()["cases"]
    assert cases[0]["labels"] == {"1": "anterior", "2": "posterior"}
    evaluated = evaluate_folder(data / "pred", data / "ref", LABELS, output_dir=tmp_path / "eval")
    with open(tmp_path / "eval" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for c in cases:
        for row in (r for r in rows if r["case"] == c["id"]):
            for metric in ("dice", "hd95"):
                assert c["metrics"][f"{metric} {row['name']}"] == pytest.approx(float(row[metric]), abs=1e-12)
    assert cases[2]["metrics"]["dice anterior"] == pytest.approx(evaluated["cases"]["hip_2"]["anterior"]["dice"])
    assert cases[2]["metrics"]["dice anterior"] < cases[0]["metrics"]["dice anterior"] == 1.0


def test_a_verdict_is_saved_as_json_and_csv_and_survives_a_restart(client: Any, data: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    answer = client.put("/api/cases/1/review", json={"verdict": "needs correction", "note": "posterior, slice 4"})
    assert answer.status_code == 200 and answer.json()["verdict"] == "needs correction"
    saved = json.loads((tmp_path / "reviews" / "review.json").read_text())
    assert saved["cases"]["images/hip_1"] == {
        "verdict": "needs correction",
        "note": "posterior, slice 4",
        "corrected": False,
    }
    with open(tmp_path / "reviews" / "review.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [
            {
                "group": "images",
                "case": "hip_1",
                "verdict": "needs correction",
                "note": "posterior, slice 4",
                "corrected": "False",
            }
        ]
    with TestClient(_app(data, tmp_path / "reviews")) as again:
        assert again.get("/api/cases").json()["cases"][1]["review"]["verdict"] == "needs correction"


def test_bad_reviews_are_refused(client: Any, tmp_path: Path) -> None:
    assert client.put("/api/cases/0/review", json={"verdict": "maybe"}).status_code == 422
    assert client.put("/api/cases/0/review", content=b"not json").status_code == 422
    assert client.put("/api/cases/0/review", json={"verdict": None, "note": "x" * 3000}).status_code == 422
    too_large = client.put("/api/cases/0/review", content=b"{" + b" " * 20_000 + b"}")
    assert too_large.status_code == 413 and too_large.json() == {"error": "request too large"}
    assert client.put("/api/cases/9/review", json={"verdict": "accept"}).status_code == 404
    assert not (tmp_path / "reviews" / "review.json").exists()


def test_a_read_only_viewer_refuses_reviews(data: Path) -> None:
    from fastapi.testclient import TestClient

    with TestClient(viewer_app.create_app(collect_cases([data / "images"]))) as c:
        assert c.put("/api/cases/0/review", json={"verdict": "accept"}).status_code == 403


def _nifti_drawing(array: np.ndarray) -> bytes:
    """A uint8 NIfTI-1 of ``array`` (X, Y, Z), as NiiVue's ``saveImage({isSaveDrawing: true})`` sends it."""
    header = bytearray(352)
    header[0:4] = (348).to_bytes(4, "little")
    header[40:56] = np.array([3, *array.shape, 1, 1, 1, 1], "<i2").tobytes()
    header[70:72] = np.array([2, 8], "<i2").tobytes()[:2]
    header[72:74] = np.array([8], "<i2").tobytes()
    header[108:112] = np.array([352.0], "<f4").tobytes()
    header[344:348] = b"n+1\0"
    return bytes(header) + array.astype(np.uint8).tobytes(order="F")


def test_a_correction_is_written_on_the_image_grid(client: Any, data: Path, tmp_path: Path) -> None:
    drawing = np.zeros(SHAPE, np.uint8)
    drawing[3, 5, 7] = 2
    answer = client.post("/api/cases/1/correction", content=gzip.compress(_nifti_drawing(drawing)))
    assert answer.status_code == 200, answer.text
    saved = read_image(tmp_path / "reviews" / "corrections" / "hip_1.nii.gz")
    assert saved.geometry.is_close(read_image(data / "images" / "hip_1.nii.gz").geometry)
    np.testing.assert_array_equal(saved.array[0], drawing)
    assert client.get("/api/cases").json()["cases"][1]["review"]["corrected"] is True


def test_wrong_corrections_are_refused(client: Any, tmp_path: Path) -> None:
    assert client.post("/api/cases/0/correction", content=_nifti_drawing(np.zeros((5, 5, 5)))).status_code == 422
    assert client.post("/api/cases/0/correction", content=b"garbage" * 100).status_code == 422
    huge = client.post("/api/cases/0/correction", content=b"\0" * (int(np.prod(SHAPE)) + 10_000))
    assert huge.status_code == 413
    assert not (tmp_path / "reviews" / "corrections").exists()


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture
def server(data: Path, tmp_path: Path) -> Iterator[str]:
    with serving(_app(data, tmp_path / "reviews")) as url:
        yield url


def _open(browser: Any, server: str, index: int = 0) -> Any:
    if not viewer_app.NIIVUE_BUNDLE.is_file():
        pytest.skip(f"NiiVue is not installed: {viewer_app.install_hint()}")
    page = browser.new_page(viewport={"width": 900, "height": 700}, device_scale_factor=1)
    page.goto(f"{server}#case={index}")
    page.wait_for_function(
        f"window.vesalius.error || (window.vesalius.ready && window.vesalius.caseIndex === {index})", timeout=60_000
    )
    assert page.evaluate("window.vesalius.error") is None
    page.select_option("#layout", "axial")
    page.uncheck("#crosshair")
    page.wait_for_timeout(200)
    return page


def _screen(page: Any, voxel: tuple[int, int, int], geometry: Geometry = GEOMETRY) -> tuple[int, int]:
    """The canvas pixel (CSS, device scale 1) nearest to the centre of file voxel ``voxel`` on the shown slice:
    NiiVue's world position (RAS mm) of every other pixel, turned into file voxel indices with the file's own
    geometry, so that NiiVue's reorientation is checked, not assumed. The crosshair is first moved to the voxel."""
    spacing = np.asarray(geometry.spacing)
    lps = np.asarray(geometry.origin) + geometry.direction_matrix @ (spacing * np.asarray(voxel, float))
    page.evaluate(
        "(mm) => { const nv = window.vesalius.nv; nv.scene.crosshairPos = nv.mm2frac(mm); nv.drawScene(); }",
        [-lps[0], -lps[1], lps[2]],
    )
    page.wait_for_timeout(200)
    found = page.evaluate(
        """() => { const nv = window.vesalius.nv; const c = nv.gl.canvas; const out = [];
        for (let y = 0; y < c.height; y += 2) for (let x = 0; x < c.width; x += 2) {
          const f = nv.canvasPos2frac([x, y]); if (f[0] < 0) continue;
          const mm = nv.frac2mm(f); out.push([x, y, mm[0], mm[1], mm[2]]); }
        return out; }"""
    )
    points = np.asarray(found, float)
    lps = np.stack([-points[:, 2], -points[:, 3], points[:, 4]], axis=1)
    index = np.linalg.solve(geometry.direction_matrix, (lps - np.asarray(geometry.origin)).T).T / spacing
    best = np.argmin(np.abs(index - np.asarray(voxel)).max(axis=1))
    assert np.abs(index[best] - np.asarray(voxel)).max() < 0.5, (voxel, index[best])
    return int(points[best, 0]), int(points[best, 1])


@pytest.mark.browser
def test_labels_are_drawn_in_their_colours_and_nothing_else_is_tinted(
    browser: Any, server: str, artifacts: Path
) -> None:
    page = _open(browser, server, 1)  # reference shifted by one voxel
    page.fill("#opacity-prediction", "1")
    page.dispatch_event("#opacity-prediction", "input")
    far = _screen(page, (37, 2, 6))  # no label nearby
    inside = {1: _screen(page, (10, 12, 6)), 2: _screen(page, (28, 24, 6))}
    shown = canvas_pixels(page, artifacts / "viewer_review_axial_all_layers.png")
    page.uncheck("#show-prediction")
    page.uncheck("#show-reference")
    page.wait_for_timeout(300)
    bare = canvas_pixels(page)
    assert np.abs(shown[far[1], far[0]] - bare[far[1], far[0]]).max() <= 2, "a voxel far from labels is tinted"
    swatches = {
        int(v): [
            int(n) for n in page.locator(f".legend-item[data-value='{v}'] .swatch").get_attribute("data-rgb").split(",")
        ]
        for v in (1, 2)
    }
    names = page.locator("#legend").inner_text()
    assert "anterior" in names and "posterior" in names
    for value, (x, y) in inside.items():
        assert np.abs(shown[y, x] - swatches[value]).max() <= 3, (value, shown[y, x], swatches[value])
    assert swatches[1] != swatches[2]
    # the reference alone: an outline (the box's centre shows the image, its edge the label's colour)
    page.check("#show-reference")
    page.wait_for_timeout(300)
    reference = canvas_pixels(page)
    x, y = _screen(page, (12, 12, 6))
    assert np.abs(reference[y, x] - bare[y, x]).max() <= 2, "the reference is drawn filled, not as an outline"
    edge = _screen(page, (7, 12, 6))  # first voxel of the shifted box along X
    assert np.abs(reference[edge[1], edge[0]] - bare[edge[1], edge[0]]).max() > 30
    page.close()


@pytest.mark.browser
def test_case_list_metrics_verdicts_and_a_drawn_correction(
    browser: Any, server: str, data: Path, tmp_path: Path, artifacts: Path
) -> None:
    page = _open(browser, server, 0)
    evaluated = evaluate_folder(data / "pred", data / "ref", LABELS, output_dir=tmp_path / "eval")
    head = [t.strip(" \u25b2\u25bc") for t in page.locator("#cases thead th").all_inner_texts()]
    column = head.index("dice anterior")
    for row in page.locator("#cases tbody tr").all():
        cells = row.locator("td").all_inner_texts()
        assert float(cells[column]) == pytest.approx(evaluated["cases"][cells[0]]["anterior"]["dice"], abs=5e-4)
    page.locator("#cases th", has_text="dice anterior").click()  # worst first
    assert page.locator("#cases tbody tr").first.locator("td").first.inner_text().startswith("hip_2")

    page.select_option("#verdict", "reject")
    page.fill("#note", "misses the tail")
    page.click("#save-review")
    page.wait_for_function("document.getElementById('message').textContent.includes('saved')")
    page.reload()
    page.wait_for_function("window.vesalius.ready", timeout=60_000)
    assert page.input_value("#verdict") == "reject" and page.input_value("#note") == "misses the tail"
    assert "reject" in page.locator("#cases tbody tr.selected").inner_text()

    page.select_option("#layout", "axial")
    page.check("#draw")
    page.select_option("#pen", "2")
    page.wait_for_timeout(200)
    x, y = _screen(page, (3, 30, 6))
    box = page.locator("#gl").bounding_box()
    before = canvas_pixels(page)
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_timeout(200)
    near = (y + 3, x + 3)  # inside the painted voxel, off the lines NiiVue draws through the clicked point
    stroke = canvas_pixels(page)[near]
    swatch = [int(n) for n in page.locator(".legend-item[data-value='2'] .swatch").get_attribute("data-rgb").split(",")]
    assert np.abs(stroke - before[near]).max() > 30, (stroke, before[near])  # painted, in the label's own colour
    expected = DRAW_OPACITY * np.asarray(swatch) + (1 - DRAW_OPACITY) * before[near]  # NiiVue blends the pen
    assert np.abs(stroke - expected).max() <= 12, (stroke, expected, swatch)
    page.click("#save-correction")
    page.wait_for_function("window.vesalius.saved !== undefined", timeout=20_000)
    canvas_pixels(page, artifacts / "viewer_review_correction.png")
    saved = read_image(tmp_path / "reviews" / "corrections" / "hip_0.nii.gz")
    image = read_image(data / "images" / "hip_0.nii.gz")
    assert saved.geometry.is_close(image.geometry) and saved.spatial_shape == image.spatial_shape
    assert saved.array[0][3, 30, 6] == 2
    assert set(np.unique(saved.array).tolist()) == {0, 2}
    page.select_option("#layout", "multi")
    page.wait_for_timeout(300)
    canvas_pixels(page, artifacts / "viewer_review_3d.png")
    page.close()


@pytest.mark.browser
def test_the_crosshair_is_thin_and_can_be_hidden(browser: Any, server: str, artifacts: Path) -> None:
    page = _open(browser, server, 0)  # axial, crosshair hidden
    hidden = canvas_pixels(page)
    page.check("#crosshair")
    page.wait_for_timeout(300)
    changed = np.abs(canvas_pixels(page, artifacts / "viewer_crosshair.png") - hidden).max(axis=2) > 30
    assert changed.any(), "no crosshair drawn"
    per_row, per_column = changed.sum(axis=1), changed.sum(axis=0)
    line_rows = np.flatnonzero(per_row > 0.5 * per_row.max())  # the horizontal line
    line_columns = np.flatnonzero(per_column > 0.5 * per_column.max())  # the vertical line
    assert len(line_rows) <= 3 and len(line_columns) <= 3, (len(line_rows), len(line_columns))
    page.close()


def test_corrections_export_as_a_data_set_that_imports(client: Any, data: Path, tmp_path: Path) -> None:
    import shutil

    from vesalius.cli import main

    drawing = np.zeros(SHAPE, np.uint8)
    drawing[2:6, 3:7, 4:8] = 1
    assert client.post("/api/cases/1/correction", content=_nifti_drawing(drawing)).status_code == 200
    workspace = tmp_path / "ws"
    shutil.copytree(tmp_path / "reviews", workspace / "reviews" / "default")
    assert main(["corrections", "export", "-o", str(tmp_path / "corrected"), "-w", str(workspace)]) == 0
    assert sorted(p.name for p in (tmp_path / "corrected" / "labels").iterdir()) == ["hip_1.nii.gz"]
    assert main(["import", str(tmp_path / "corrected"), "fixed", "-w", str(workspace)]) == 0
    (label_file,) = (workspace / "datasets" / "fixed" / "labelsTr").iterdir()
    imported = read_image(label_file)
    np.testing.assert_array_equal(imported.array[0], drawing)
    assert imported.geometry.is_close(read_image(data / "images" / "hip_1.nii.gz").geometry)
    assert main(["corrections", "export", "-o", str(tmp_path / "again"), "--review", "nope", "-w", str(workspace)]) == 2


def test_float_and_32_bit_label_maps_are_sent_as_small_integers(data: Path, tmp_path: Path) -> None:
    """NiiVue's label shader takes only 8- and 16-bit integers: other label maps are converted before sending."""
    from fastapi.testclient import TestClient

    prediction = read_image(data / "pred" / "hip_0.nii.gz")
    write_image(Image(prediction.array.astype(np.float32), GEOMETRY), tmp_path / "pred" / "hip_0.nii.gz")
    write_image(Image(prediction.array.astype(np.int32) * 150, GEOMETRY), tmp_path / "ref" / "hip_0.nii.gz")
    cases = collect_cases([data / "images" / "hip_0.nii.gz"], seg=tmp_path / "pred", ref=tmp_path / "ref")
    with TestClient(viewer_app.create_app(cases)) as client:
        for kind, dtype, scale in (("prediction", np.uint8, 1), ("reference", np.uint16, 150)):
            answer = client.get(f"/api/cases/0/{kind}.nii.gz")
            assert answer.status_code == 200
            (tmp_path / f"{kind}.nii.gz").write_bytes(answer.content)
            sent = read_image(tmp_path / f"{kind}.nii.gz")
            assert sent.array.dtype == dtype
            np.testing.assert_array_equal(sent.array, prediction.array.astype(np.int64) * scale)
            assert sent.geometry.is_close(GEOMETRY)


@pytest.mark.browser
def test_keyboard_navigation(browser: Any, server: str) -> None:
    page = _open(browser, server, 0)
    page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a control
    page.keyboard.press("n")
    page.wait_for_function("window.vesalius.ready && window.vesalius.caseIndex === 1", timeout=30_000)
    page.keyboard.press("p")
    page.wait_for_function("window.vesalius.ready && window.vesalius.caseIndex === 0", timeout=30_000)
    before = page.evaluate("window.vesalius.nv.scene.crosshairPos[2]")
    page.keyboard.press("ArrowUp")
    assert page.evaluate("window.vesalius.nv.scene.crosshairPos[2]") > before  # one slice up
    assert page.is_checked("#show-prediction")
    page.keyboard.press("1")
    assert not page.is_checked("#show-prediction")
    page.keyboard.press("c")
    assert page.is_checked("#crosshair")
    page.keyboard.press("w")
    assert page.input_value("#window-preset") != "auto"
    page.close()


PERMUTED = Geometry(SPACING, (30.0, -12.0, 7.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
"""Axes stored in another order than LPS (as a sagittal acquisition): file axis 0 runs along y, 1 along z, 2 along x."""


@pytest.mark.browser
@pytest.mark.parametrize("geometry", [GEOMETRY, PERMUTED], ids=["axis-aligned", "permuted"])
def test_a_stroke_lands_on_its_voxel(browser: Any, tmp_path: Path, geometry: Geometry) -> None:
    """A stroke clicked on a voxel is saved on that voxel, whatever the order of the file's axes. (Rotated grids
    are not covered: this test's screen-to-voxel mapping misses by about 12 voxels on a grid rotated 20 degrees,
    and whether NiiVue or the mapping is at fault is not settled.)"""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    image = (200 + 4 * x + 3 * y + 10 * z).astype(np.float32)
    write_image(Image(image[None], geometry), tmp_path / "images" / "sag_0.nii.gz")
    cases = collect_cases([tmp_path / "images"])
    with serving(viewer_app.create_app(cases, review=Review(tmp_path / "reviews"))) as url:
        page = _open(browser, url, 0)
        page.check("#draw")
        voxel = (9, 25, 7)
        px, py = _screen(page, voxel, geometry)
        box = page.locator("#gl").bounding_box()
        page.mouse.click(box["x"] + px, box["y"] + py)
        page.wait_for_timeout(200)
        page.click("#save-correction")
        page.wait_for_function("window.vesalius.saved !== undefined", timeout=20_000)
        page.close()
    saved = read_image(tmp_path / "reviews" / "corrections" / "sag_0.nii.gz")
    assert saved.geometry.is_close(geometry) and saved.spatial_shape == SHAPE
    assert saved.array[0][voxel] == 1 and int((saved.array > 0).sum()) >= 1
    painted = np.argwhere(saved.array[0] > 0)
    assert np.abs(painted - np.asarray(voxel)).max() <= 1  # the brush of size 1 stays on (or next to) the voxel


@pytest.mark.browser
def test_brush_size_and_undo(browser: Any, server: str) -> None:
    page = _open(browser, server, 0)
    page.check("#draw")
    painted = "Array.from(window.vesalius.nv.drawBitmap).filter((v) => v > 0).length"
    box = page.locator("#gl").bounding_box()
    x, y = _screen(page, (20, 10, 6))
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_timeout(150)
    single = page.evaluate(painted)
    page.fill("#pen-size", "3")
    page.dispatch_event("#pen-size", "change")
    x, y = _screen(page, (30, 6, 6))
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_timeout(150)
    assert single >= 1 and page.evaluate(painted) - single > single  # a wider brush paints more voxels
    page.click("#undo")
    page.wait_for_timeout(150)
    assert page.evaluate(painted) == single  # the last stroke undone, the first kept
    page.close()
