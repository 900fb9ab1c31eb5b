"""Adversarial training (``--adversarial``): its settings, tiny 3D and 2D runs that log the discriminator, a resume
that gives the uninterrupted run's network and discriminator, and a trained model without the discriminator."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import vesalius
from tests.helpers import copy_workspace
from vesalius.cli import main
from vesalius.errors import VesaliusError
from vesalius.reporting.report import build_report
from vesalius.training import SegmentationSettings
from vesalius.training.adversarial import COLUMNS, Adversary, discriminator_layers
from vesalius.training.segmentation import train_segmentation

#: Tiny runs: 16^3 patches (a discriminator of two strided layers), no validation patches.
TINY = {"iterations_per_epoch": 2, "val_batches": 0, "threads": 2, "patch_size": (16, 16, 16), "batch_size": 2}


def _checkpoint(run: Path, name: str) -> dict[str, Any]:
    return torch.load(run / f"checkpoint_{name}.pt", weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"adversarial": -0.1}, "adversarial weight must be 0"),
        ({"adversarial": math.inf}, "adversarial weight"),
        ({"adversarial": True}, "adversarial weight"),
        ({"adversarial_warmup": 1.0}, r"warm-up is a fraction of the run in \[0, 1\)"),
        ({"adversarial_warmup": -0.5}, "warm-up"),
        ({"adversarial_lr": 0.0}, "discriminator's learning rate must be positive"),
        ({"adversarial_lr": math.nan}, "discriminator's learning rate"),
    ],
)
def test_bad_adversarial_settings_are_one_line_errors(values: dict[str, Any], match: str) -> None:
    with pytest.raises(VesaliusError, match=match) as caught:
        SegmentationSettings("d", **values)
    assert "\n" not in caught.value.one_line()


def test_adversarial_settings_round_trip_and_default_off() -> None:
    settings = SegmentationSettings("d", adversarial=0.01, adversarial_warmup=0.0, adversarial_lr=1e-4)
    assert SegmentationSettings.from_dict(settings.to_dict()) == settings
    assert SegmentationSettings("d").adversarial == 0.0
    assert SegmentationSettings.from_dict({"dataset": "d"}).adversarial == 0.0  # training.json of older runs


def test_the_cli_refuses_a_negative_weight(planned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = planned / "runs" / "ph"
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("*")} if runs.exists() else {}
    assert main(["train", "ph", "--adversarial", "-1", "-w", str(planned)]) == 2
    assert "adversarial weight must be 0 (off) or more" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in runs.rglob("*")} if runs.exists() else {}
    assert after == before  # refused before any run folder was made or touched (other tests may have trained)


def test_the_discriminator_depth_follows_the_thinnest_axis() -> None:
    assert discriminator_layers((40, 40, 40)) == 3
    assert discriminator_layers((20, 320, 256)) == 2  # 20 / 2**3 would leave 2 cells
    assert discriminator_layers((6, 64)) == 1
    with pytest.raises(VesaliusError, match="too thin for the adversarial discriminator"):
        discriminator_layers((5, 64, 64))


@pytest.mark.parametrize(("dims", "dtype"), [(2, None), (3, torch.bfloat16)])
def test_the_adversary_steps_and_scores_patches(dims: int, dtype: torch.dtype | None) -> None:
    """The generator's term flows into the logits (not into the discriminator); the discriminator's step changes
    its weights and records its figures; neither its initialisation nor its steps draw from torch's global
    generator."""
    torch.manual_seed(0)
    patch = (24,) * dims
    images = torch.randn(2, 2, *patch)
    logits = [torch.randn(2, 3, *patch, requires_grad=True), torch.randn(2, 3, *(p // 2 for p in patch))]
    labels = torch.randint(0, 3, (2, 1, *patch))
    rng = torch.get_rng_state()
    adversary = Adversary(
        spatial_dims=dims,
        patch_size=patch,
        image_channels=2,
        num_classes=3,
        features=4,
        weight=0.5,
        warmup=0.5,
        lr=1e-3,
        schedule="poly",
        seed=0,
        device=torch.device("cpu"),
        dtype=dtype,
    )
    assert adversary.generator_loss(images, logits, progress=0.4) is None  # warm-up
    term = adversary.generator_loss(images, logits, progress=0.5)
    assert term is not None and term.dtype == torch.float32 and term.ndim == 0
    term.backward()
    assert logits[0].grad is not None and logits[0].grad.abs().sum() > 0
    assert all(p.grad is None for p in adversary.network.parameters())
    before = {k: v.clone() for k, v in adversary.network.state_dict().items()}
    adversary.discriminator_step(images, logits, labels, progress=0.5, iteration=7)
    assert not _same(before, adversary.network.state_dict())
    means = adversary.means()
    assert list(means) == list(COLUMNS) and all(math.isfinite(v) for v in means.values())
    assert 0 <= means["adv_d_real"] <= 1 and 0 <= means["adv_d_fake"] <= 1
    assert torch.equal(rng, torch.get_rng_state())
    adversary.new_epoch()
    assert all(math.isnan(v) for v in adversary.means().values())


@pytest.mark.slow
def test_a_3d_run_logs_the_discriminator_and_saves_a_model_without_it(planned: Path, tmp_path: Path) -> None:
    ws = copy_workspace(planned, tmp_path)
    adversarial = train_segmentation(
        SegmentationSettings("ph", fold=1, epochs=2, adversarial=0.1, adversarial_warmup=0.3, **TINY), ws
    )
    run = adversarial.run_dir
    rows = _rows(run / "log.csv")
    points = _rows(run / "log_iterations.csv")
    assert len(rows) == 2 and len(points) == 4
    for row in rows + points:
        assert all(math.isfinite(float(row[key])) for key in ("train_loss", *COLUMNS)), row
    assert (run / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "adversary" in _checkpoint(run, "latest")

    plain = train_segmentation(
        SegmentationSettings("ph", fold=1, epochs=2, **TINY), copy_workspace(planned, tmp_path / "p")
    )
    assert "adversary" not in _checkpoint(plain.run_dir, "latest")
    # the same network until the adversarial term starts (iteration 2: half the run), another one after
    losses = [[row["train_loss"] for row in _rows(r.run_dir / "log_iterations.csv")] for r in (adversarial, plain)]
    assert losses[0][:3] == losses[1][:3] and losses[0][3] != losses[1][3]
    final, plain_final = _checkpoint(run, "final"), _checkpoint(plain.run_dir, "final")
    assert not _same(final["model"], plain_final["model"])
    assert set(final) == {"model", "training"} and list(final["model"]) == list(plain_final["model"])
    assert json.loads((run / "model.json").read_text()) == json.loads((plain.run_dir / "model.json").read_text())

    image = next((ws / "datasets" / "ph" / "imagesTr").iterdir())
    written = vesalius.predict(image, tmp_path / "predicted", run, fast=True)
    assert len(written) == 1 and Path(written[0]).is_file()


@pytest.mark.slow
def test_a_2d_run_in_bf16_trains_the_discriminator(planned: Path, tmp_path: Path) -> None:
    ws = copy_workspace(planned, tmp_path)
    settings = {**TINY, "patch_size": (24, 24), "batch_size": 4, "precision": "bf16"}
    result = train_segmentation(SegmentationSettings("ph", "2d", fold=1, epochs=1, adversarial=0.1, **settings), ws)
    rows = _rows(result.run_dir / "log.csv")
    assert all(math.isfinite(float(rows[-1][key])) for key in COLUMNS)
    assert float(rows[-1]["adv_d_loss"]) > 0
    assert build_report(result.run_dir, workspace=ws).is_file()  # its curves have an adversarial panel


@pytest.mark.slow
def test_a_resumed_run_gives_the_uninterrupted_network_and_discriminator(planned: Path, tmp_path: Path) -> None:
    """Interrupted within the second epoch, between the network's step of iteration 3 and the discriminator's
    (the adversarial term is on from iteration 1: 1/4 of the run is past the default warm-up, 0.2)."""
    settings = {**TINY, "epochs": 2, "precision": "fp32", "adversarial": 0.1}
    straight = train_segmentation(SegmentationSettings("ph", fold=2, **settings), copy_workspace(planned, tmp_path))

    ws = copy_workspace(planned, tmp_path / "interrupted")
    step = Adversary.discriminator_step

    def interrupt_at_iteration_3(self: Adversary, *args: Any) -> None:  # (images, outputs, targets, progress, it.)
        if args[-1] == 3:
            raise KeyboardInterrupt
        step(self, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Adversary, "discriminator_step", interrupt_at_iteration_3)
        with pytest.raises(KeyboardInterrupt):
            train_segmentation(SegmentationSettings("ph", fold=2, checkpoint_interval_s=0, **settings), ws)
    run = ws / "runs" / "ph" / "3d" / "fold_2"
    state = _checkpoint(run, "latest")
    assert (state["iteration"], state["epoch_first"]) == (3, 2)  # saved within the second epoch
    assert len(state["adversary"]["figures"]["adv_d_loss"]) == 1
    resumed = train_segmentation(SegmentationSettings("ph", fold=2), ws, resume=True)
    assert resumed.iterations == straight.iterations == 4

    assert _same(_checkpoint(resumed.run_dir, "final")["model"], _checkpoint(straight.run_dir, "final")["model"])
    got, expected = _checkpoint(resumed.run_dir, "latest"), _checkpoint(straight.run_dir, "latest")
    assert _same(got["adversary"]["model"], expected["adversary"]["model"])
    assert got["adversary"]["optimizer"]["state"][0]["step"] == expected["adversary"]["optimizer"]["state"][0]["step"]
    for name in ("log.csv", "log_iterations.csv"):
        a, b = _rows(resumed.run_dir / name), _rows(straight.run_dir / name)
        assert [[r[k] for k in ("train_loss", *COLUMNS)] for r in a] == [
            [r[k] for k in ("train_loss", *COLUMNS)] for r in b
        ]
