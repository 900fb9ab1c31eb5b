"""Classification: importing targets, stratified splits, planning, networks, training, Grad-CAM, CLI end to end.

Everything runs on the synthetic lesion-present / lesion-absent images of :mod:`vesalius.data.synthetic`, with the
tutorial CNN (fast on a CPU) and one torch thread.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vesalius
from vesalius.cli import main
from vesalius.data.dataset import Dataset
from vesalius.data.importers import import_dataset
from vesalius.data.splits import classification_split, stratified_kfold_splits
from vesalius.data.synthetic import make_classification_case, make_segmentation_case, write_classification_dataset
from vesalius.errors import VesaliusError
from vesalius.evaluation.classification import roc_auc
from vesalius.evaluation.classification_eval import evaluate_predictions_csv, score_classification
from vesalius.inference.classify import load_classifier, predict_probabilities
from vesalius.models.classifiers import build_classifier, load_pretrained, num_outputs, to_probabilities
from vesalius.planning.classification import input_size, load_classification_rules
from vesalius.preprocessing.classification import prepare_images
from vesalius.training.classification import train_classification
from vesalius.training.classification_config import ClassificationConfig
from vesalius.training.schedule import learning_rate

SIDE = 32


def _npz(path: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    np.savez(
        path, **{f"{s}_images": x for s, (x, _) in cases.items()}, **{f"{s}_labels": y for s, (_, y) in cases.items()}
    )
    return path


def _synthetic_npz(path: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """A MedMNIST-like 2D npz of SIDE x SIDE uint8 synthetic images, lesion present for odd indices."""
    cases = {}
    for k, (split, n) in enumerate(counts.items()):
        images, labels = [], []
        for i in range(n):
            present = i % 2 == 1
            array = make_classification_case(1000 * (seed + k) + i, present, ndim=2, shape=(SIDE, SIDE)).array[0]
            images.append(np.clip(array / 2.0, 0, 255).astype(np.uint8).T)  # (H, W) rows first, as MedMNIST
            labels.append(int(present))
        cases[split] = (np.stack(images), np.asarray(labels)[:, None])
    return _npz(path, cases)


# ------------------------------------------------------------------------------------------------ data and plan


def test_stratified_folds_keep_class_proportions():
    ids = [f"c{i:03d}" for i in range(50)]
    strata = [0] * 40 + [1] * 10
    splits = stratified_kfold_splits(ids, strata, folds=5, seed=3)
    assert splits == stratified_kfold_splits(ids, strata, folds=5, seed=3)
    assert sorted(k for s in splits for k in s["val"]) == ids
    for s in splits:
        val = s["val"]
        assert len(val) == 10 and sum(strata[ids.index(k)] for k in val) == 2
        assert set(val).isdisjoint(s["train"])


def test_npz_multilabel_and_ordinal_targets(tmp_path, workspace):
    rng = np.random.default_rng(0)
    flags = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 0]])
    source = _npz(tmp_path / "chestmnist.npz", {"train": (rng.integers(0, 256, (4, 5, 6), dtype=np.uint8), flags)})
    dataset, report = import_dataset(source, "chest", workspace=workspace)
    assert report.ok and dataset.target_type == "multilabel" and dataset.labels == {0: "0", 1: "1", 2: "2"}
    assert [c.target for c in dataset.cases] == flags.tolist()
    assert Dataset.load(workspace / "datasets" / "chest").cases[0].target == [1, 0, 1]

    grades = np.array([0, 1, 2, 3, 4, 2])
    images = rng.integers(0, 256, (6, 5, 6, 3), dtype=np.uint8)
    retina = _npz(tmp_path / "retinamnist.npz", {"train": (images, grades), "val": (images[:2], grades[:2])})
    ordinal, _ = import_dataset(retina, "retina", workspace=workspace)
    assert ordinal.target_type == "ordinal" and len(ordinal.labels) == 5
    multiclass, _ = import_dataset(retina, "retina_mc", workspace=workspace, target_type="multiclass")
    assert multiclass.target_type == "multiclass"
    with pytest.raises(VesaliusError, match="does not fit"):
        import_dataset(source, "chest2", workspace=workspace, target_type="binary")


def test_classification_split_official_kfold_and_all(tmp_path, workspace):
    source = _synthetic_npz(tmp_path / "s.npz", {"train": 10, "val": 4, "test": 2})
    dataset, _ = import_dataset(source, "s", workspace=workspace)
    path = tmp_path / "splits.json"
    official = classification_split(dataset, "official", path)
    assert len(official["train"]) == 10 and len(official["val"]) == 4 and len(official["test"]) == 2
    fold = classification_split(dataset, 0, path)
    assert not set(fold["val"]) & set(official["test"]) and len(fold["train"]) + len(fold["val"]) == 14
    assert path.is_file() and classification_split(dataset, 0, path) == fold
    assert classification_split(dataset, "all", path)["val"] == []


def test_plan_input_size_rule():
    rules = load_classification_rules()
    assert input_size(np.array([[28, 28]] * 3), 2, rules) == [28, 28]
    assert input_size(np.array([[512, 256]]), 2, rules) == [224, 112]  # proportions kept, longest side capped
    assert input_size(np.array([[14, 14, 14]]), 3, rules) == [28, 28, 28]


# ------------------------------------------------------------------------------------------------ networks


@pytest.mark.parametrize(
    ("network", "dims", "side"),
    [
        ({"name": "cnn"}, 2, 28),
        ({"name": "cnn"}, 3, 20),
        ({"name": "resnet18", "stem_stride": 1, "width": 0.125}, 2, 28),
        ({"name": "resnet50", "stem_stride": 2, "width": 0.125}, 3, 16),
        ({"name": "densenet121"}, 2, 32),
    ],
)
def test_classifier_shapes(network, dims, side, one_torch_thread):
    model = build_classifier(network, dims, 2, 3)
    assert model(torch.zeros(2, 2, *([side] * dims))).shape == (2, 3)


def test_outputs_to_probabilities():
    assert (num_outputs("ordinal", 5), num_outputs("multilabel", 4), num_outputs("binary", 2)) == (4, 4, 2)
    logits = torch.tensor([[3.0, -1.0, 2.0], [-4.0, -5.0, -6.0]])
    ordinal = to_probabilities(logits, "ordinal")
    assert ordinal.shape == (2, 4) and torch.allclose(ordinal.sum(1), torch.ones(2)) and (ordinal >= 0).all()
    assert int(ordinal[1].argmax()) == 0
    assert torch.allclose(to_probabilities(logits, "multilabel"), torch.sigmoid(logits))
    assert torch.allclose(to_probabilities(logits, "multiclass").sum(1), torch.ones(2))


def test_pretrained_weights_from_rgb_resnet(tmp_path, one_torch_thread):
    network = {"name": "resnet18", "stem_stride": 2, "width": 0.125}
    rgb = build_classifier(network, 2, 3, 10)
    torch.save(rgb.state_dict(), tmp_path / "imagenet.pt")
    grey = build_classifier(network, 2, 1, 2)
    copied = load_pretrained(grey, tmp_path / "imagenet.pt")
    assert copied == len(grey.state_dict()) - 2  # all but the new classification layer
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(VesaliusError, match="tensors match"):
        load_pretrained(build_classifier({"name": "cnn"}, 2, 1, 2), tmp_path / "imagenet.pt")


def test_step_schedule():
    assert [learning_rate(1.0, f, "step") for f in (0.0, 0.49, 0.5, 0.8)] == pytest.approx([1, 1, 0.1, 0.01])


def test_score_multilabel_and_ordinal():
    flags = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probabilities = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6], [0.2, 0.1]])
    scores = score_classification(flags, probabilities, "multilabel", ["a", "b"], bootstrap=0)
    assert scores["accuracy"] == 1.0 and scores["auc"] == 1.0 and set(scores["per_label"]) == {"a", "b"}
    grades = np.array([0, 1, 2])
    ordinal = score_classification(grades, np.eye(3)[[0, 2, 2]], "ordinal", ["0", "1", "2"], bootstrap=0)
    assert ordinal["mae"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained_synthetic(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A tutorial CNN trained briefly (20 epochs, no augmentation) on 64 synthetic 48x48 cases (fold 0)."""
    from vesalius.io import write_image

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cls")
    for i in range(64):
        folder = "present" if i % 2 else "absent"
        write_image(make_classification_case(i, i % 2 == 1, shape=(48, 48)), root / "src" / folder / f"c{i:02d}.nii.gz")
    ws = root / "ws"
    vesalius.import_dataset(root / "src", "syn", workspace=ws)
    off = {k: 0.0 for k in ("p_rotation", "p_scaling", "p_noise", "p_blur", "p_brightness", "p_contrast", "p_gamma")}
    return vesalius.train_classifier(
        "syn", 0, ws, report=False, network="cnn", epochs=20, lr=3e-3, precision="fp32", threads=1, augmentation=off
    )


