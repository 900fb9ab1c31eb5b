"""Classification training: a short training that must learn, exact resume, multi-label and ordinal targets.

Everything runs on the synthetic lesion-present / lesion-absent images of :mod:`vesalius.data.synthetic`, with the
tutorial CNN (fast on a CPU) and one torch thread.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import vesalius
from tests.helpers import write_npz
from vesalius.data.importers import import_dataset
from vesalius.data.synthetic import make_classification_case, write_classification_dataset
from vesalius.errors import VesaliusError
from vesalius.inference.classification import predict_probabilities
from vesalius.inference.model import load_model
from vesalius.metrics.classification import roc_auc
from vesalius.models.classifiers import build_classifier
from vesalius.planning.plan import ClassifierNetwork
from vesalius.preprocessing.classification import prepare_images
from vesalius.training.classification import train_classification
from vesalius.training.settings import ClassificationSettings


def _held_out(num: int = 40) -> tuple[list[np.ndarray], np.ndarray]:
    images = [make_classification_case(777_000 + i, i % 2 == 1, shape=(48, 48)).array for i in range(num)]
    return images, np.arange(num) % 2


def test_short_training_beats_an_untrained_model(trained_synthetic, one_torch_thread):
    result = trained_synthetic
    assert result.stopped in ("epochs", "early stopping") and result.validation is not None
    trained = load_model(result.run_dir)
    untrained = load_model(result.run_dir)
    torch.manual_seed(0)
    untrained.network = build_classifier(ClassifierNetwork("cnn"), 2, 1, 2).eval()
    images, targets = _held_out()
    prepared = prepare_images(images, trained.trained.normalization, trained.trained.input_size)
    scores = {}
    for name, m in (("trained", trained), ("untrained", untrained)):
        probabilities = predict_probabilities([m], prepared)
        scores[name] = (float(np.mean(probabilities.argmax(1) == targets)), roc_auc(targets, probabilities))
    assert scores["trained"][0] >= 0.7 and scores["trained"][1] >= 0.75, scores
    assert scores["untrained"][0] <= 0.6 and scores["untrained"][1] <= 0.65, scores
    summary = json.loads((result.run_dir / "validation" / "summary.json").read_text())
    val = json.loads((result.run_dir / "training.json").read_text())["split"]["val"]
    assert summary["n"] == len(val)
    gallery = sorted(p.stem for p in (result.run_dir / "validation" / "gradcam").glob("*.png"))
    assert len(gallery) == min(12, len(val)) and set(gallery) <= set(val)  # the report's Grad-CAM gallery
    log = list(csv.DictReader((result.run_dir / "log.csv").open()))
    assert len(log) == result.epochs and "val_auc" in log[0]
    assert (result.run_dir / "progress.png").is_file() and (result.run_dir / "checkpoint_best.pt").is_file()


def test_resume_continues_exactly(tmp_path, one_torch_thread):
    write_classification_dataset(tmp_path / "src", num_cases=24, ndim=2, seed=1)
    ws = tmp_path / "ws"
    vesalius.import_dataset(tmp_path / "src", "r", workspace=ws)
    common = {"network": "cnn", "precision": "fp32", "threads": 1, "batch_size": 4, "early_stopping": 0}
    whole = train_classification(ClassificationSettings("r", fold=0, epochs=4, **common), ws)
    weights = {k: v.clone() for k, v in load_model(whole.run_dir, "latest").network.state_dict().items()}

    class Killed(Exception):
        pass

    def kill_after_two(row: dict[str, float]) -> None:
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_classification(
            ClassificationSettings("r", fold=0, epochs=4, **common), ws, force=True, callbacks=[kill_after_two]
        )
    resumed = train_classification(ClassificationSettings("r", fold=0, epochs=4, **common), ws, resume=True)
    assert resumed.epochs == 4
    for key, value in load_model(resumed.run_dir, "latest").network.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["multilabel", "ordinal"])
def test_multilabel_and_ordinal_training(kind, tmp_path, one_torch_thread):
    rng = np.random.default_rng(1)
    n = 16
    images = rng.integers(0, 256, (n, 20, 20), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, 3)) if kind == "multilabel" else np.arange(n) % 4
    name = "chestmnist.npz" if kind == "multilabel" else "retinamnist.npz"
    source = write_npz(tmp_path / name, {"train": (images[:12], labels[:12]), "val": (images[12:], labels[12:])})
    ws = tmp_path / "ws"
    vesalius.import_dataset(source, "t", workspace=ws)
    result = vesalius.train("t", workspace=ws, report=False, network="cnn", epochs=2, threads=1)
    assert result.run_dir.name == "fold_official" and result.validation is not None
    assert result.validation["target_type"] == kind
    width = 3 if kind == "multilabel" else 4
    assert len(result.validation["classes"]) == width


def test_training_refuses_segmentation_data(tmp_path, msd_source, workspace):
    import_dataset(msd_source, "seg", workspace=workspace)
    with pytest.raises(VesaliusError, match="segmentation data set"):
        train_classification(ClassificationSettings("seg"), workspace)
