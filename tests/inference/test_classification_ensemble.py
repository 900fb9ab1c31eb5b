"""Classifier fold ensembles and test-time augmentation: what ``vesalius predict -m FOLDS [--tta]`` computes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vesalius.cli import main
from vesalius.data.synthetic import make_classification_case
from vesalius.errors import VesaliusError
from vesalius.inference.classification import classify_files, predict_probabilities, trained_mirror_axes
from vesalius.inference.model import LoadedModel, load_model
from vesalius.io import write_image
from vesalius.model_package import ModelPackage
from vesalius.preprocessing.classification import prepare_images


def _probabilities(csv_path: Path) -> np.ndarray:
    with csv_path.open(newline="") as f:
        return np.asarray([[float(v) for k, v in row.items() if k.startswith("p_")] for row in csv.DictReader(f)])


def _images(folder: Path, count: int = 6) -> list:  # type: ignore[type-arg]
    images = [make_classification_case(700 + i, i % 2 == 1, shape=(48, 48)) for i in range(count)]
    for i, image in enumerate(images):
        write_image(image, folder / f"c{i}.nii.gz")
    return images


@pytest.fixture
def two_folds(trained_synthetic, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A folder of two folds: the trained run, and a copy whose final weights are perturbed (a different model)."""
    folds = tmp_path / "folds"
    for k in (0, 1):
        shutil.copytree(trained_synthetic.run_dir, folds / f"fold_{k}")
    package = ModelPackage(folds / "fold_1")
    weights = package.load_checkpoint("final")
    generator = torch.Generator().manual_seed(0)
    weights["model"] = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in weights["model"].items()
    }
    package.save_checkpoint("final", weights)
    return folds


def test_fold_ensemble_averages_the_folds_probabilities(two_folds: Path, tmp_path: Path, one_torch_thread) -> None:
    _images(tmp_path / "in")
    ensemble = _probabilities(classify_files(tmp_path / "in", tmp_path / "ens", two_folds))
    single = [
        _probabilities(classify_files(tmp_path / "in", tmp_path / f"f{k}", two_folds / f"fold_{k}")) for k in (0, 1)
    ]
    assert not np.allclose(single[0], single[1], atol=1e-3)  # two different models ...
    assert np.allclose(ensemble, (single[0] + single[1]) / 2, atol=1e-6)  # ... whose probabilities are averaged
    assert np.allclose(ensemble.sum(axis=1), 1.0, atol=1e-5)


def test_tta_of_a_flip_invariant_model_changes_nothing(trained_synthetic, one_torch_thread) -> None:
    model = load_model(trained_synthetic.run_dir)
    channels = len(model.trained.channels)
    # a 1x1 convolution and global average pooling: a mirrored image has the same logits
    invariant = nn.Sequential(
        nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    loaded = LoadedModel(invariant, model.package)
    images = np.random.default_rng(0).normal(size=(5, channels, *model.trained.input_size)).astype(np.float32)
    plain = predict_probabilities([loaded], images)
    assert np.allclose(predict_probabilities([loaded], images, mirror_axes=(0, 1)), plain, atol=1e-6)
    assert plain.shape == (5, 2)


def test_tta_averages_the_logits_of_every_flip(trained_synthetic, one_torch_thread) -> None:
    model = load_model(trained_synthetic.run_dir)
    images = np.random.default_rng(1).normal(size=(4, len(model.trained.channels), *model.trained.input_size))
    images = images.astype(np.float32)
    x = torch.from_numpy(images)
    with torch.no_grad():
        logits = [model.network(torch.flip(x, dims)) if dims else model.network(x) for dims in ((), (2,), (3,), (2, 3))]
    expected = torch.softmax(torch.stack(logits).mean(0), dim=1).numpy()
    tta = predict_probabilities([model], images, mirror_axes=(0, 1))
    assert np.allclose(tta, expected, atol=1e-5)
    assert not np.allclose(tta, predict_probabilities([model], images), atol=1e-4)  # the flips did matter


def test_predict_tta_uses_the_trained_mirror_axes(trained_synthetic, tmp_path: Path, one_torch_thread) -> None:
    images = _images(tmp_path / "in", 4)
    model = load_model(trained_synthetic.run_dir)
    assert trained_mirror_axes(model) == (0,)  # the 2D plan mirrors axis 0; the fixture leaves mirroring on
    run = str(trained_synthetic.run_dir)
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "tta"), "-m", run, "--tta"]) == 0
    prepared = prepare_images([i.array for i in images], model.trained.normalization, model.trained.input_size)
    expected = predict_probabilities([model], prepared, mirror_axes=(0,))
    written = _probabilities(tmp_path / "tta" / "predictions.csv")
    assert np.allclose(written, expected, atol=1e-5)
    assert not np.allclose(written, predict_probabilities([model], prepared), atol=1e-4)  # mirrored, not plain


def test_bad_input_is_refused_in_one_line(trained_synthetic) -> None:
    model = load_model(trained_synthetic.run_dir)
    good = np.zeros((2, len(model.trained.channels), *model.trained.input_size), dtype=np.float32)
    with pytest.raises(VesaliusError, match="images of shape"):
        predict_probabilities([model], good[:, :, :10])
    with pytest.raises(VesaliusError, match="mirror axes"):
        predict_probabilities([model], good, mirror_axes=(2,))
    with pytest.raises(VesaliusError, match="no models"):
        predict_probabilities([], good)
