"""The segmentation network families (resunet, attention, resenc), 2D and 3D: output shapes, deep supervision,
gradients, bf16 autocast through the fused norm, ONNX export through Vesalius' export path; the family chosen in
the settings, recorded in ``model.json`` and rebuilt from it; a short ``train --network attention`` run predicted
with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from monai.networks.blocks import ResidualUnit

import vesalius
from tests.helpers import configuration, copy_workspace
from vesalius.cli import main
from vesalius.deploy.export import _example, export_network
from vesalius.errors import VesaliusError
from vesalius.inference.model import build_trained_network, load_model
from vesalius.io.schema import from_json, to_json
from vesalius.model_package import ModelPackage, TrainedSegmentation
from vesalius.models import build_network
from vesalius.models.attention import AttentionGate
from vesalius.models.families import stage_units
from vesalius.models.norm import InstanceNormAct
from vesalius.planning.plan import NETWORK_FAMILIES, Normalization
from vesalius.planning.planner import load_plan
from vesalius.training import SegmentationSettings
from vesalius.training.segmentation import trained_configuration

CLASSES = 3


def _configuration(network: str, dims: int, stem: str):  # type: ignore[no-untyped-def]
    """Three stages of 4-16 features; 3D anisotropic (the last axis pooled once), 2D isotropic."""
    if dims == 3:
        patch, strides = [16, 16, 8], [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    else:
        patch, strides = [16, 24], [[1, 1], [2, 2], [2, 2]]
    kernels = [[3] * dims] * 3
    return configuration(
        patch_size=patch, strides=strides, kernels=kernels, features=[4, 8, 16], stem=stem, network=network
    )


def _expected_shapes(config) -> list[tuple[int, ...]]:  # type: ignore[no-untyped-def]
    """Deep-supervision output sizes, full resolution first: the strided stem adds the full-resolution output to
    the decoder stages' (which start at the first pooling); the full stem's first decoder stage is at full size."""
    patch, strides = config.patch_size, config.strides
    levels = range(1, len(strides)) if config.stem == "strided" else range(len(strides) - 1)
    pooled = [tuple(p // math.prod(s[a] for s in strides[: i + 1]) for a, p in enumerate(patch)) for i in levels]
    return [tuple(patch), *pooled] if config.stem == "strided" else pooled


FAMILIES = [(n, d) for n in NETWORK_FAMILIES for d in (2, 3)]


@pytest.mark.parametrize("stem", ["strided", "full"])
@pytest.mark.parametrize(("network", "dims"), FAMILIES)
def test_each_family_outputs_logits_and_deep_supervision_and_trains(network: str, dims: int, stem: str) -> None:
    config = _configuration(network, dims, stem)
    torch.manual_seed(0)
    net = build_network(config, in_channels=2, num_classes=CLASSES)
    x = torch.randn(2, 2, *config.patch_size)
    outputs = net.train()(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [(2, CLASSES, *s) for s in _expected_shapes(config)]
    sum(o.square().mean() for o in outputs).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    with torch.no_grad():
        assert net.eval()(x).shape == (2, CLASSES, *config.patch_size)


@pytest.mark.parametrize(("network", "dims"), FAMILIES)
def test_each_family_runs_in_bf16_autocast_through_the_fused_norm(network: str, dims: int) -> None:
    config = _configuration(network, dims, "strided")
    torch.manual_seed(0)
    layout = torch.channels_last_3d if dims == 3 else torch.channels_last
    net = build_network(config, 1, CLASSES).to(memory_format=layout).eval()
    assert any(isinstance(m, InstanceNormAct) for m in net.modules())
    x = torch.randn(2, 1, *config.patch_size).contiguous(memory_format=layout)
    with torch.no_grad():
        full = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(x)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max()


def test_the_families_differ_where_they_should() -> None:
    resunet, attention, resenc = (build_network(_configuration(n, 3, "strided"), 1, CLASSES) for n in NETWORK_FAMILIES)
    # the residual U-Net keeps the parameter names of earlier versions (their checkpoints load)
    assert resunet.gates is None and isinstance(resunet.encoder[2], ResidualUnit)
    assert "encoder.0.conv.unit0.conv.weight" in resunet.state_dict()
    # attention: one gate per skip connection, the rest as the residual U-Net
    assert attention.gates is not None and [type(g) for g in attention.gates] == [AttentionGate] * 2
    gate_free = {k for k in attention.state_dict() if not k.startswith("gates.")}
    assert gate_free == set(resunet.state_dict())
    # resenc: 1, 3, 4 residual units in the encoder stages, one convolution per decoder unit
    assert [len(s) if isinstance(s, torch.nn.Sequential) else 1 for s in resenc.encoder] == [1, 3, 4]
    assert all(len(block.conv) == 1 for block in resenc.decoder)
    assert stage_units("resenc", 9) == [1, 3, 4, 6, 6, 6, 6, 6, 6] and stage_units("attention", 2) == [1, 1]
    parameters = [sum(p.numel() for p in n.parameters()) for n in (resunet, attention, resenc)]
    assert parameters[0] < parameters[1] < parameters[2]


def test_attention_coefficients_lie_between_0_and_1_and_scale_the_skip() -> None:
    gate = AttentionGate(2, skip_channels=4, gate_channels=6, inter_channels=2)
    x, g = torch.randn(3, 4, 5, 7), torch.randn(3, 6, 5, 7)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (3, 1, 5, 7) and bool(((alpha > 0) & (alpha < 1)).all())
    torch.testing.assert_close(gate(x, g), x * alpha)


def _trained(network: str, dims: int) -> TrainedSegmentation:
    return TrainedSegmentation(
        dataset="x",
        config=f"{dims}d",
        channels=("ct",),
        labels={0: "background", 1: "a", 2: "b"},
        normalization=(Normalization("zscore"),),
        configuration=_configuration(network, dims, "strided"),
        precision="fp32",
    )


@pytest.mark.slow
@pytest.mark.parametrize(("network", "dims"), FAMILIES)
def test_each_family_exports_to_onnx_from_its_trained_configuration(network: str, dims: int) -> None:
    trained = _trained(network, dims)
    reread = from_json(TrainedSegmentation, json.loads(json.dumps(to_json(trained))))  # through model.json
    assert reread.configuration.network == network
    torch.manual_seed(0)
    net = build_trained_network(reread)  # what export, prediction and the runtime's package start from
    assert (net.gates is not None) == (network == "attention")
    example, axes = _example(reread)
    onnx_bytes, _ = export_network(net, example, axes, "logits")  # checks ONNX Runtime against torch (1e-3)
    # a batch and a patch of other sizes than the example's (dynamic axes)
    other = torch.randn(1, 1, *(2 * p for p in reread.configuration.patch_size))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": other.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net.eval()(other).numpy(), atol=1e-3)


def test_a_model_json_without_a_network_is_a_residual_unet() -> None:
    document = to_json(_trained("attention", 3))
    del document["configuration"]["network"]  # written by an earlier version
    assert from_json(TrainedSegmentation, document).configuration.network == "resunet"


def test_the_settings_choose_the_family_and_the_trained_configuration_records_it(planned: Path) -> None:
    plan = load_plan("ph", planned)
    assert plan.configuration("3d").network == "resunet"  # the rules' default
    for given, expected in ((None, "resunet"), ("attention", "attention"), ("resenc", "resenc")):
        settings = SegmentationSettings("ph", network=given).resolve(plan)
        assert settings.network == expected
        assert trained_configuration(plan, settings).configuration.network == expected
    chosen_by_plan = plan.with_configuration("3d", network="resenc")
    assert SegmentationSettings("ph").resolve(chosen_by_plan).network == "resenc"
    with pytest.raises(VesaliusError, match="unknown network 'unet'"):
        SegmentationSettings("ph", network="unet")
    assert SegmentationSettings("ph", network="resunet").run_config == "3d"
    assert SegmentationSettings("ph", network="attention", width=0.5).run_config == "3d_attention_w50"
    old = {k: v for k, v in SegmentationSettings("ph").to_dict().items() if k != "network"}
    assert SegmentationSettings.from_dict(old).network is None  # training.json of earlier versions


@pytest.mark.slow
def test_train_network_attention_records_it_and_predicts(planned: Path, tmp_path: Path) -> None:
    ws = str(copy_workspace(planned, tmp_path))
    tiny = ["--epochs", "1", "--iters-per-epoch", "2", "--precision", "bf16", "--no-validate"]
    assert main(["train", "ph", "-w", ws, "--network", "attention", "--fold", "1", *tiny]) == 0
    run_dir = Path(ws) / "runs" / "ph" / "3d_attention" / "fold_1"  # beside the residual U-Net's runs
    saved = json.loads((run_dir / "model.json").read_text())
    assert saved["configuration"]["network"] == "attention"
    assert ModelPackage(run_dir).settings["network"] == "attention"
    assert load_model(run_dir).network.gates is not None
    image = sorted((Path(ws) / "datasets" / "ph" / "imagesTr").glob("*.nii.gz"))[0]
    written = vesalius.predict(image, tmp_path / "out", run_dir)
    assert len(written) == 1 and Path(written[0]).is_file()
