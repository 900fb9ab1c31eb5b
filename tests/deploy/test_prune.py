"""Structured channel pruning: the weight mapping is exact (a full U-Net whose dropped channels carry zero weights
computes what the narrow one computes, for every stem, residual depth and an identity residual), the importance
criteria drop dead channels first, and ``prune_run`` turns a trained fold into a validated, narrower run folder that
exports with the pruning in its model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import vesalius
from tests.helpers import copy_workspace
from vesalius.deploy.prune import (
    channel_importance,
    channel_spaces,
    keep_indices,
    prune_network,
    prune_run,
    prune_state,
    zero_channels,
)
from vesalius.errors import VesaliusError
from vesalius.model_package import ModelPackage
from vesalius.models.unet import UNet
from vesalius.runtime.package import Package


def _unet(features: list[int], stem: str, units: int, seed: int, stem_features: int = 4) -> UNet:
    torch.manual_seed(seed)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]] if stem == "full" else [[1, 1, 1], [2, 2, 2], [1, 1, 1]]
    kwargs = {"stem_features": stem_features} if stem == "strided" else {}
    network = UNet(3, 2, 3, features, strides, [[3, 3, 3]] * 3, residual_units=units, stem=stem, **kwargs)
    return network.double()


def _loss(outputs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """A stand-in training loss of the deep-supervision outputs."""
    return sum((o - 0.5).pow(2).mean() for o in outputs) + 0 * targets.sum()


# (full features, narrow features, stem, residual units): the strided case [6, 8, 8] has an identity residual in
# its last stage (8 -> 8 channels, stride 1), so that stage's output shares its input's channel space.
CASES = [
    ([6, 8, 12], [3, 4, 6], "full", 2),
    ([6, 8, 12], [5, 3, 7], "full", 1),
    ([6, 8, 8], [3, 5, 5], "strided", 2),
]


@pytest.mark.parametrize(("full_features", "narrow_features", "stem", "units"), CASES)
def test_a_network_with_its_dropped_channels_zeroed_equals_the_narrow_copy(
    full_features: list[int], narrow_features: list[int], stem: str, units: int, one_torch_thread: None
) -> None:
    full = _unet(full_features, stem, units, seed=0)
    narrow = _unet(narrow_features, stem, units, seed=1)
    spaces = channel_spaces(full)
    sizes = channel_spaces(narrow).sizes
    assert len(sizes) == len(spaces.sizes) and all(n <= f for n, f in zip(sizes, spaces.sizes, strict=True))
    if stem == "strided":  # the identity residual merged the last stage's output with its input
        assert isinstance(full.encoder[2].residual, torch.nn.Identity)
        block = spaces.dims["encoder.2.conv.unit1.conv.weight"][0]
        assert block == spaces.dims["encoder.1.residual.weight"][0]
    generator = torch.Generator().manual_seed(3)
    keep = [torch.randperm(f, generator=generator)[:n].sort().values for f, n in zip(spaces.sizes, sizes, strict=True)]
    zero_channels(full, spaces, keep)
    narrow.load_state_dict(prune_state(full.state_dict(), spaces, keep, narrow))
    x = torch.randn(2, 2, 8, 12, 8, generator=generator, dtype=torch.float64)
    for mode in ("eval", "train"):  # train mode: the deep-supervision outputs of every decoder level too
        full.train(mode == "train")
        narrow.train(mode == "train")
        with torch.no_grad():
            a, b = full(x), narrow(x)
        for got, expected in zip(b if isinstance(b, list) else [b], a if isinstance(a, list) else [a], strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # both criteria rank the zeroed channels last, so pruning by importance keeps exactly the others
    batches = [(torch.randn(2, 2, 8, 12, 8, generator=generator, dtype=torch.float64), torch.zeros(1))]
    for criterion in ("taylor", "l1"):
        importance = channel_importance(full, spaces, criterion, batches, _loss)
        chosen = keep_indices(importance, sizes)
        for space, (got, expected) in enumerate(zip(chosen, keep, strict=True)):
            assert torch.equal(got, expected), (criterion, space)
        state = prune_network(full, narrow, criterion, batches, _loss)
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            k: tuple(v.shape) for k, v in narrow.state_dict().items()
        }


def test_l1_ranks_channels_by_their_producing_filters() -> None:
    full = _unet([6, 8, 12], "full", 2, seed=0)
    spaces = channel_spaces(full)
    space = spaces.dims["encoder.0.conv.unit0.conv.weight"][0][0]  # the first unit's own channels
    with torch.no_grad():
        full.encoder[0].conv.unit0.conv.weight[2] *= 100  # one filter much larger
        full.encoder[0].conv.unit0.conv.weight[4] *= 0.001  # one much smaller
    importance = channel_importance(full, spaces, "l1")[space]
    assert int(importance.argmax()) == 2 and int(importance.argmin()) == 4


def test_bad_criteria_and_sizes_are_refused() -> None:
    full = _unet([6, 8, 12], "full", 2, seed=0)
    with pytest.raises(VesaliusError, match="unknown pruning criterion"):
        channel_importance(full, criterion="random")
    with pytest.raises(VesaliusError, match="needs batches of training patches"):
        channel_importance(full, criterion="taylor")
    with pytest.raises(VesaliusError, match="cannot keep 7 of 6"):
        keep_indices([torch.zeros(6)], [7])


@pytest.fixture(scope="module")
def pruned(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The fold of ``trained`` (copied into a fresh workspace) pruned by half and fine-tuned for a few seconds."""
    ws = copy_workspace(trained.run_dir.parents[3], tmp_path_factory.mktemp("prune"))
    source = ws / "runs" / "ph" / "3d" / "fold_0"
    shutil.copytree(trained.run_dir, source)
    return source, prune_run(source, 0.5, time_budget_s=3, threads=2), ws


