"""Grad-CAM: maps and overlays of a trained classifier, and maps that peak on the lesion for a fixed-weight model."""

from __future__ import annotations

import numpy as np
import torch

from vesalius.data.synthetic import make_segmentation_case
from vesalius.inference.model import load_model
from vesalius.preprocessing.classification import prepare_images


def test_gradcam_map_and_overlay(trained_synthetic, tmp_path, one_torch_thread):
    from vesalius.inference.gradcam import gradcam_map, make_gradcam, write_overlay

    model = load_model(trained_synthetic.run_dir)
    cam = make_gradcam(model.network, "features.4")
    image, _ = make_segmentation_case(1, ndim=2, shape=(48, 48), num_lesion_classes=1)
    prepared = prepare_images([image.array], model.trained.normalization, model.trained.input_size)
    heat = gradcam_map(cam, torch.from_numpy(prepared), 1)
    assert heat.shape == (48, 48) and 0.0 <= heat.min() <= heat.max() <= 1.0
    assert write_overlay(prepared[0], heat, tmp_path / "cam.png").stat().st_size > 0
    volume = np.zeros((1, 8, 9, 10), dtype=np.float32)
    assert write_overlay(volume, np.random.default_rng(0).random((8, 9, 10)), tmp_path / "cam3d.png").is_file()


class _BlobDetector(torch.nn.Module):
    """A fixed-weight 2D classifier whose output 1 is the strongest response of a Gaussian spot filter (``sign``
    1: bright spots, the synthetic lesions; -1: dark spots) and whose output 0 is constant: Grad-CAM of output 1 must
    peak on the lesion (bright) or off it (dark), and Grad-CAM of output 0 carries no evidence at all."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 7, padding=3, bias=False), torch.nn.ReLU())
        r = torch.arange(7.0) - 3
        spot = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * 1.5**2))
        with torch.no_grad():
            self.features[0].weight.copy_(sign * spot / spot.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strongest = torch.amax(self.features(x), dim=(2, 3))
        return torch.cat([torch.zeros_like(strongest), strongest], dim=1)


def _lesion_images(num: int, shape: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic 2D images (z-scored, ``(1, *shape)``) with their lesion masks, for the seeds with a lesion."""
    cases = []
    for seed in range(num):
        image, label = make_segmentation_case(seed, ndim=2, shape=shape, num_lesion_classes=1)
        if (label.array[0] == 2).any():
            x = image.array
            cases.append((((x - x.mean()) / x.std()).astype(np.float32), label.array[0] == 2))
    return cases


def test_gradcam_peaks_on_the_lesion(one_torch_thread):
    """Grad-CAM's wiring (layer, gradient weights, sign, upsampling, axis order on non-square images): the map of a
    decision made on the lesion peaks in the lesion; the maps of decisions made elsewhere, or on nothing, do not."""
    from vesalius.inference.gradcam import gradcam_map, make_gradcam

    cases = _lesion_images(12, (48, 56))
    assert len(cases) >= 8
    peaks: dict[float, list[tuple[int, ...]]] = {}
    for sign in (1.0, -1.0):
        cam = make_gradcam(_BlobDetector(sign), "features.1")
        peaks[sign] = []
        for x, _ in cases:
            heat = gradcam_map(cam, torch.from_numpy(x[None]), 1)
            assert heat.shape == (48, 56) and heat.max() == 1.0
            peaks[sign].append(np.unravel_index(int(np.argmax(heat)), heat.shape))
        if sign == 1.0:  # output 0 does not depend on the image: no evidence anywhere
            assert not gradcam_map(cam, torch.from_numpy(cases[0][0][None]), 0).any()
    inside = [bool(lesion[p]) for (_, lesion), p in zip(cases, peaks[1.0], strict=True)]
    dark = [bool(lesion[p]) for (_, lesion), p in zip(cases, peaks[-1.0], strict=True)]
    assert np.mean(inside) >= 0.9, inside
    assert not any(dark), dark
