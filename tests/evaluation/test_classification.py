"""Scoring of classification predictions: multi-label and ordinal scores, a predictions CSV with unknown cases."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import synthetic_npz
from vesalius.data.importers import import_dataset
from vesalius.errors import VesaliusError
from vesalius.evaluation.classification import evaluate_predictions_csv, score_classification


def test_score_multilabel_and_ordinal():
    flags = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probabilities = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6], [0.2, 0.1]])
    scores = score_classification(flags, probabilities, "multilabel", ["a", "b"], bootstrap=0)
    assert scores["accuracy"] == 1.0 and scores["auc"] == 1.0 and set(scores["per_label"]) == {"a", "b"}
    grades = np.array([0, 1, 2])
    ordinal = score_classification(grades, np.eye(3)[[0, 2, 2]], "ordinal", ["0", "1", "2"], bootstrap=0)
    assert ordinal["mae"] == pytest.approx(1 / 3)


def test_evaluate_csv_refuses_unknown_cases(tmp_path, workspace):
    source = synthetic_npz(tmp_path / "s.npz", {"train": 4})
    import_dataset(source, "s", workspace=workspace)
    path = tmp_path / "p.csv"
    path.write_text("case_id,file,predicted,p_0,p_1\nnot_a_case,,0,0.9,0.1\n")
    with pytest.raises(VesaliusError, match="not in 's'"):
        evaluate_predictions_csv(path, "s", workspace)