def _held_out(num: int = 40) -> tuple[list[np.ndarray], np.ndarray]:
    images = [make_classification_case(777_000 + i, i % 2 == 1, shape=(48, 48)).array for i in range(num)]
    return images, np.arange(num) % 2


def test_short_training_beats_an_untrained_model(trained_synthetic, one_torch_thread):
    result = trained_synthetic
    assert result.stopped in ("epochs", "early stopping") and result.validation is not None
    trained = load_classifier(result.run_dir)
    untrained = load_classifier(result.run_dir)
    torch.manual_seed(0)
    untrained.network = build_classifier({"name": "cnn"}, 2, 1, 2).eval()
    images, targets = _held_out()
    prepared = prepare_images(images, trained.plan)
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


def test_gradcam_map_and_overlay(trained_synthetic, tmp_path, one_torch_thread):
    from vesalius.inference.gradcam import gradcam_map, make_gradcam, write_overlay

    model = load_classifier(trained_synthetic.run_dir)
    cam = make_gradcam(model.network, "features.4")
    image, _ = make_segmentation_case(1, ndim=2, shape=(48, 48), num_lesion_classes=1)
    prepared = prepare_images([image.array], model.plan)
    heat = gradcam_map(cam, torch.from_numpy(prepared), 1)
    assert heat.shape == (48, 48) and 0.0 <= heat.min() <= heat.max() <= 1.0
    assert write_overlay(prepared[0], heat, tmp_path / "cam.png").stat().st_size > 0
    volume = np.zeros((1, 8, 9, 10), dtype=np.float32)
    assert write_overlay(volume, np.random.default_rng(0).random((8, 9, 10)), tmp_path / "cam3d.png").is_file()


