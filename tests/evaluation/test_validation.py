"""The post-processing decision from validation cases, and its application after a JSON round trip."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from vesalius.evaluation.validation import decide_postprocessing
from vesalius.inference.postprocess import apply_postprocessing


def case(*, spurious: bool = False, split: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, reference) pair: class 1 a 27-voxel cube (or, with ``split``, two parts of 8 and 6 voxels,
    predicted exactly), class 2 a perfectly predicted 8-voxel cube; ``spurious`` adds a false-positive class 1 voxel."""
    reference = np.zeros((12, 12, 12), dtype=np.uint8)
    if split:
        reference[0:2, 0:2, 0:2] = 1
        reference[5:7, 5:8, 5] = 1
    else:
        reference[2:5, 2:5, 2:5] = 1
    reference[8:10, 8:10, 8:10] = 2
    prediction = reference.copy()
    if spurious:
        prediction[0, 0, 11] = 1
    return prediction, reference


def test_decide_enables_largest_component_against_spurious_blobs() -> None:
    pairs = [case(spurious=True), case(spurious=True), case()]
    originals = [(p.copy(), r.copy()) for p, r in pairs]
    decision = decide_postprocessing(pairs, [1, 2])
    assert decision["keep_largest_component"] == [1]
    assert decision["cases"] == 3
    assert decision["dice_before"]["1"] == pytest.approx((2 * 54 / 55 + 1) / 3)
    assert decision["dice_after"] == {"1": 1.0, "2": 1.0}
    assert decision["dice_before"]["2"] == 1.0
    assert json.loads(json.dumps(decision)) == decision
    for (p, r), (p0, r0) in zip(pairs, originals, strict=True):
        np.testing.assert_array_equal(p, p0)
        np.testing.assert_array_equal(r, r0)


def test_decide_keeps_it_off_when_the_object_is_split() -> None:
    decision = decide_postprocessing([case(split=True), case(split=True), case(spurious=True)], [1, 2])
    assert decision["keep_largest_component"] == []
    assert decision["dice_after"]["1"] < decision["dice_before"]["1"]


def test_decide_requires_a_gain_above_min_gain() -> None:
    pairs = [case(spurious=True)]
    assert decide_postprocessing(pairs, [1], min_gain=0.0)["keep_largest_component"] == [1]
    assert decide_postprocessing(pairs, [1], min_gain=0.1)["keep_largest_component"] == []


def test_decide_reads_a_generator_one_case_at_a_time() -> None:
    read = []

    def cases() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index in range(3):
            read.append(index)
            yield case(spurious=index != 1)

    decision = decide_postprocessing(cases(), [1, 2])
    assert read == [0, 1, 2]
    assert decision == decide_postprocessing([case(spurious=True), case(), case(spurious=True)], [1, 2])


def test_decide_needs_cases() -> None:
    with pytest.raises(ValueError, match="no validation cases"):
        decide_postprocessing(iter([]), [1])


def test_apply_postprocessing_after_a_json_round_trip_uses_the_decided_connectivity() -> None:
    decision = json.loads(json.dumps(decide_postprocessing([case(spurious=True)], [1, 2], connectivity="face")))
    assert decision["connectivity"] == "face"
    labels = case(spurious=True)[0]
    labels[5, 5, 5] = 1  # touches the class 1 cube by a corner only: a separate component with face connectivity
    original = labels.copy()
    out = apply_postprocessing(labels, decision)
    np.testing.assert_array_equal(out, case()[1])
    np.testing.assert_array_equal(labels, original)
