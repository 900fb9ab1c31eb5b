"""The HTML report: built from a short synthetic run, an evaluation folder and a classification run; it parses,
holds every section, embeds its pictures and opens offline (checked in headless Chromium with the network cut)."""

from __future__ import annotations

import base64
import csv
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import trained_classification, write_package
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


def test_report_of_an_evaluation_folder(fake_run: Path, tmp_path: Path) -> None:
    from vesalius.evaluation.segmentation import evaluate_folder

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
    write_package(run, trained_classification({0: "absent", 1: "present"}), {"train": [], "val": []})
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


def test_a_run_without_a_training_record_reports_it_not_recorded(fake_run: Path, tmp_path: Path) -> None:
    # fake_run is laid out as an older Vesalius wrote runs: no outcome.json, no log_iterations.csv
    html = build_report(fake_run, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<th>stopped</th><td>not recorded (a run of an older Vesalius)</td>" in html
    assert "<th>epochs run</th><td>not recorded (log.csv holds 3 epochs)</td>" in html
    assert "<th>iterations run</th><td>not recorded (log.csv ends at iteration 30)</td>" in html
    assert "<th>epochs (planned)</th><td>3</td>" in html
    assert "Per epoch (3 epochs, log.csv); training loss every few iterations: not recorded." in html
    # the pseudo-Dice of training's validation patches: the last epoch's and the best
    assert "<th>validation pseudo-Dice, last epoch</th><td>0.500 (organ 0.600, lesion 0.400)</td>" in html
    assert "<th>validation pseudo-Dice, best epoch</th><td>0.500 (epoch 2)</td>" in html


def test_the_report_of_a_training_shows_what_it_did(trained: Any) -> None:
    html = (trained.run_dir / "report.html").read_text(encoding="utf-8")
    assert "<th>stopped</th><td>completed all 4 planned epochs (60 iterations)</td>" in html
    assert "<th>epochs run</th><td>4 of 4 planned</td>" in html
    assert "<th>iterations run</th><td>60 of 60 planned (15 per epoch)</td>" in html
    assert "<th>validation pseudo-Dice, last epoch</th>" in html and "organ" in html
    assert "Training loss every iteration (60 points, log_iterations.csv)" in html


def test_a_run_report_shows_the_reviews_of_its_validation_cases(fake_run: Path, tmp_path: Path) -> None:
    """Verdicts given in the viewer (``vesalius view --review NAME``) appear in the run's report, escaped."""
    import shutil

    from vesalius.evaluation.review import Review

    workspace = tmp_path / "ws"
    shutil.copytree(fake_run.parents[3], workspace)  # the fake run's workspace, so that its reviews are ours
    run = workspace / fake_run.relative_to(fake_run.parents[3])
    html = build_report(run, tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "No review of these cases" in html
    Review.of(workspace, "second-look").set("ph/phantom_002", verdict="needs correction", note="lesion <missed>")
    Review.of(workspace, "second-look").set("other/phantom_003", verdict="reject")  # another data set's case
    html = build_report(run, tmp_path / "report.html").read_text(encoding="utf-8")
    review = html[html.index('<section id="review">') :]
    assert "second-look" in review and "phantom_002" in review and "needs correction" in review
    assert "lesion &lt;missed&gt;" in review and "phantom_003" not in review
