"""A trained model loaded for prediction: its network with weights, in eval mode, and its package.

Both tasks load the same way: the network is rebuilt from the package's trained configuration
(:class:`~vesalius.model_package.TrainedSegmentation`: the U-Net of its configuration;
:class:`~vesalius.model_package.TrainedClassification`: its classifier) and a checkpoint's weights are loaded
(``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.model_package import (
    ModelPackage,
    TrainedConfiguration,
    TrainedSegmentation,
    find_packages,
)
from vesalius.precision import check_device

__all__ = ["LoadedModel", "load_ensemble", "load_model"]


@dataclass
class LoadedModel:
    """A network in eval mode with the package it came from."""

    network: nn.Module
    package: ModelPackage

    @property
    def trained(self) -> TrainedConfiguration:
        return self.package.trained


def build_trained_network(trained: TrainedConfiguration) -> nn.Module:
    """The untrained network of a trained configuration."""
    if isinstance(trained, TrainedSegmentation):
        from vesalius.models import build_network

        return build_network(trained.configuration, len(trained.channels), len(trained.labels))
    from vesalius.models.classifiers import build_classifier, num_outputs

    outputs = num_outputs(trained.target_type, len(trained.labels))
    return build_classifier(trained.network, trained.spatial_dims, len(trained.channels), outputs)


def load_model(
    package: ModelPackage | str | Path, checkpoint: str = "final", device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load ``checkpoint`` (``final``, ``best`` or ``latest``) of a trained model."""
    check_device(str(device))
    package = package if isinstance(package, ModelPackage) else ModelPackage(package)
    network = build_trained_network(package.trained)
    network.load_state_dict(package.load_checkpoint(checkpoint)["model"])
    network.to(device).eval()
    return LoadedModel(network, package)


def load_ensemble(
    model: str | Path, checkpoint: str = "final", device: str | torch.device = "cpu"
) -> list[LoadedModel]:
    """The model(s) in ``model``: a run folder, or a folder of folds (an ensemble), all of one task and trained
    configuration apart from their versions and precision."""
    models = [load_model(p, checkpoint, device) for p in find_packages(model)]
    _check_same(models)
    return models


def _comparable(trained: TrainedConfiguration) -> TrainedConfiguration:
    """What must agree between the folds of an ensemble: everything but the versions and the precision."""
    return replace(trained, versions={}, precision="auto")


def _check_same(models: Sequence[LoadedModel]) -> None:
    first = _comparable(models[0].trained)
    for other in models[1:]:
        if _comparable(other.trained) != first:
            raise VesaliusError(
                "the folds were trained with different configurations",
                other.package.root,
                "ensemble the folds of one configuration",
            )