class _BlobDetector(torch.nn.Module):
    """A fixed-weight 2D classifier whose output 1 is the strongest response of a Gaussian spot filter (``sign``
    1: bright spots, the synthetic lesions; -1: dark spots) and whose output 0 is constant: Grad-CAM of output 1 must
    peak on the lesion (bright) or off it (dark), and Grad-CAM of output 0 carries no evidence at all."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 7, padding=3, bias=False), torch.nn.ReLU())
        r = torch.arange(7.0) - 3
        spot = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5**2))
        with torch.no_grad():
            self.features[0].weight.copy_(sign * spot / spot.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strongest = torch.amax(self.features(x), dim=(2, 3))
        return torch.cat([torch.zeros_like(strongest), strongest], dim=1)


def _lesion_images(num: int, shape: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic 2D images (z-scored, ``(1, *shape)``) with their lesion masks, for the seeds with a lesion."""
    cases = []
    for seed in range(num):
        image, label = make_segmentation_case(seed, ndim=2, shape=shape, num_lesion_classes=1)
        if (label.array[0] == 2).any():
            x = image.array
            cases.append((((x - x.mean()) / x.std()).astype(np.float32), label.array[0] == 2))
    return cases


def test_gradcam_peaks_on_the_lesion(one_torch_thread):
    """Grad-CAM's wiring (layer, gradient weights, sign, upsampling, axis order on non-square images): the map of a
    decision made on the lesion peaks in the lesion; the maps of decisions made elsewhere, or on nothing, do not."""
    from vesalius.inference.gradcam import gradcam_map, make_gradcam

    cases = _lesion_images(12, (48, 56))
    assert len(cases) >= 8
    peaks: dict[float, list[tuple[int, ...]]] = {}
    for sign in (1.0, -1.0):
        cam = make_gradcam(_BlobDetector(sign), "features.1")
        peaks[sign] = []
        for x, _ in cases:
            heat = gradcam_map(cam, torch.from_numpy(x[None]), 1)
            assert heat.shape == (48, 56) and heat.max() == 1.0
            peaks[sign].append(np.unravel_index(int(np.argmax(heat)), heat.shape))
        if sign == 1.0:  # output 0 does not depend on the image: no evidence anywhere
            assert not gradcam_map(cam, torch.from_numpy(cases[0][0][None]), 0).any()
    inside = [bool(lesion[p]) for (_, lesion), p in zip(cases, peaks[1.0], strict=True)]
    dark = [bool(lesion[p]) for (_, lesion), p in zip(cases, peaks[-1.0], strict=True)]
    assert np.mean(inside) >= 0.9, inside
    assert not any(dark), dark


