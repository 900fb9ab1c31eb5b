"""Mixed precision: convolutions of maps smaller than the kernel run in float32 under bfloat16 autocast."""

from __future__ import annotations

import torch

from vesalius.models.classifiers import build_classifier
from vesalius.planning.plan import ClassifierNetwork


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

    model = build_classifier(ClassifierNetwork("resnet18", stem_stride=2, width=0.125), 3, 1, 2)
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
