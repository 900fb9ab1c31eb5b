"""Classifier networks: output shapes, probabilities of each target type, pretrained weights, Grad-CAM layers."""

from __future__ import annotations

import pytest
import torch

from vesalius.errors import VesaliusError
from vesalius.models.classifiers import build_classifier, load_pretrained, num_outputs, to_probabilities
from vesalius.planning.plan import ClassifierNetwork


@pytest.mark.parametrize(
    ("network", "dims", "side"),
    [
        ({"name": "cnn"}, 2, 28),
        ({"name": "cnn"}, 3, 20),
        ({"name": "resnet18", "stem_stride": 1, "width": 0.125}, 2, 28),
        ({"name": "resnet50", "stem_stride": 2, "width": 0.125}, 3, 16),
        ({"name": "densenet121"}, 2, 32),
    ],
)
def test_classifier_shapes(network, dims, side, one_torch_thread):
    model = build_classifier(ClassifierNetwork(**network), dims, 2, 3)
    assert model(torch.zeros(2, 2, *([side] * dims))).shape == (2, 3)


def test_outputs_to_probabilities():
    assert (num_outputs("ordinal", 5), num_outputs("multilabel", 4), num_outputs("binary", 2)) == (4, 4, 2)
    logits = torch.tensor([[3.0, -1.0, 2.0], [-4.0, -5.0, -6.0]])
    ordinal = to_probabilities(logits, "ordinal")
    assert ordinal.shape == (2, 4) and torch.allclose(ordinal.sum(1), torch.ones(2)) and (ordinal >= 0).all()
    assert int(ordinal[1].argmax()) == 0
    assert torch.allclose(to_probabilities(logits, "multilabel"), torch.sigmoid(logits))
    assert torch.allclose(to_probabilities(logits, "multiclass").sum(1), torch.ones(2))


def test_pretrained_weights_from_rgb_resnet(tmp_path, one_torch_thread):
    network = {"name": "resnet18", "stem_stride": 2, "width": 0.125}
    rgb = build_classifier(ClassifierNetwork(**network), 2, 3, 10)
    torch.save(rgb.state_dict(), tmp_path / "imagenet.pt")
    grey = build_classifier(ClassifierNetwork(**network), 2, 1, 2)
    copied = load_pretrained(grey, tmp_path / "imagenet.pt")
    assert copied == len(grey.state_dict()) - 2  # all but the new classification layer
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(VesaliusError, match="tensors match"):
        load_pretrained(build_classifier(ClassifierNetwork("cnn"), 2, 1, 2), tmp_path / "imagenet.pt")


@pytest.mark.parametrize(
    ("network", "dims", "side", "layer"),
    [
        ({"name": "resnet18", "stem_stride": 1, "width": 0.125}, 2, 28, "layer4"),  # 28 -> 4x4 at layer4
        ({"name": "resnet18", "stem_stride": 2, "width": 0.125}, 3, 28, "layer2"),  # layer4 1^3, layer3 2^3
        ({"name": "resnet18", "stem_stride": 2, "width": 0.125}, 3, 64, "layer3"),
        ({"name": "cnn"}, 3, 20, "features.4"),
    ],
)
def test_gradcam_layer_keeps_resolution_and_maps_have_the_input_size(network, dims, side, layer, one_torch_thread):
    from vesalius.inference.gradcam import gradcam_map, make_gradcam
    from vesalius.models.classifiers import GRADCAM_LAYERS, gradcam_layer

    model = build_classifier(ClassifierNetwork(**network), dims, 1, 2)
    chosen = gradcam_layer(model, network["name"], (1, *[side] * dims))
    assert chosen == layer and chosen in GRADCAM_LAYERS[network["name"]]
    size = (side, side + 4, side - 2)[:dims]
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0))
    heat = gradcam_map(make_gradcam(model, chosen), x, 1)
    assert heat.shape == size and 0.0 <= heat.min() <= heat.max() <= 1.0
