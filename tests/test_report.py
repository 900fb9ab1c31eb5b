"""The HTML report: built from a short synthetic run, an evaluation folder and a classification run; it parses,
holds every section, embeds its pictures and opens offline (checked in headless Chromium with the network cut)."""

from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vesalius.cli import main
from vesalius.data.synthetic import write_segmentation_dataset
from vesalius.io import read_image, write_image
from vesalius.reporting.report import SECTIONS, build_report, build_report_or_warn

PNG = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Section ids, image sources and every URL-valued attribute of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.scripts = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(values.get("id") or "")
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "script":
            self.scripts += 1
        self.urls += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith(("#", "data:"))]


def _check_self_contained(html: str, kind: str) -> _Page:
    page = _Page(html)
    assert page.sections == list(SECTIONS[kind])
    assert page.urls == [] and page.scripts == 0, "the report must not load anything"
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    return page


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding a 4-case 3D phantom set and the folder of a short run on it: its settings, a 3-epoch log
    and validation predictions (phantom_001 perfect, phantom_002 with its lesion missed, phantom_003 shifted)."""
    import vesalius

    root = tmp_path_factory.mktemp("report")
    write_segmentation_dataset(root / "src", 4, seed=5)
    ws = root / "ws"
    vesalius.import_dataset(root / "src", "ph", workspace=ws)
    run = ws / "runs" / "ph" / "3d" / "fold_0"
    (run / "validation").mkdir(parents=True)
    split = {"train": ["phantom_000"], "val": ["phantom_001", "phantom_002", "phantom_003"]}
    training = {"dataset": "ph", "config": "3d", "fold": 0, "epochs": 3, "lr": 0.01}
    plan_configuration = {"spacing": [1.0, 1.0, 2.0], "patch_size": [32, 32, 32], "batch_size": 2}
    (run / "training.json").write_text(
        json.dumps({"training": training, "plan_configuration": plan_configuration, "split": split})
    )
    labels = {"0": "background", "1": "organ", "2": "lesion"}
    (run / "plan.json").write_text(json.dumps({"labels": labels, "normalization": [{"scheme": "zscore"}]}))
    rows = [
        {"epoch": e, "iteration": 10 * (e + 1), "elapsed_s": e, "lr": 0.01 / (e + 1), "train_loss": 1.0 / (e + 1)}
        | {"val_loss": 1.2 / (e + 1), "dice_organ": 0.3 * e, "dice_lesion": 0.2 * e, "dice_mean": 0.25 * e}
        for e in range(3)
    ]
    with open(run / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for case_id in split["val"]:
        reference = read_image(ws / "datasets" / "ph" / "labelsTr" / f"{case_id}.nii.gz")
        array = reference.array.copy()
        if case_id == "phantom_002":
            array[array == 2] = 1
        if case_id == "phantom_003":
            array = np.roll(array, 2, axis=1)
        write_image(reference.with_array(array), run / "validation" / f"{case_id}.nii.gz")
    return run


def test_report_of_a_segmentation_run(fake_run: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in fake_run.rglob("*"))
    path = build_report(fake_run, tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    page = _check_self_contained(html, "segmentation")
    assert len(page.images) == 1 + 3 + 3  # learning curves, three box plots, three cases
    assert "best: phantom_001 (mean Dice 1.000)" in html
    assert "worst: phantom_002" in html and "median: phantom_003" in html
    assert "<th>organ</th>" in html and "<th>lesion</th>" in html and "hd95" in html
    assert "mL" in html  # measurements: volumes
    assert "patch_size" in html and "zscore" in html and "1 training, 3 validation" in html
    assert sorted(p.name for p in fake_run.rglob("*")) == before  # the run folder is only read


def test_report_command_writes_into_the_run_by_default(fake_run: Path, tmp_path: Path, capsys: Any) -> None:
    import shutil

    run = tmp_path / "ws" / "runs" / "ph" / "3d" / "fold_0"
    shutil.copytree(fake_run.parents[3], tmp_path / "ws")
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_report_of_an_evaluation_folder(fake_run: Path, tmp_path: Path) -> None:
    from vesalius.evaluation.evaluate import evaluate_folder

    references = tmp_path / "refs"
    references.mkdir()
    for case_id in ("phantom_001", "phantom_002", "phantom_003"):
        source = fake_run.parents[3] / "datasets" / "ph" / "labelsTr" / f"{case_id}.nii.gz"
        (references / source.name).write_bytes(source.read_bytes())
    output = tmp_path / "eval"
    evaluate_folder(fake_run / "validation", references, labels={1: "organ", 2: "lesion"}, output_dir=output)
    images = fake_run.parents[3] / "datasets" / "ph" / "imagesTr"
    html = build_report(output, tmp_path / "eval.html", images=images).read_text(encoding="utf-8")
    page = _check_self_contained(html, "evaluation")
    assert len(page.images) == 3 + 3
    assert "best: phantom_001" in html and "worst: phantom_002" in html
    assert "no image folder given" not in html  # imagesTr/CASE_0000.nii.gz: the first channel is drawn
    html = build_report(output, tmp_path / "eval2.html").read_text(encoding="utf-8")
    assert "no image folder given" in html


def test_report_of_a_classification_run(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "cls" / "2d" / "fold_0"
    (run / "validation" / "gradcam").mkdir(parents=True)
    (run / "training.json").write_text(json.dumps({"task": "classification", "training": {"dataset": "cls"}}))
    rng = np.random.default_rng(0)
    target = np.array([0, 1] * 10)
    p1 = np.clip(0.7 * target + 0.3 * rng.random(20), 0, 1)
    with open(run / "validation" / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "target", "p_absent", "p_present"])
        writer.writerows([f"c{i}", t, 1 - p, p] for i, (t, p) in enumerate(zip(target, p1, strict=True)))
    (run / "log.csv").write_text(
        "epoch,iteration,lr,train_loss,val_loss,val_auc\n0,5,0.1,0.7,0.6,0.8\n1,10,0.01,0.5,0.4,0.9\n"
    )
    from vesalius.reporting.overlay import Overlay

    Overlay(np.full((8, 8, 3), 200, np.uint8), [], {}).save(run / "validation" / "gradcam" / "c1.png")
    html = build_report(run, tmp_path / "cls.html", workspace=tmp_path).read_text(encoding="utf-8")
    page = _check_self_contained(html, "classification")
    assert len(page.images) == 1 + 3 + 1  # curves; confusion matrix, ROC, calibration; one Grad-CAM picture
    assert "p_present" not in html and "present" in html and "auc" in html
    assert '<td class="n">10</td>' in html  # all ten positives found (a perfect separation at 0.5)


def test_a_failing_report_only_warns(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="the report could not be written"):
        assert build_report_or_warn(tmp_path) is None


def test_training_writes_a_report(trained: Any) -> None:
    html = (trained.run_dir / "report.html").read_text(encoding="utf-8")
    _check_self_contained(html, "segmentation")


@pytest.mark.browser
def test_report_opens_offline_in_a_browser(browser: Any, fake_run: Path, tmp_path: Path, artifacts: Path) -> None:
    path = build_report(fake_run, tmp_path / "report.html")
    context = browser.new_context(offline=True)
    requested: list[str] = []

    def only_files(route: Any) -> None:
        requested.append(route.request.url)
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_files)
    page = context.new_page()
    page.goto(path.as_uri())
    complete = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert complete and all(complete), "an embedded picture did not load"
    assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
    assert page.locator("section").count() == len(SECTIONS["segmentation"])
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    context.close()
