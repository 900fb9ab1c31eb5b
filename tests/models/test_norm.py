"""The fused instance norm + leaky ReLU against PyTorch's own modules, in every layout and precision it meets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit
from torch import nn

from vesalius.models.norm import InstanceNormAct, fuse_instance_norm_act

LAYOUTS = {
    "3d channels-last": ((3, 4, 5, 6, 7), torch.channels_last_3d),
    "3d contiguous": ((3, 4, 5, 6, 7), torch.contiguous_format),
    "2d channels-last": ((2, 3, 9, 8), torch.channels_last),
}


def _reference(x: torch.Tensor, norm: InstanceNormAct) -> torch.Tensor:
    return F.leaky_relu(F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps), norm.negative_slope)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_values_gradients_and_layout_match_instance_norm_then_leaky_relu(layout):
    shape, memory_format = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(0)
    norm = InstanceNormAct(shape[1], negative_slope=0.1).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=gen, dtype=torch.float64))
        norm.bias.copy_(torch.randn(shape[1], generator=gen, dtype=torch.float64))
    x = (3 * torch.randn(shape, generator=gen, dtype=torch.float64) + 1).contiguous(memory_format=memory_format)
    x.requires_grad_()
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64)
    out = norm(x)
    expected = _reference(x, norm)
    got = torch.autograd.grad(out, (x, norm.weight, norm.bias), grad_out)
    want = torch.autograd.grad(expected, (x, norm.weight, norm.bias), grad_out)
    assert out.is_contiguous(memory_format=memory_format)
    assert got[0].is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_bf16_autocast_channels_last_matches_float32_to_bf16_rounding():
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv3d(2, 8, 3, padding=1)
    norm = InstanceNormAct(8)
    x = torch.randn((4, 2, 12, 10, 8), generator=gen).contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = norm(conv(x))
    assert low.dtype == torch.bfloat16 and low.is_contiguous(memory_format=torch.channels_last_3d)
    high = _reference(conv(x), norm)
    torch.testing.assert_close(low.float(), high, rtol=2e-2, atol=5e-2)


def test_fusing_a_monai_residual_unit_keeps_its_function_and_checkpoint_keys():
    torch.manual_seed(0)
    act, norm = ("LEAKYRELU", {"negative_slope": 0.01, "inplace": True}), ("INSTANCE", {"affine": True})
    plain = ResidualUnit(3, 2, 4, strides=1, kernel_size=3, subunits=2, act=act, norm=norm)
    with torch.no_grad():
        for module in plain.modules():
            if isinstance(module, nn.InstanceNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    fused = ResidualUnit(3, 2, 4, strides=1, kernel_size=3, subunits=2, act=act, norm=norm)
    fuse_instance_norm_act(fused)
    assert sum(isinstance(m, InstanceNormAct) for m in fused.modules()) == 2
    assert not any(isinstance(m, nn.InstanceNorm3d | nn.LeakyReLU) for m in fused.modules())
    assert fused.state_dict().keys() == plain.state_dict().keys()
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 6, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)


def test_traced_graph_does_not_fix_the_batch_size():
    norm = InstanceNormAct(3)
    x = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    traced = torch.jit.trace(norm, x)
    y = torch.randn(5, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(traced(y), _reference(y, norm))
