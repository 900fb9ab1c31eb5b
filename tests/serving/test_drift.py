"""Drift monitoring: features measured as documented (volumes in mL on anisotropic grids, intensities over the predicted
foreground), references built from fingerprints and validation outputs with floored scales, scores that stay low for
requests like the training cases and rise past the threshold when intensities or spacings shift (real phantoms
predicted by a real exported package), and the ``/monitor`` page: self-contained, escaped, one plot per feature."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vesalius.data.synthetic import case_seed, make_classification_case, make_segmentation_case
from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image, read_image
from vesalius.metrics.segmentation import volume_features
from vesalius.runtime import Predictor
from vesalius.runtime.package import Package
from vesalius.serving.drift import (
    DEFAULT_THRESHOLD,
    DriftReference,
    FeatureReference,
    drift_scores,
    drift_status,
    input_features,
    is_output_feature,
    output_features,
    score_history,
)
from vesalius.serving.monitor_page import ModelDriftView, render_monitor_page

Window = list[dict[str, float]]
#: A hand-made segmentation fingerprint: five cases, the second and third spacing axes without spread.
FINGERPRINT: dict[str, Any] = {
    "spacings": [[1.0, 1.0, 3.0], [1.2, 1.0, 3.0], [0.8, 1.0, 3.0], [1.1, 1.0, 3.0], [0.9, 1.0, 3.0]],
    "shapes_before_crop": [[100, 90, 40], [110, 90, 40], [90, 90, 40], [105, 90, 40], [95, 90, 40]],
    "shapes_after_crop": [[80, 70, 30]] * 5,
    "intensity": [
        {
            "mean": 100.0,
            "std": 20.0,
            "median": 98.0,
            "min": 10.0,
            "max": 200.0,
            "percentile_00_5": 50.0,
            "percentile_99_5": 160.0,
        }
    ],
    "class_fraction": {"0": 0.9, "1": 0.1},
    "crop_shrink": 0.5,
    "modalities": ["CT"],
    "num_cases": 5,
}


def _reference(outputs: dict[str, list[float]] | None = None) -> DriftReference:
    reference_outputs = None if outputs is None else {"schema_version": 1, "cases": 5, "features": outputs}
    return DriftReference.from_records("segmentation", FINGERPRINT, reference_outputs, channels=("CT",))


# -- features ---------------------------------------------------------------------------------------------------------
def test_features_by_hand_on_a_tiny_anisotropic_image() -> None:
    geometry = Geometry((0.5, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))  # voxels of 3 mm³
    values = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    image = Image(np.stack([values, 100 - values]), geometry)
    labels = np.zeros((4, 3, 2), np.uint8)
    labels.flat[[1, 5, 7]] = 1  # channel 0 holds the flat index: foreground values 1, 5, 7, 10, 20
    labels.flat[[10, 20]] = 2
    features = input_features(image, labels, "segmentation")
    expected = {
        "spacing:0": 0.5,
        "spacing:1": 2.0,
        "spacing:2": 3.0,
        "shape:0": 4,
        "shape:1": 3,
        "shape:2": 2,
        "intensity_mean:0": 8.6,
        "intensity_p00_5:0": 1.08,  # 1 + 0.02 x (5 - 1): linear interpolation at rank 0.005 x 4
        "intensity_p50:0": 7.0,
        "intensity_p99_5:0": 19.8,  # 10 + 0.98 x (20 - 10)
        "intensity_mean:1": 91.4,
        "intensity_p00_5:1": 80.2,
        "intensity_p50:1": 93.0,
        "intensity_p99_5:1": 98.92,
    }
    assert features == pytest.approx(expected)
    assert input_features(image, labels[None], "segmentation") == features  # (1, *spatial) as well
    names = {0: "background", 1: "liver", 2: "tumour"}
    volumes = output_features("segmentation", labels=image.with_array(labels[None]), names=names)
    assert volumes == pytest.approx({"volume_ml:liver": 3 * 3 / 1000, "volume_ml:tumour": 2 * 3 / 1000})
    json.dumps(features | volumes, allow_nan=False)  # what the jobs database stores


def test_intensities_fall_back_to_the_non_zero_voxels_when_nothing_is_predicted() -> None:
    array = np.zeros((1, 6, 5, 4), np.float32)
    array[0, 1:3, 1:3, 1:3] = [[[10, 20], [30, 40]], [[50, 60], [70, 80]]]
    image = Image(array, Geometry.default(3))
    empty = input_features(image, np.zeros((6, 5, 4), np.uint8), "segmentation")
    assert empty == input_features(image, None, "segmentation")
    assert empty["intensity_mean:0"] == pytest.approx(45.0) and empty["intensity_p50:0"] == pytest.approx(45.0)
    blank = input_features(image.with_array(np.zeros_like(array)), None, "segmentation")
    assert blank["intensity_mean:0"] == 0.0  # nothing non-zero: every voxel
    with pytest.raises(ValueError, match="labels of shape"):
        input_features(image, np.zeros((6, 5), np.uint8), "segmentation")


def test_areas_of_2d_label_maps_and_classification_features() -> None:
    geometry = Geometry((0.5, 0.4), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))  # pixels of 0.2 mm²
    label_map = Image(np.zeros((1, 4, 5), np.uint8), geometry)
    label_map.array[0, :2] = 1  # 10 pixels
    assert volume_features(label_map, {0: "background", 1: "lesion"}) == pytest.approx({"area_cm2:lesion": 0.02})
    picture = Image(np.array([[[0, 0, 4], [8, 0, 12]]], np.float32), geometry)
    features = input_features(picture, None, "classification")
    assert "spacing:0" not in features  # a classification fingerprint records no spacing
    assert features["shape:0"] == 2 and features["shape:1"] == 3
    assert features["intensity_mean:0"] == pytest.approx(4.0)  # the whole image, zeros included
    probabilities = output_features("classification", probabilities=np.array([0.25, 0.75]), names=["no", "yes"])
    assert probabilities == {"probability:no": 0.25, "probability:yes": 0.75}
    with pytest.raises(ValueError, match="2 probabilities for 3 classes"):
        output_features("classification", probabilities=[0.5, 0.5], names=["a", "b", "c"])


# -- reference and scores ---------------------------------------------------------------------------------------------
def test_the_reference_is_the_median_and_mad_of_the_cases_and_the_pooled_statistics() -> None:
    reference = _reference({"volume_ml:liver": [1000.0, 1500.0, 1400.0, 1600.0, 1450.0]})
    spacing = reference.features["spacing:0"]  # 1.0, 1.2, 0.8, 1.1, 0.9: deviations 0, .2, .2, .1, .1
    assert (spacing.centre, spacing.cases, spacing.statistic) == (pytest.approx(1.0), 5, "median")
    assert spacing.scale == pytest.approx(1.4826 * 0.1)
    assert reference.features["shape:0"].centre == 100 and reference.features["shape:0"].scale == pytest.approx(7.413)
    p50 = reference.features["intensity_p50:0"]
    assert (p50.centre, p50.scale, p50.cases) == (98.0, 20.0, 0)  # pooled: the fingerprint's std
    assert {"intensity_mean:0", "intensity_p00_5:0", "intensity_p99_5:0"} <= set(reference.features)
    assert "intensity_min:0" not in reference.features and "shape_after_crop:0" not in reference.features
    liver = reference.features["volume_ml:liver"]  # median 1450; deviations 450, 50, 50, 150, 0 -> MAD 50
    assert liver.centre == 1450.0 and liver.scale == pytest.approx(1.4826 * 50) and reference.has_outputs
    window = [{"spacing:0": 1.3, "intensity_p50:0": 148.0, "volume_ml:liver": 1450.0}] * 10
    scores = drift_scores(reference, window)
    assert scores["spacing:0"] == pytest.approx(0.3 / (1.4826 * 0.1))
    assert scores["intensity_p50:0"] == pytest.approx(2.5)
    assert scores["volume_ml:liver"] == 0.0
    assert set(scores) == {"spacing:0", "intensity_p50:0", "volume_ml:liver"}  # unobserved features: no score


def test_a_reference_without_spread_is_floored_not_infinite() -> None:
    reference = _reference({"volume_ml:lesion": [0.0] * 5, "volume_ml:liver": [1500.0] * 5})
    assert reference.features["spacing:1"].scale == pytest.approx(0.05)  # 5% of 1.0 mm
    assert reference.features["spacing:2"].scale == pytest.approx(0.15)
    assert reference.features["volume_ml:lesion"].scale == pytest.approx(0.01)  # the absolute floor
    same = [{"spacing:1": 1.0, "spacing:2": 3.0, "volume_ml:lesion": 0.0, "volume_ml:liver": 1500.0}] * 10
    assert all(score == 0.0 for score in drift_scores(reference, same).values())
    shifted = [{"spacing:1": 1.1, "spacing:2": 3.3, "volume_ml:liver": 1575.0}] * 10  # 10% and 5% larger
    scores = drift_scores(reference, shifted)
    assert scores == pytest.approx({"spacing:1": 2.0, "spacing:2": 2.0, "volume_ml:liver": 1.0})
    assert all(math.isfinite(s) for s in scores.values())
    with pytest.raises(ValueError, match="positive scale"):
        FeatureReference(1.0, 0.0)


def test_fewer_than_min_observations_give_no_score() -> None:
    reference = _reference()
    window = [{"spacing:0": 2.0}] * 9 + [{"spacing:0": float("nan")}, {"shape:0": 100.0}]
    assert drift_scores(reference, window) == {}  # 9 finite spacings of the 10 needed
    assert set(drift_scores(reference, window, min_observations=9)) == {"spacing:0"}
    status = drift_status(reference, window)
    assert status.scores == {} and not status.drifting and status.observations == 11
    assert "spacing:0" in status.unscored and "intensity_p50:0" in status.unscored
    assert drift_scores(reference, [], min_observations=0) == {}


def test_in_distribution_windows_score_low_and_shifted_ones_past_the_threshold() -> None:
    rng = np.random.default_rng(0)
    cases = rng.uniform(0.8, 1.2, size=(40, 3))
    reference = DriftReference.from_records("segmentation", {"spacings": cases.tolist()})
    like = [{f"spacing:{a}": float(s) for a, s in enumerate(row)} for row in rng.uniform(0.8, 1.2, size=(50, 3))]
    status = drift_status(reference, like)
    assert len(status.scores) == 3 and max(status.scores.values()) < 1.0 and not status.drifting
    doubled = [{k: 2 * v for k, v in o.items()} for o in like]
    status = drift_status(reference, doubled)
    assert status.drifting and list(status.over_threshold) and min(status.scores.values()) > DEFAULT_THRESHOLD


def test_probabilities_score_in_standard_errors_of_the_window_mean() -> None:
    validation = [0.1] * 20 + [0.9] * 20  # half the cases positive
    reference = DriftReference.from_records(
        "classification", None, {"schema_version": 1, "features": {"probability:yes": validation}}
    )
    feature = reference.features["probability:yes"]
    assert feature.statistic == "mean" and feature.centre == pytest.approx(0.5)
    assert feature.scale == pytest.approx(np.std(validation, ddof=1))
    balanced = [{"probability:yes": p} for p in [0.1, 0.9] * 25]
    assert drift_scores(reference, balanced)["probability:yes"] == pytest.approx(0.0, abs=1e-9)
    mostly_positive = [{"probability:yes": 0.9}] * 45 + [{"probability:yes": 0.1}] * 5  # mean 0.82
    expected = 0.32 / (feature.scale * math.sqrt(1 / 50 + 1 / 40))  # standard error of a difference of means
    assert drift_scores(reference, mostly_positive)["probability:yes"] == pytest.approx(expected)
    assert expected > DEFAULT_THRESHOLD
    assert reference.has_outputs and not any(not is_output_feature(n) for n in reference.features)


def test_output_drift_is_unscored_without_validation_outputs() -> None:
    reference = _reference()
    assert not reference.has_outputs
    window = [{"spacing:0": 1.0, "volume_ml:liver": 1000.0}] * 10
    status = drift_status(reference, window)
    assert "volume_ml:liver" in status.unscored and "volume_ml:liver" not in status.scores
    assert status.scores["spacing:0"] == 0.0


def test_the_reference_reads_back_from_json_and_refuses_a_newer_or_broken_one() -> None:
    reference = _reference({"volume_ml:liver": [1.0, 2.0, 3.0]})
    cached = json.loads(json.dumps(reference.to_json(), allow_nan=False))
    assert DriftReference.from_json(cached) == reference
    with pytest.raises(VesaliusError, match="schema version 2"):
        DriftReference.from_json(cached | {"schema_version": 2})
    cached["features"]["spacing:0"]["scale"] = "wide"
    with pytest.raises(VesaliusError, match=r"features\.spacing:0\.scale"):
        DriftReference.from_json(cached)
    with pytest.raises(VesaliusError, match=r"reference_outputs\.json of schema version 9"):
        DriftReference.from_records("segmentation", FINGERPRINT, {"schema_version": 9, "features": {}})
    with pytest.raises(VesaliusError, match=r"unreadable fingerprint\.json"):
        DriftReference.from_records("segmentation", {"spacings": [[1.0, "x"]]})


def test_the_score_history_slides_the_window() -> None:
    reference = _reference()
    observations = [{"spacing:1": 1.0}] * 5 + [{"spacing:1": 1.5}] * 5
    history = score_history(reference, observations, window=4, min_observations=3)["spacing:1"]
    assert history[:2] == [None, None]
    assert history[2:5] == [0.0, 0.0, 0.0]
    assert history[-1] == pytest.approx(10.0)  # the last 4 all at 1.5: 0.5 / 0.05


# -- real phantoms and a real package ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_windows(segmentation_packages: tuple[Path, Path]) -> tuple[DriftReference, dict[str, Window]]:
    """The package's reference, and the features of 12 new phantoms (not trained on) as the service measures them:
    as drawn (``like``), with intensities doubled (``brighter``) and with the voxel spacing doubled (``coarser``)."""
    package = segmentation_packages[0]
    with Package(package) as opened:
        reference = DriftReference.from_package(opened)
    predictor = Predictor(package)
    names = predictor.contract.labels
    windows: dict[str, Window] = {"like": [], "brighter": [], "coarser": []}
    for i in range(12):
        image, _ = make_segmentation_case(case_seed(7, i))
        for kind, shown in (("like", image), ("brighter", image.with_array(image.array * 2))):
            labels = predictor.segment(shown, fast=True)
            windows[kind].append(
                input_features(shown, labels.array[0], "segmentation")
                | output_features("segmentation", labels=labels, names=names)
            )
        # the same voxels on a grid of twice the spacing (predicting the 8-times-larger resampled image would take
        # most of the test's time): the model marks the organ where it is
        g = image.geometry
        coarser = Geometry(tuple(2 * s for s in g.spacing), g.origin, g.direction)
        labels = replace(predictor.segment(image, fast=True), geometry=coarser)
        shown = replace(image, geometry=coarser)
        windows["coarser"].append(
            input_features(shown, labels.array[0], "segmentation")
            | output_features("segmentation", labels=labels, names=names)
        )
    return reference, windows


@pytest.mark.slow
def test_phantoms_like_the_training_cases_score_below_the_threshold(phantom_windows: Any) -> None:
    reference, windows = phantom_windows
    assert reference.task == "segmentation" and reference.channels == ("MRI",) and reference.has_outputs
    assert {"spacing:2", "shape:0", "intensity_p50:0", "volume_ml:organ", "volume_ml:lesion"} <= set(reference.features)
    status = drift_status(reference, windows["like"])
    assert set(status.scores) == set(reference.features)
    assert max(status.scores.values()) < DEFAULT_THRESHOLD, status.scores


@pytest.mark.slow
def test_doubled_intensities_and_spacings_push_their_scores_past_the_threshold(phantom_windows: Any) -> None:
    reference, windows = phantom_windows
    brighter = drift_status(reference, windows["brighter"])
    assert {"intensity_mean:0", "intensity_p50:0", "intensity_p99_5:0"} <= set(brighter.over_threshold)
    assert not any(name.startswith(("spacing", "shape", "volume")) for name in brighter.over_threshold)
    coarser = drift_status(reference, windows["coarser"])
    assert {"spacing:0", "spacing:1", "volume_ml:organ"} <= set(coarser.over_threshold)
    # the training slice spacings span 1-3 mm (a wide reference): doubled, the score rises to about the threshold
    like = drift_status(reference, windows["like"])
    assert coarser.scores["spacing:2"] > like.scores["spacing:2"] + 2
    assert not any(name.startswith(("intensity", "shape")) for name in coarser.over_threshold)


@pytest.mark.slow
def test_the_exported_reference_outputs_are_the_service_s_volumes_of_the_validation_cases(
    segmentation_packages: tuple[Path, Path], trained: Any
) -> None:
    with Package(segmentation_packages[0]) as opened:
        stored = opened.json("reference_outputs.json")
        labels = opened.contract.labels
    files = sorted((trained.run_dir / "validation").glob("*.nii.gz"))
    measured = [volume_features(read_image(f), labels) for f in files]
    assert stored["cases"] == len(files) == 3
    for name, values in stored["features"].items():
        assert values == pytest.approx([m[name] for m in measured], rel=1e-5)


@pytest.mark.slow
def test_a_classifier_s_reference_and_in_distribution_requests(classification_package: Path) -> None:
    with Package(classification_package) as opened:
        reference = DriftReference.from_package(opened)
    assert reference.task == "classification" and reference.has_outputs
    assert {"shape:0", "shape:1", "intensity_mean:0", "probability:present"} <= set(reference.features)
    assert not any(name.startswith("spacing") for name in reference.features)
    predictor = Predictor(classification_package)
    names = predictor.contract.class_names
    window = []
    for i in range(40):
        image = make_classification_case(2000 + i, i % 2 == 1, shape=(48, 48))
        window.append(
            input_features(image, None, "classification")
            | output_features("classification", probabilities=predictor.classify(image), names=names)
        )
    status = drift_status(reference, window)
    assert set(status.scores) == set(reference.features) and not status.drifting, status.scores


# -- the page ---------------------------------------------------------------------------------------------------------
def _view(name: str, observations: list[dict[str, float]], **options: Any) -> ModelDriftView:
    reference = _reference({"volume_ml:<b>liver</b> & co": [1.0, 1.1, 0.9, 1.2, 1.0]})
    timed = [(f"2025-03-01T10:{i:02d}:00+00:00", o) for i, o in enumerate(observations)]
    return ModelDriftView(name, 3, reference, timed, drift_scores(reference, observations[-50:]), **options)


def test_the_monitor_page_is_self_contained_escaped_and_plots_each_feature() -> None:
    drifting = [{"spacing:0": 1.0 + 0.05 * i, "shape:0": 100.0, "volume_ml:<b>liver</b> & co": 1.05} for i in range(30)]
    views = [_view("<script>alert(1)</script>", drifting), _view("quiet", drifting[:3])]
    page = render_monitor_page(views)
    root = ET.fromstring(page)  # well-formed
    assert root.tag == "html"
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page and "volume_ml:&lt;b&gt;liver&lt;/b&gt; &amp; co" in page
    assert not any(s in page for s in ("src=", 'href="http', "<link", "@import", "url("))  # nothing to fetch
    sections = root.findall(".//section")
    assert len(sections) == 2
    plotted = {"spacing:0", "shape:0", "volume_ml:<b>liver</b> & co"}
    assert len(sections[0].findall(".//svg")) == len(plotted) == len(sections[1].findall(".//svg"))
    assert {f.findtext("figcaption").split(" — ")[0] for f in sections[0].iter("figure")} == plotted
    over = [row for row in sections[0].iter("tr") if row.get("class") == "over"]
    assert [row[0].text for row in over] == ["spacing:0"]  # a median of 1.7 mm against 0.8-1.2 mm: drift
    assert "drift in 1 feature(s)" in page and "waiting for 10 requests" in page
    assert "Output drift unavailable" not in page
    assert "threshold" in "".join(sections[0].find(".//svg").itertext())


def test_the_monitor_page_without_models_or_outputs() -> None:
    assert "No model version has been served yet" in render_monitor_page([])
    bare = ModelDriftView("m", "v1", _reference(), [], {})
    page = render_monitor_page([bare])
    ET.fromstring(page)
    assert "Output drift unavailable" in page and "<svg" not in page
