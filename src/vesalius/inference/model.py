"""A trained run loaded for prediction: its network with weights, its plan and its training settings.

A run folder (``runs/NAME/CONFIG/fold_K/``) holds ``plan.json`` (the plan the run was trained with),
``training.json`` (the resolved training settings) and checkpoints; :func:`load_model` rebuilds the network from
the plan configuration and loads a checkpoint's weights (``weights_only=True``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.models import build_network
from vesalius.training.checkpoint import load_checkpoint

__all__ = ["TrainedModel", "load_model"]


@dataclass
class TrainedModel:
    """A network in eval mode with what is needed to predict with it."""

    network: nn.Module
    plan: dict[str, Any]
    config: str
    training: dict[str, Any]
    run_dir: Path


def load_model(run_dir: str | Path, checkpoint: str = "final", device: str | torch.device = "cpu") -> TrainedModel:
    """Load ``checkpoint_{checkpoint}.pt`` (``final``, ``best`` or ``latest``) of the run in ``run_dir``."""
    run_dir = Path(run_dir)
    plan_path, training_path = run_dir / "plan.json", run_dir / "training.json"
    for path in (plan_path, training_path):
        if not path.is_file():
            raise VesaliusError("not a training run (missing file)", path, "give the folder of a trained fold")
    plan = json.loads(plan_path.read_text())
    training = json.loads(training_path.read_text())["training"]
    state = load_checkpoint(run_dir / f"checkpoint_{checkpoint}.pt")
    config = training["config"]
    network = build_network(plan["configurations"][config], len(plan["channels"]), len(plan["labels"]))
    network.load_state_dict(state["model"])
    network.to(device).eval()
    return TrainedModel(network, plan, config, training, run_dir)
