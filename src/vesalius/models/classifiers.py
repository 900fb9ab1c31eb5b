"""Image classifiers in 2D and 3D, built from a plan's network entry, and how their outputs become probabilities.

Networks (input ``(B, C, *spatial)`` with ``spatial`` ``(X, Y)`` or ``(X, Y, Z)`` of any size; output logits
``(B, num_outputs)``):

* ``cnn``: the small network of the classic PyTorch "training a classifier" tutorial (two 5x5 convolutions with
  max-pooling, then three fully connected layers of 120, 84 and ``num_outputs`` units), with padded convolutions
  and an adaptive pooling to 4 per axis so that any input size works: the baseline.
* ``resnet18``, ``resnet50``: MONAI's ResNet. For small inputs (MedMNIST's 28 pixels) the plan asks for a 3x3
  stem of stride 1 without max-pooling (``stem_stride: 1``), as the CIFAR ResNets; ``width`` scales the
  features per stage (64, 128, 256, 512 at 1.0).
* ``densenet121``: MONAI's DenseNet-121 (stem of stride 2 and max-pooling: meant for inputs of 64 and more).

Outputs per target type (:func:`num_outputs`, :func:`to_probabilities`): ``binary`` and ``multiclass`` give one
logit per class (softmax); ``multilabel`` one logit per label (independent sigmoids); ``ordinal`` ``K - 1``
cumulative logits, ``sigmoid(z_k) = P(y > k)`` (made non-increasing in ``k``), from which the class probabilities
are the differences.

Pretraining: :func:`load_pretrained` takes weights the user supplies (a state dict file, e.g. torchvision's
ImageNet ResNet-18, whose names MONAI's ResNet shares); nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vesalius.errors import VesaliusError
from vesalius.planning.plan import ClassifierNetwork

__all__ = [
    "ARCHITECTURES",
    "GRADCAM_LAYERS",
    "GRADCAM_MIN_SIDE",
    "TutorialCNN",
    "build_classifier",
    "gradcam_layer",
    "load_pretrained",
    "num_outputs",
    "to_probabilities",
]

ARCHITECTURES = ("cnn", "resnet18", "resnet50", "densenet121")
_RESNET_FEATURES = (64, 128, 256, 512)


class TutorialCNN(nn.Module):
    """The classic tutorial CNN in 2D or 3D: conv 5x5 (6) - pool - conv 5x5 (16) - pool - fc 120 - fc 84 - fc out."""

    def __init__(self, spatial_dims: int, in_channels: int, num_outputs: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        adaptive = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        self.features = nn.Sequential(
            conv(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            pool(2),
            conv(6, 16, 5, padding=2),
            nn.ReLU(),
            pool(2),
            adaptive(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 4**spatial_dims, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> logits ``(B, num_outputs)``."""
        return self.classifier(self.features(x))


def num_outputs(target_type: str, num_classes: int) -> int:
    """Logits the network needs: one per class (binary, multi-class), per label (multi-label), ``K - 1`` (ordinal)."""
    if target_type == "ordinal":
        return num_classes - 1
    return num_classes


def to_probabilities(logits: torch.Tensor, target_type: str) -> torch.Tensor:
    """Logits ``(B, num_outputs)`` -> probabilities ``(B, K)``: class probabilities summing to 1, or for
    ``multilabel`` one independent probability per label."""
    logits = logits.float()
    if target_type == "multilabel":
        return torch.sigmoid(logits)
    if target_type == "ordinal":
        # P(y > k), made non-increasing in k: a running minimum (torch.cummin has no ONNX export)
        columns = [torch.sigmoid(logits[:, :1])]
        for k in range(1, logits.shape[1]):
            columns.append(torch.minimum(columns[-1], torch.sigmoid(logits[:, k : k + 1])))
        above = torch.cat(columns, dim=1)
        ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
        return torch.cat([ones, above], dim=1) - torch.cat([above, zeros], dim=1)
    return torch.softmax(logits, dim=1)


