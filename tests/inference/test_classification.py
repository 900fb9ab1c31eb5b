"""Classifying files: the prediction precision is the trained one unless ``--precision`` says otherwise."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from vesalius.cli import main
from vesalius.data.synthetic import make_classification_case
from vesalius.inference.model import load_model
from vesalius.io import write_image
from vesalius.models.classifiers import to_probabilities
from vesalius.preprocessing.classification import prepare_images


def _probabilities(csv_path: Path) -> np.ndarray:
    with csv_path.open(newline="") as f:
        return np.asarray([[float(v) for k, v in row.items() if k.startswith("p_")] for row in csv.DictReader(f)])


def test_predict_precision_is_honoured_for_classifiers(trained_synthetic, tmp_path, one_torch_thread) -> None:
    images = [make_classification_case(900 + i, i % 2 == 1, shape=(48, 48)) for i in range(6)]
    for i, image in enumerate(images):
        write_image(image, tmp_path / "in" / f"c{i}.nii.gz")
    run = str(trained_synthetic.run_dir)
    for name, flags in (("as_trained", []), ("fp32", ["--precision", "fp32"]), ("bf16", ["--precision", "bf16"])):
        assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / name), "-m", run, *flags]) == 0
    as_trained, fp32, bf16 = (_probabilities(tmp_path / n / "predictions.csv") for n in ("as_trained", "fp32", "bf16"))

    model = load_model(trained_synthetic.run_dir)
    assert model.trained.precision == "fp32"  # the fixture trains in fp32
    prepared = prepare_images([i.array for i in images], model.trained.normalization, model.trained.input_size)
    with torch.no_grad():
        reference = to_probabilities(model.network(torch.from_numpy(prepared)), model.trained.target_type).numpy()
    assert np.allclose(as_trained, reference, atol=2e-6) and np.allclose(fp32, reference, atol=2e-6)
    assert not np.allclose(bf16, reference, atol=2e-6)  # bf16 autocast ran: the figures moved
    assert np.allclose(bf16, reference, atol=0.05)  # ... by bf16 rounding only