@pytest.mark.slow
def test_prune_run_writes_a_validated_narrower_run_that_exports(pruned: tuple[Path, Path, Path], tmp_path: Path):
    source, run, ws = pruned
    assert run == ws / "runs" / "ph" / "3d_w50" / "fold_0"
    full, narrow = ModelPackage(source), ModelPackage(run)
    features = full.trained.configuration.features
    assert narrow.trained.configuration.features == tuple(max(1, int(f * 0.5 + 0.5)) for f in features)
    assert narrow.trained.config == "3d" and narrow.split == full.split
    assert narrow.settings["width"] == 0.5 and narrow.settings["initial_weights"].endswith("pruned_fold_0.pt")
    assert narrow.validation_summary()["cases"].keys() == full.validation_summary()["cases"].keys()
    assert (run / "checkpoint_final.pt").is_file()
    assert vesalius.model_package.find_packages(run.parent) == [narrow]
    package = vesalius.export(run, tmp_path / "pruned.vpkg")
    with Package(package) as opened:
        card = opened.json("model_card.json")
        markdown = opened.read("MODEL_CARD.md").decode()
        contract = opened.contract
    record = card["pruning"]
    assert record["amount"] == 0.5 and record["features_after"] == list(narrow.trained.configuration.features)
    assert record["parameters_after"] < 0.35 * record["parameters_before"]
    assert record["dice_before"]["mean"] == pytest.approx(full.validation_summary()["dice_mean"])
    assert record["dice_after"]["mean"] == pytest.approx(narrow.validation_summary()["dice_mean"])
    organ = card["validation"]["per_class"]["organ"]["mean"]
    assert organ == pytest.approx(narrow.validation_summary()["dice"]["organ"])
    assert card["compression"] is None  # the package can still be compressed to INT8
    assert "## Pruning" in markdown and "Structured channel pruning: 50%" in markdown
    assert contract.dataset == "ph"
    json.dumps(record)  # JSON-ready
    # the same width again refuses to overwrite the pruned run
    with pytest.raises(VesaliusError, match="a run exists here"):
        prune_run(source, 0.5, time_budget_s=3, workspace=ws)


def test_prune_run_refuses_a_bad_amount(tmp_path: Path) -> None:
    for amount in (0, 1, 1.5, True):
        with pytest.raises(VesaliusError, match="between 0 and 1"):
            prune_run(tmp_path, amount, time_budget_s=1)
