"""Structured channel pruning of a trained segmentation U-Net, then a short fine-tune: a narrower, faster network.

:func:`prune_run` takes a trained fold, keeps the most important ``1 - amount`` of the channels of every channel
space of its U-Net (:class:`vesalius.models.unet.UNet`), copies the kept slices of every weight into the network of
width ``1 - amount`` (the plan configuration's features scaled, :attr:`SegmentationSettings.width`), and fine-tunes
that network on the same fold within a time budget (:func:`vesalius.training.segmentation.train_segmentation` with
``width`` and ``initial_weights``), validated as usual (:func:`vesalius.evaluation.validation.validate_run`). The
result is an ordinary run folder (``runs/NAME/CONFIG_wXX/fold_K``) whose ``model.json`` holds the narrower
features, so prediction, export and INT8 compression need to know nothing about pruning; ``vesalius export`` of it
records the pruning in the model card (``pruning``, :func:`pruning_record`: what was done, and the validation
figures before and after).

Why channels, and not unstructured (per-weight) magnitude pruning: a dense convolution on a CPU (oneDNN, ONNX
Runtime) costs the same whether a weight is zero or not, so zeroed weights buy no speed, and the package's size only
shrinks by what its zip compression makes of the zeros. Removing whole channels shrinks every convolution that
produces or reads them, about quadratically in the width.

Channel spaces. A channel space is a set of channels whose indices must be kept together: the output of a
convolution, its bias and the instance norm after it; the output of a residual unit, which is the sum of its last
convolution's (normalised) output and its residual path (a convolution, or the unit's input itself when the residual
is an identity: then the output shares the input's space); a transposed convolution's output. Every consumer reads
a concatenation of spaces: a decoder block reads ``[upsampled, skip]``, so its input channels are the kept channels
of the upsampling space followed by the kept channels of the encoder stage's space (offset by its full size).
:func:`channel_spaces` derives, by walking the U-Net's forward pass, which space each channel dimension of each
parameter belongs to; :func:`prune_state` then indexes every parameter along every such dimension, and checks that
the result has exactly the shape of the narrow network's parameter (``tests/deploy/test_prune.py`` shows that a full
network whose dropped channels carry zero weights computes exactly what the narrow one computes).

Importance (which channels to keep), per space. ``"taylor"`` (default; Molchanov et al., "Importance Estimation for
Neural Network Pruning", CVPR 2019): the first-order estimate of how much the training loss changes when the
channel is removed, ``(sum over voxels of a * dL/da)^2`` averaged over training patches (``a``: the channel's values
wherever a module outputs them). ``"l1"``: the L1 norm of the filters that produce the channel (Li et al., "Pruning
Filters for Efficient ConvNets"); it needs no data, but misjudges a network made of instance norms: a norm rescales
its input, so a producing filter's norm says nothing about its channel's effect, and a channel's magnitude (a
per-channel constant after the norm's shift) is removed again by the next norm.

Measured on the Hippocampus fold-0 U-Net (features 16-128, 30 minutes of training; 2 cores, December 2026). Mean
pseudo-Dice on the run's 10 fixed validation batches before fine-tuning (full network: 0.883): pruned by 30 %,
Taylor 0.84, L1 0.06, random channels 0.36, mean activation times the reading weights' L1 norm 0.01; by 50 %, Taylor
0.45, L1 and random 0.00. After a 10-minute fine-tune, mean validation Dice (42 cases) 0.8838 -> 0.8832 (30 %) and
0.8814 (50 %), with :class:`vesalius.runtime.Predictor` (ONNX Runtime, 2 threads) 1.56x and 2.19x faster per case.
"""

from __future__ import annotations

import datetime
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.model_package import ModelPackage, TrainedSegmentation, save_checkpoint
from vesalius.models import build_network
from vesalius.models.unet import UNet
from vesalius.workspace import Workspace