@pytest.mark.parametrize(
    ("network", "dims", "side", "layer"),
    [
        ({"name": "resnet18", "stem_stride": 1, "width": 0.125}, 2, 28, "layer4"),  # 28 -> 4x4 at layer4
        ({"name": "resnet18", "stem_stride": 2, "width": 0.125}, 3, 28, "layer2"),  # layer4 1^3, layer3 2^3
        ({"name": "resnet18", "stem_stride": 2, "width": 0.125}, 3, 64, "layer3"),
        ({"name": "cnn"}, 3, 20, "features.4"),
    ],
)
def test_gradcam_layer_keeps_resolution_and_maps_have_the_input_size(network, dims, side, layer, one_torch_thread):
    from vesalius.inference.gradcam import gradcam_map, make_gradcam
    from vesalius.models.classifiers import GRADCAM_LAYERS, gradcam_layer

    model = build_classifier(network, dims, 1, 2)
    chosen = gradcam_layer(model, network["name"], (1, *[side] * dims))
    assert chosen == layer and chosen in GRADCAM_LAYERS[network["name"]]
    size = (side, side + 4, side - 2)[:dims]
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0))
    heat = gradcam_map(make_gradcam(model, chosen), x, 1)
    assert heat.shape == size and 0.0 <= heat.min() <= heat.max() <= 1.0


def test_bf16_convolutions_of_maps_smaller_than_the_kernel_run_in_fp32(one_torch_thread):
    """oneDNN's bf16 weight gradient of a 3x3x3 convolution of a 2-voxel-deep map is garbage (NaN losses of 3D
    ResNets on 28^3 volumes); fp32_small_convolutions runs those in float32 and leaves the others in bf16."""
    from vesalius.precision import fp32_small_convolutions

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1, bias=False).to(memory_format=torch.channels_last_3d)
    x = torch.randn(4, 16, 2, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    (reference,) = torch.autograd.grad(conv(x).pow(2).sum(), conv.weight)
    handles = fp32_small_convolutions(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        small, large = conv(x), conv(torch.randn(1, 16, 6, 6, 6))
    assert small.dtype == torch.float32 and large.dtype == torch.bfloat16
    (gradient,) = torch.autograd.grad(small.pow(2).sum(), conv.weight)
    torch.testing.assert_close(gradient, reference)

    model = build_classifier({"name": "resnet18", "stem_stride": 2, "width": 0.125}, 3, 1, 2)
    model = model.to(memory_format=torch.channels_last_3d)  # layer3 sees 2^3 maps, layer4 1^3
    fp32_small_convolutions(model)
    volume = torch.rand(4, 1, 28, 28, 28).contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(volume).float(), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for handle in handles:
        handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16


def test_resume_continues_exactly(tmp_path, one_torch_thread):
    write_classification_dataset(tmp_path / "src", num_cases=24, ndim=2, seed=1)
    ws = tmp_path / "ws"
    vesalius.import_dataset(tmp_path / "src", "r", workspace=ws)
    common = {"network": "cnn", "precision": "fp32", "threads": 1, "batch_size": 4, "early_stopping": 0}
    whole = train_classification(ClassificationConfig("r", fold=0, epochs=4, **common), ws)
    weights = {k: v.clone() for k, v in load_classifier(whole.run_dir, "latest").network.state_dict().items()}

    class Killed(Exception):
        pass

    def kill_after_two(row: dict[str, float]) -> None:
        if row["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_classification(
            ClassificationConfig("r", fold=0, epochs=4, **common), ws, force=True, callbacks=[kill_after_two]
        )
    resumed = train_classification(ClassificationConfig("r", fold=0, epochs=4, **common), ws, resume=True)
    assert resumed.epochs == 4
    for key, value in load_classifier(resumed.run_dir, "latest").network.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["multilabel", "ordinal"])
def test_multilabel_and_ordinal_training(kind, tmp_path, one_torch_thread):
    rng = np.random.default_rng(1)
    n = 16
    images = rng.integers(0, 256, (n, 20, 20), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, 3)) if kind == "multilabel" else np.arange(n) % 4
    name = "chestmnist.npz" if kind == "multilabel" else "retinamnist.npz"
    source = _npz(tmp_path / name, {"train": (images[:12], labels[:12]), "val": (images[12:], labels[12:])})
    ws = tmp_path / "ws"
    vesalius.import_dataset(source, "t", workspace=ws)
    result = vesalius.train_classifier("t", workspace=ws, report=False, network="cnn", epochs=2, threads=1)
    assert result.run_dir.name == "fold_official" and result.validation is not None
    assert result.validation["target_type"] == kind
    width = 3 if kind == "multilabel" else 4
    assert len(result.validation["classes"]) == width


