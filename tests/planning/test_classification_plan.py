"""Classification planning: the input size rule."""

from __future__ import annotations

import numpy as np

from vesalius.planning.classification import input_size, load_classification_rules


def test_plan_input_size_rule():
    rules = load_classification_rules()
    assert input_size(np.array([[28, 28]] * 3), 2, rules) == [28, 28]
    assert input_size(np.array([[512, 256]]), 2, rules) == [224, 112]  # proportions kept, longest side capped
    assert input_size(np.array([[14, 14, 14]]), 3, rules) == [28, 28, 28]