__all__ = [
    "CRITERIA",
    "ChannelSpaces",
    "channel_importance",
    "channel_spaces",
    "keep_indices",
    "prune_network",
    "prune_run",
    "prune_state",
    "zero_channels",
]

#: Importance criteria (see the module docstring).
CRITERIA = ("taylor", "l1")
#: Batches of training patches (the run's batch size, augmented as in training) of the ``taylor`` criterion.
TAYLOR_BATCHES = 8
#: The fine-tune's learning rate, as a fraction of the source run's (see :func:`prune_run`).
FINE_TUNE_LR_FRACTION = 1.0
#: Epochs the fine-tune's budget is cut into (:func:`_epoch_length`).
EPOCHS_PER_BUDGET = 8


@dataclass
class ChannelSpaces:
    """Which channel space each channel dimension of each parameter of a U-Net belongs to.

    Attributes:
        sizes: the number of channels of each space (spaces are numbered from 0).
        fixed: spaces that are never pruned: the image channels and the classes.
        dims: parameter name -> dimension -> the spaces it concatenates, in order.
        produced: parameter name -> the dimension along which it produces channels (convolution filters, biases,
            norm scales and shifts), for the ``l1`` criterion.
        outputs: ``(module, spaces)``: the module's output channels are these spaces concatenated (for the
            ``taylor`` criterion).
    """

    sizes: list[int] = field(default_factory=list)
    fixed: set[int] = field(default_factory=set)
    dims: dict[str, dict[int, list[int]]] = field(default_factory=lambda: defaultdict(dict))
    produced: dict[str, int] = field(default_factory=dict)
    outputs: list[tuple[nn.Module, list[int]]] = field(default_factory=list)

    def new(self, size: int, fixed: bool = False) -> int:
        self.sizes.append(int(size))
        if fixed:
            self.fixed.add(len(self.sizes) - 1)
        return len(self.sizes) - 1

    def segments(self, name: str, dim: int) -> list[tuple[int, int]]:
        """``(space, offset)`` of each space along dimension ``dim`` of parameter ``name``."""
        offset, found = 0, []
        for space in self.dims[name][dim]:
            found.append((space, offset))
            offset += self.sizes[space]
        return found


def channel_spaces(network: UNet) -> ChannelSpaces:
    """The channel spaces of ``network`` (see the module docstring), found by following its forward pass.

    Raises:
        VesaliusError: a parameter of the network was not reached (a layer this walk does not know).
    """
    names = {id(m): n for n, m in network.named_modules()}
    spaces = ChannelSpaces()

    def conv(module: nn.Module, inputs: list[int], outputs: list[int], transposed: bool = False) -> None:
        name = names[id(module)]
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        spaces.dims[f"{name}.weight"] = {out_dim: outputs, in_dim: inputs}
        spaces.produced[f"{name}.weight"] = out_dim
        if getattr(module, "bias", None) is not None:
            spaces.dims[f"{name}.bias"] = {0: outputs}
            spaces.produced[f"{name}.bias"] = 0

    def residual_unit(block: nn.Module, inputs: list[int]) -> list[int]:
        units = list(block.conv)
        identity = isinstance(block.residual, nn.Identity)
        output = inputs if identity else [spaces.new(units[-1].conv.out_channels)]
        current = inputs
        for i, unit in enumerate(units):
            produced = output if i == len(units) - 1 else [spaces.new(unit.conv.out_channels)]
            conv(unit.conv, current, produced)
            norm = getattr(getattr(unit, "adn", None), "N", None)
            if norm is not None:
                for p in ("weight", "bias"):
                    spaces.dims[f"{names[id(norm)]}.{p}"] = {0: produced}
                    spaces.produced[f"{names[id(norm)]}.{p}"] = 0
            if i < len(units) - 1:
                spaces.outputs.append((unit, produced))
            current = produced
        if not identity:
            conv(block.residual, inputs, output)
        spaces.outputs.append((block, output))
        return output

    def upsample(module: nn.Module, inputs: list[int]) -> list[int]:
        output = [spaces.new(module.out_channels)]
        conv(module, inputs, output, transposed=True)
        spaces.outputs.append((module, output))
        return output

    def head(module: nn.Module, inputs: list[int]) -> None:
        conv(module.conv, inputs, [spaces.new(module.conv.out_channels, fixed=True)])

    x = [spaces.new(network.encoder[0].conv[0].conv.in_channels, fixed=True)]
    skips = []
    for stage in network.encoder:
        x = residual_unit(stage, x)
        skips.append(x)
    x = skips.pop()
    decoded = []
    for up, block in zip(network.upsample, network.decoder, strict=True):
        x = residual_unit(block, upsample(up, x) + skips.pop())
        decoded.append(x)
    decoded.reverse()  # highest resolution first, as the forward pass
    for module, d in zip(network.heads, decoded, strict=True):
        head(module, d)
    if network.stem == "strided":
        head(network.output_head, residual_unit(network.output_block, upsample(network.output_up, decoded[0])))
    missing = sorted(set(network.state_dict()) - set(spaces.dims))
    if missing:
        raise VesaliusError(f"channel pruning does not know the layer of '{missing[0]}'", remedy="report this bug")
    return spaces