def build_classifier(network: ClassifierNetwork, spatial_dims: int, in_channels: int, outputs: int) -> nn.Module:
    """The classifier described by a plan's network entry.

    Args:
        network: the architecture (``name``; ResNets: ``stem_stride`` 1 or 2 and ``width``; DenseNet: ``dropout``).
        spatial_dims: 2 or 3.
        in_channels: image channels.
        outputs: logits per image (:func:`num_outputs`).
    """
    name = network.name
    if name == "cnn":
        return TutorialCNN(spatial_dims, in_channels, outputs)
    if name in ("resnet18", "resnet50"):
        from monai.networks.nets import ResNet
        from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

        small = (network.stem_stride or 2) == 1
        width = float(network.width or 1.0)
        block, layers = (ResNetBlock, [2, 2, 2, 2]) if name == "resnet18" else (ResNetBottleneck, [3, 4, 6, 3])
        return ResNet(
            block,
            layers,
            [max(8, round(f * width)) for f in _RESNET_FEATURES],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=3 if small else 7,
            conv1_t_stride=1 if small else 2,
            no_max_pool=small,
            num_classes=outputs,
        )
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=outputs,
            dropout_prob=float(network.dropout or 0.0),
        )
    raise VesaliusError(f"unknown network '{name}'", remedy=f"use one of {', '.join(ARCHITECTURES)}")


#: Grad-CAM's candidate layers per architecture, deepest first: the output of each convolutional stage.
GRADCAM_LAYERS = {
    "cnn": ("features.4", "features.1"),
    "resnet18": ("layer4", "layer3", "layer2", "layer1"),
    "resnet50": ("layer4", "layer3", "layer2", "layer1"),
    "densenet121": ("class_layers.relu", "features.transition3", "features.transition2", "features.transition1"),
}
#: The fewest voxels along every axis a Grad-CAM layer's map should keep (a ResNet's last stage on 28 pixels is 4x4,
#: on 28^3 voxels with a strided stem 1x1x1, where a map cannot show where anything is).
GRADCAM_MIN_SIDE = 4


@torch.no_grad()
def gradcam_layer(model: nn.Module, name: str, input_shape: Sequence[int]) -> str:
    """The layer whose activations Grad-CAM weighs for inputs ``(C, *size)`` ``input_shape``: the deepest
    convolutional stage of ``name``'s network (:data:`GRADCAM_LAYERS`) whose output keeps at least
    :data:`GRADCAM_MIN_SIDE` voxels along every axis (where none does, the shallowest stage). Measured with one
    forward pass of zeros in eval mode."""
    candidates = GRADCAM_LAYERS[name]
    modules = dict(model.named_modules())
    sides: dict[str, int] = {}
    hooks = [
        modules[c].register_forward_hook(lambda _m, _i, out, c=c: sides.__setitem__(c, min(out.shape[2:])))
        for c in candidates
    ]
    training = model.training
    try:
        model.eval()
        parameter = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return next((c for c in candidates if sides[c] >= GRADCAM_MIN_SIDE), candidates[-1])


def load_pretrained(model: nn.Module, path: str | Path) -> int:
    """Copy the weights of ``path`` (a state dict, or a checkpoint holding one under ``"model"`` or
    ``"state_dict"``) into ``model`` where names and shapes match; a first convolution trained on RGB is summed
    over its input channels for grey images. Returns the number of tensors copied.

    Raises:
        VesaliusError: unreadable file, or fewer than half of the model's tensors matched (another architecture).
    """
    path = Path(path)
    if not path.is_file():
        raise VesaliusError("pretrained weights not found", path, "give --pretrained a state-dict file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise VesaliusError(
            "cannot read pretrained weights: not a PyTorch state-dict file of tensors",
            path,
            "save the weights with torch.save(model.state_dict(), ...)",
        ) from None
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    if not isinstance(state, dict):
        raise VesaliusError("not a state dict", path, "save the weights with torch.save(model.state_dict(), ...)")
    own = model.state_dict()
    copied: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key not in own or not isinstance(value, torch.Tensor):
            continue
        target = own[key]
        rgb_to_grey = value.ndim == target.ndim >= 4 and value.shape[1] == 3 and target.shape[1] == 1
        if rgb_to_grey and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            value = value.sum(dim=1, keepdim=True)  # RGB filters seen by a grey image
        if value.shape == target.shape:
            copied[key] = value
    if len(copied) < len(own) / 2:
        raise VesaliusError(
            f"only {len(copied)} of {len(own)} tensors match the network",
            path,
            "give weights of the same architecture (2D ResNet/DenseNet state dict)",
        )
    model.load_state_dict(copied, strict=False)
    return len(copied)