def test_training_refuses_segmentation_data(tmp_path, msd_source, workspace):
    import_dataset(msd_source, "seg", workspace=workspace)
    with pytest.raises(VesaliusError, match="segmentation data set"):
        train_classification(ClassificationConfig("seg"), workspace)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_import_train_predict_evaluate(tmp_path, capsys, one_torch_thread):
    source = _synthetic_npz(tmp_path / "lesions.npz", {"train": 24, "val": 8, "test": 6})
    ws = str(tmp_path / "ws")
    assert main(["import", str(source), "les", "-w", ws]) == 0
    assert main(["plan", "les", "-w", ws]) == 0
    plan = json.loads((tmp_path / "ws" / "preprocessed" / "les" / "classification_plan.json").read_text())
    assert plan["task"] == "classification" and plan["input_size"] == [SIDE, SIDE]
    assert "plan written to" in capsys.readouterr().out
    assert main(["train", "les", "-w", ws, "--network", "cnn", "--epochs", "3", "--no-validate"]) == 0
    run = tmp_path / "ws" / "runs" / "les" / "cnn" / "fold_official"
    assert "trained 3 epochs" in capsys.readouterr().out
    images = tmp_path / "to_predict"
    images.mkdir()
    for path in sorted((tmp_path / "ws" / "datasets" / "les" / "imagesTr").glob("test_*"))[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    assert main(["predict", "-i", str(images), "-o", str(out), "-m", str(run), "--explain"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 4 and set(rows[0]) >= {"case_id", "predicted", "p_0", "p_1"}
    assert abs(float(rows[0]["p_0"]) + float(rows[0]["p_1"]) - 1) < 1e-4
    assert len(list((out / "gradcam").glob("*.png"))) == 4
    assert main(["evaluate", str(out / "predictions.csv"), "les", "-w", ws]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 4 and 0 <= summary["accuracy"] <= 1 and len(summary["accuracy_ci"]) == 2
    assert "accuracy" in capsys.readouterr().out


def test_evaluate_csv_refuses_unknown_cases(tmp_path, workspace):
    source = _synthetic_npz(tmp_path / "s.npz", {"train": 4})
    import_dataset(source, "s", workspace=workspace)
    path = tmp_path / "p.csv"
    path.write_text("case_id,file,predicted,p_0,p_1\nnot_a_case,,0,0.9,0.1\n")
    with pytest.raises(VesaliusError, match="not in 's'"):
        evaluate_predictions_csv(path, "s", workspace)
