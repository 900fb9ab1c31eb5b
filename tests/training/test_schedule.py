"""Learning-rate schedules (poly, cosine, step) as functions of the fraction of the run done."""

from __future__ import annotations

import pytest

from vesalius.training.schedule import learning_rate


def test_learning_rate_schedules_by_hand():
    assert learning_rate(0.01, 0.0) == 0.01
    assert learning_rate(0.01, 0.5) == pytest.approx(0.01 * 0.5**0.9)
    assert learning_rate(0.01, 1.0) == 0.0
    assert learning_rate(2e-3, 0.5, "cosine") == pytest.approx(1e-3)
    assert learning_rate(2e-3, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_step_schedule():
    assert [learning_rate(1.0, f, "step") for f in (0.0, 0.49, 0.5, 0.8)] == pytest.approx([1, 1, 0.1, 0.01])
