"""The GPU path's logic, on the CPU: the fp16 gradient scaler's bookkeeping in a training step, the precision and
memory format chosen for CUDA devices, and the scaler's state through a checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.model_package import ModelPackage
from vesalius.precision import autocast_dtype, memory_format
from vesalius.training.loop import TaskHead, TrainingLoop
from vesalius.training.settings import SegmentationSettings


class LinearHead(TaskHead):
    """A linear layer fitting y = 2x, with a loss multiplied by ``factor`` (huge: gradients that overflow once
    scaled)."""

    gradient_clip = 1.0
    sgd_momentum = 0.5
    iterations_per_epoch = 1
    spatial_dims = 2
    dataset = "toy"

    def __init__(self) -> None:
        self.factor = 1.0

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1, bias=False)

    def batch(self, iteration: int, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.ones(4, 1, device=device)
        return x, 2 * x

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return self.factor * ((outputs.float() - targets) ** 2).mean()

    def validate(self, forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
        return {}

    def judge(self, row: dict[str, float]) -> bool:
        return False

    def best_score(self) -> float:
        return float("nan")

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


def _loop(tmp_path, scale: float) -> TrainingLoop:
    settings = SegmentationSettings("toy", precision="fp32", optimizer="sgd", lr=0.1, weight_decay=0.0, epochs=1)
    loop = TrainingLoop(LinearHead(), settings, ModelPackage(tmp_path / "run"))
    loop.scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=1000)  # what fp16 on CUDA enables
    with torch.no_grad():
        loop.network.weight.fill_(0.0)
    return loop


def test_the_scaler_unscales_before_clipping_and_skips_an_overflowing_step(tmp_path):
    loop = _loop(tmp_path, scale=2.0**16)
    loop.train_step(0, lr=0.1)
    # the gradient -4 is clipped to norm 1 after unscaling: a Nesterov step (momentum 0.5) of lr x 1.5 (clipping the
    # scaled gradient, or not clipping, would move the weight by 2e-6 or 0.6)
    assert float(loop.network.weight.detach()) == pytest.approx(0.15)
    loop.head.factor = 1e35  # a finite loss whose scaled gradient overflows float32, as fp16 ones do
    loop.train_step(1, lr=0.1)
    assert float(loop.network.weight.detach()) == pytest.approx(0.15)  # the step was skipped
    assert loop.scaler.get_scale() == 2.0**15  # and the scale halved
    state = loop.state()["scaler"]
    resumed = _loop(tmp_path, scale=1.0)
    resumed.scaler.load_state_dict(state)
    assert resumed.scaler.get_scale() == 2.0**15  # a resumed run continues with the scale it had


def test_cuda_precision_and_memory_format(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert autocast_dtype("auto", cuda) == torch.float16  # older GPUs: fp16 with the scaler
    assert autocast_dtype("fp16", cuda) == torch.float16 and autocast_dtype("fp32", cuda) is None
    with pytest.raises(VesaliusError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", torch.device("cpu"))
    # channels-last is for oneDNN's bf16 on CPUs; cuDNN gets contiguous tensors
    assert memory_format(torch.bfloat16, cuda, 3) == torch.contiguous_format
    assert memory_format(torch.bfloat16, torch.device("cpu"), 3) == torch.channels_last_3d