def _per_channel_l1(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """The L1 norm of each slice of ``tensor`` along ``dim``."""
    other = [d for d in range(tensor.dim()) if d != dim]
    return tensor.detach().abs().sum(dim=other) if other else tensor.detach().abs()


Loss = Callable[[Any, torch.Tensor], torch.Tensor]


def _taylor(
    network: nn.Module, spaces: ChannelSpaces, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss: Loss
) -> list[torch.Tensor]:
    """Per space, ``(sum over voxels of a * dL/da)^2`` of each channel, averaged over the samples of ``batches``
    (summed over every module output the space appears in), with the network in training mode (deep supervision)."""
    totals = [torch.zeros(n, dtype=torch.float64) for n in spaces.sizes]
    samples = 0

    def add(layout: list[int], values: torch.Tensor) -> None:
        offset = 0
        for space in layout:
            totals[space] += values[offset : offset + spaces.sizes[space]]
            offset += spaces.sizes[space]

    def hook(layout: list[int]) -> Any:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            value = output.detach()

            def gradient(grad: torch.Tensor) -> None:
                first_order = (value * grad).sum(dim=list(range(2, value.dim()))).double()
                add(layout, first_order.pow(2).sum(0))

            output.register_hook(gradient)

        return record

    handles = [module.register_forward_hook(hook(layout)) for module, layout in spaces.outputs]
    was_training = network.training
    network.train()
    try:
        for inputs, targets in batches:
            network.zero_grad(set_to_none=True)
            loss(network(inputs), targets).backward()
            samples += inputs.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        network.zero_grad(set_to_none=True)
        network.train(was_training)
    return [t / max(samples, 1) for t in totals]


def channel_importance(
    network: UNet,
    spaces: ChannelSpaces | None = None,
    criterion: str = "taylor",
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss: Loss | None = None,
) -> list[torch.Tensor]:
    """Per channel space, the importance of each channel (larger: more important; see the module docstring).

    Args:
        network: the trained network.
        spaces: its channel spaces (default: :func:`channel_spaces`).
        criterion: one of :data:`CRITERIA`; ``"taylor"`` needs ``batches`` of ``(inputs, targets)`` and the training
            ``loss`` of the network's training-mode outputs against the targets.
    """
    spaces = spaces or channel_spaces(network)
    if criterion == "taylor":
        if batches is None or loss is None:
            raise VesaliusError(
                "the taylor criterion needs batches of training patches and the loss",
                remedy="give batches and loss, or criterion='l1'",
            )
        return _taylor(network, spaces, batches, loss)
    if criterion != "l1":
        raise VesaliusError(f"unknown pruning criterion '{criterion}'", remedy=f"use one of {', '.join(CRITERIA)}")
    state = network.state_dict()
    importance = [torch.zeros(n, dtype=torch.float64) for n in spaces.sizes]
    for name, dim in spaces.produced.items():
        if name.endswith(".weight") and state[name].dim() > 2:  # convolution filters, not norms or biases
            norms = _per_channel_l1(state[name], dim).double()
            for space, offset in spaces.segments(name, dim):
                importance[space] += norms[offset : offset + spaces.sizes[space]]
    return importance


def keep_indices(importance: Sequence[torch.Tensor], sizes: Sequence[int]) -> list[torch.Tensor]:
    """Per space, the indices (ascending) of its ``sizes[s]`` most important channels (ties: the lower index)."""
    kept = []
    for values, size in zip(importance, sizes, strict=True):
        if size > len(values):
            raise VesaliusError(f"cannot keep {size} of {len(values)} channels", remedy="prune to a smaller width")
        order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
        kept.append(torch.tensor(sorted(order[:size]), dtype=torch.long))
    return kept


def _index(spaces: ChannelSpaces, name: str, dim: int, keep: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([keep[space] + offset for space, offset in spaces.segments(name, dim)])


def prune_state(
    state: dict[str, torch.Tensor], spaces: ChannelSpaces, keep: Sequence[torch.Tensor], narrow: nn.Module
) -> dict[str, torch.Tensor]:
    """The kept slices of every tensor of the full network's ``state``, as the state dict of ``narrow``.

    Raises:
        VesaliusError: a sliced tensor does not have the shape of the narrow network's (the two networks do not
            have the same layers).
    """
    target = narrow.state_dict()
    if set(target) != set(state):
        raise VesaliusError("the narrow network has other layers than the full one", remedy="report this bug")
    pruned = {}
    for name, tensor in state.items():
        for dim in spaces.dims.get(name, {}):
            tensor = tensor.index_select(dim, _index(spaces, name, dim, keep))
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise VesaliusError(
                f"pruning gave '{name}' the shape {list(tensor.shape)}, the narrow network's is "
                f"{list(target[name].shape)}",
                remedy="report this bug",
            )
        pruned[name] = tensor.clone()
    return pruned


def zero_channels(network: nn.Module, spaces: ChannelSpaces, keep: Sequence[torch.Tensor]) -> None:
    """Set to zero, in place, every weight that produces, normalises or reads a channel not in ``keep``: the
    network then computes what its pruned copy computes (the check of :func:`prune_state` in the tests)."""
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            for dim in spaces.dims.get(name, {}):
                dropped = torch.ones(tensor.shape[dim], dtype=torch.bool)
                dropped[_index(spaces, name, dim, keep)] = False
                index = [slice(None)] * tensor.dim()
                index[dim] = dropped
                tensor[tuple(index)] = 0


def prune_network(
    network: UNet,
    narrow: UNet,
    criterion: str = "taylor",
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss: Loss | None = None,
) -> dict[str, torch.Tensor]:
    """The state dict of ``narrow`` holding ``network``'s most important channels (per space, as many as
    ``narrow`` has; ``criterion``, ``batches`` and ``loss`` as for :func:`channel_importance`)."""
    spaces = channel_spaces(network)
    sizes = channel_spaces(narrow).sizes
    if len(sizes) != len(spaces.sizes):
        raise VesaliusError("the narrow network has other layers than the full one", remedy="report this bug")
    importance = channel_importance(network, spaces, criterion, batches, loss)
    return prune_state(network.state_dict(), spaces, keep_indices(importance, sizes), narrow)


def _parameters(network: nn.Module) -> int:
    return int(sum(p.numel() for p in network.parameters()))


def _dice(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if not summary or "dice" not in summary:
        return None
    return {"mean": summary.get("dice_mean"), **summary["dice"]}


def _check_split(package: ModelPackage, ws: Workspace) -> None:
    """Refuse to fine-tune when the data set's split of the fold is no longer the source run's (the figures before
    and after would come from different validation cases)."""
    from vesalius.data.dataset import Dataset
    from vesalius.data.splits import load_or_create_splits

    dataset = package.trained.dataset
    case_ids = [c.case_id for c in Dataset.load(ws.dataset_dir(dataset)).cases]
    splits = load_or_create_splits(ws.splits_path(dataset), case_ids)
    fold = int(package.settings["fold"])
    if fold >= len(splits) or splits[fold] != package.split:
        raise VesaliusError(
            f"fold {fold} of '{dataset}' is no longer split as when this run was trained",
            ws.splits_path(dataset),
            "restore the splits the run was trained with",
        )


def _epoch_length(package: ModelPackage, time_budget_s: float) -> int:
    """Iterations per epoch of the fine-tune: about :data:`EPOCHS_PER_BUDGET` epochs in the budget at the source
    run's pace (at most the source's epoch).

    Why not the source's epoch: the training loop turns a budget into an iteration count only after the first
    epoch, and a budget spent within it ends the run there, at the learning rate of the schedule's start. An epoch
    of 250 iterations (about 4 minutes of the Hippocampus U-Net on 2 cores) would leave a 10-minute fine-tune
    little or nothing of its annealing."""
    rows = _log_rows(package)
    configured = int(package.settings.get("iterations_per_epoch", 250))
    try:
        pace = float(rows[-1]["elapsed_s"]) / float(rows[-1]["iteration"])  # seconds per iteration
    except (IndexError, KeyError, ValueError, ZeroDivisionError):
        return configured
    if not (math.isfinite(pace) and pace > 0):
        return configured
    return max(1, min(configured, round(time_budget_s / EPOCHS_PER_BUDGET / pace)))


def _source_settings(package: ModelPackage) -> dict[str, Any]:
    """The source run's resolved settings that the fine-tune keeps (the same patches, batch, augmentation,
    optimiser, precision and network family), so that the fine-tuned network is trained and validated like its
    source."""
    keep = (
        "batch_size",
        "patch_size",
        "optimizer",
        "weight_decay",
        "schedule",
        "precision",
        "val_batches",
        "augmentation",
        "seed",
        "device",
        "network",
    )
    saved = package.settings
    settings = {k: saved[k] for k in keep if saved.get(k) is not None}
    if "patch_size" in settings:
        settings["patch_size"] = tuple(settings["patch_size"])
    return settings


def prune_run(
    run_dir: str | Path,
    amount: float,
    *,
    time_budget_s: float,
    workspace: str | Path | Workspace | None = None,
    seed: int = 0,
    criterion: str = "taylor",
    lr: float | None = None,
    threads: int | None = None,
    force: bool = False,
) -> Path:
    """Prune ``amount`` of the channels of the trained segmentation fold ``run_dir``, fine-tune, validate.

    The network of width ``(1 - amount)`` times the source's starts from the source's most important channels
    (``criterion``, measured on :data:`TAYLOR_BATCHES` batches of the fold's training patches), saved with the
    record of what was done as ``runs/NAME/CONFIG_wXX/pruned_fold_K.pt``; it then trains for ``time_budget_s`` on the
    same fold and split with the source's settings (patch, batch, augmentation, optimiser, schedule, precision),
    epochs of :func:`_epoch_length` iterations so that the schedule anneals within the budget, and learning rate
    ``lr`` (default: the source's; pruning by a half costs much of the accuracy, which the fine-tune has to relearn
    rather than polish), and is validated. What :func:`vesalius.train` adds on top, the run's report, is the
    caller's (``vesalius.reporting`` lies downstream of ``deploy``).

    Args:
        run_dir: the trained fold (``runs/NAME/CONFIG/fold_K``).
        amount: the fraction of channels to remove from each channel space, in (0, 1) (e.g. 0.3 or 0.5).
        time_budget_s: the fine-tune's wall-clock budget (validation during training included).
        workspace: the workspace the fold was trained in (default: the one ``run_dir`` lies in, else
            ``$VESALIUS_HOME``).
        seed: the fine-tune's seed (patch sampling, augmentation).
        threads: CPU threads for torch (default: all cores).
        force: replace an earlier pruned run of the same width.

    Returns:
        The fine-tuned run folder.
    """
    from vesalius.evaluation.validation import validate_run
    from vesalius.inference.model import load_model
    from vesalius.planning.planner import load_plan
    from vesalius.training.segmentation import SegmentationHead, train_segmentation, trained_configuration
    from vesalius.training.settings import SegmentationSettings

    if isinstance(amount, bool) or not (isinstance(amount, int | float) and 0 < amount < 1):
        raise VesaliusError(f"the pruning amount must lie between 0 and 1, not {amount!r}", remedy="e.g. 0.3 or 0.5")
    if criterion not in CRITERIA:
        raise VesaliusError(f"unknown pruning criterion '{criterion}'", remedy=f"use one of {', '.join(CRITERIA)}")
    run_dir = Path(run_dir).absolute()
    ws = Workspace.resolve(workspace) if workspace is not None else (Workspace.of_run(run_dir) or Workspace.default())
    source = load_model(run_dir)
    trained = source.trained
    if not isinstance(trained, TrainedSegmentation) or not isinstance(source.network, UNet):
        raise VesaliusError("only segmentation U-Nets can be pruned", run_dir, "give a segmentation run folder")
    family = trained.configuration.network
    if family != "resunet":
        raise VesaliusError(
            f"channel pruning knows the residual U-Net's layers only, not those of the '{family}' network",
            run_dir,
            "prune a run trained with --network resunet",
        )
    package = source.package
    saved = package.settings
    fold = saved["fold"]
    if fold == "all" or not package.split["val"]:
        raise VesaliusError(
            "the run has no validation cases, so what pruning costs cannot be measured",
            run_dir,
            "prune a cross-validation fold (0-4)",
        )
    plan = load_plan(trained.dataset, ws)
    if package.plan != plan:
        raise VesaliusError(
            f"'{trained.dataset}' was planned again since this run was trained",
            run_dir,
            "prune a run of the current plan (or restore the plan it was trained from, its plan.json)",
        )
    _check_split(package, ws)
    width = float(saved.get("width", 1.0)) * (1.0 - amount)
    options = {
        **_source_settings(package),
        "seed": seed,
        "time_budget_s": time_budget_s,
        "lr": lr if lr is not None else FINE_TUNE_LR_FRACTION * float(saved["lr"]),
        "threads": threads,
        "width": width,
        "iterations_per_epoch": _epoch_length(package, time_budget_s),
    }
    options = {k: v for k, v in options.items() if v is not None}
    fine_tune = SegmentationSettings(dataset=trained.dataset, config=trained.config, fold=fold, **options).resolve(plan)
    narrow_trained = trained_configuration(plan, fine_tune)
    if replace(narrow_trained.configuration, features=trained.configuration.features) != trained.configuration:
        raise VesaliusError(
            "the run's trained configuration differs from what the plan and its settings give",
            run_dir,
            "train the fold again with this version of Vesalius",
        )
    target = ws.run_dir(trained.dataset, fine_tune.run_config, fold)
    ModelPackage(target).refuse_to_overwrite(force=force)
    if threads:
        torch.set_num_threads(threads)

    # the fold's training patches (importance) and fixed validation patches (pseudo-Dice before fine-tuning)
    from vesalius.preprocessing.pipeline import preprocess_dataset

    folder = preprocess_dataset(trained.dataset, trained.config, ws)
    head = SegmentationHead(trained, fine_tune, folder, package.split)
    batches = [head.batch(i, i, torch.device("cpu")) for i in range(TAYLOR_BATCHES)]  # as training sees them
    network = source.network.float()
    narrow = build_network(narrow_trained.configuration, len(trained.channels), len(trained.labels))
    started = time.perf_counter()
    state = prune_network(network, narrow, criterion, batches, head.loss)
    narrow.load_state_dict(state)
    pruning_s = time.perf_counter() - started
    record = {
        "method": "structured-channel-pruning",
        "criterion": criterion,
        "amount": amount,
        "width": width,
        "source": str(run_dir),
        "fold": fold,
        "features_before": list(trained.configuration.features),
        "features_after": list(narrow_trained.configuration.features),
        "parameters_before": _parameters(network),
        "parameters_after": _parameters(narrow),
        "pruning_s": round(pruning_s, 2),
        "pseudo_dice_before": _pseudo_dice(head, network),
        "pseudo_dice_pruned": _pseudo_dice(head, narrow.eval()),
        "dice_before": _dice(package.validation_summary()),
        "fine_tune": {
            "time_budget_s": time_budget_s,
            "lr": fine_tune.lr,
            "iterations_per_epoch": fine_tune.iterations_per_epoch,
            "seed": seed,
        },
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    initial = target.parent / f"pruned_fold_{fold}.pt"
    initial.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(initial, {"model": state, "pruning": record})
    settings = SegmentationSettings(trained.dataset, trained.config, fold, initial_weights=str(initial), **options)
    result = train_segmentation(settings, ws, force=force)
    validate_run(result.run_dir, ws, device=settings.device)
    return Path(result.run_dir)


def _pseudo_dice(head: Any, network: nn.Module) -> float | None:
    """The mean pseudo-Dice of ``network`` on the head's fixed validation patches (float32)."""
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            row = head.validate(lambda x: network(x), torch.device("cpu"))
    finally:
        network.train(was_training)
    value = row.get("dice_mean")
    return None if value is None or math.isnan(value) else round(float(value), 4)


def pruning_record(run_dir: str | Path) -> dict[str, Any]:
    """What :func:`prune_run` did to make the run ``run_dir`` (from its initial weights' checkpoint), with the
    validation figures after the fine-tune.

    Raises:
        VesaliusError: the run was not made by :func:`prune_run`.
    """
    from vesalius.model_package import load_checkpoint

    package = ModelPackage(run_dir)
    initial = package.settings.get("initial_weights")
    record = load_checkpoint(Path(initial)).get("pruning") if initial else None
    if not isinstance(record, dict):
        raise VesaliusError("not a pruned run (no pruning record)", package.root, "prune a run with prune_run first")
    record = dict(record)
    record["dice_after"] = _dice(package.validation_summary())
    rows = _log_rows(package)
    if rows:
        record["fine_tune"] = {
            **record.get("fine_tune", {}),
            "iterations": int(float(rows[-1]["iteration"])),
            "elapsed_s": round(float(rows[-1]["elapsed_s"]), 1),
        }
    record["description"] = _describe(record)
    return record


def _log_rows(package: ModelPackage) -> list[dict[str, str]]:
    import csv

    if not package.log_csv.is_file():
        return []
    with package.log_csv.open(newline="") as f:
        return list(csv.DictReader(f))


def _describe(record: dict[str, Any]) -> str:
    before, after = record.get("dice_before") or {}, record.get("dice_after") or {}
    fine = record.get("fine_tune", {})
    text = (
        f"Structured channel pruning: {record['amount']:.0%} of the channels of every channel space removed "
        f"(importance: {record['criterion']}), features {record['features_before']} -> {record['features_after']}, "
        f"parameters {record['parameters_before']:,} -> {record['parameters_after']:,}; then fine-tuned on the same "
        f"fold for {fine.get('elapsed_s', fine.get('time_budget_s'))} s ({fine.get('iterations', '?')} iterations, "
        f"learning rate {fine.get('lr')})."
    )
    if before.get("mean") is not None and after.get("mean") is not None:
        text += (
            f" Mean validation Dice {before['mean']:.4f} before, {after['mean']:.4f} after "
            f"({after['mean'] - before['mean']:+.4f})."
        )
    return text
