"""Grad-CAM heat maps of a classifier (MONAI's ``GradCAM``) and their overlays on the image.

Maps: for an input ``(1, C, *size)``, the class's gradient-weighted activations of the network's deepest
convolutional stage that keeps a few voxels per axis (:func:`vesalius.models.classifiers.gradcam_layer`), rectified,
upsampled (bi/trilinear) to ``size`` by MONAI's ``GradCAM`` and scaled to [0, 1] with 1 where the class's evidence is
strongest. (MONAI's default post-processing maps the maximum to 0 and the minimum to 1, which turns the picture
inside out: :func:`unit_scaled` replaces it.) A map without evidence (all equal) is all zeros.

Overlays: 2D, the image in grey with the map in colour (``jet``, 40 % opaque) as one PNG; 3D, the three orthogonal
slices through the map's peak side by side in one PNG. Files are written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.io.atomic import write_bytes_atomic

__all__ = ["gradcam_map", "make_gradcam", "unit_scaled", "write_overlay"]


def unit_scaled(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``(B, 1, *size)`` scaled linearly from its (minimum, maximum) to (0, 1); constant maps to 0."""
    flat = maps.detach().float().flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = high - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return scaled.reshape(maps.shape)


def make_gradcam(model: nn.Module, layer: str) -> Any:
    """MONAI's ``GradCAM`` on ``layer`` of ``model`` with :func:`unit_scaled` maps (it hooks the layer: make one per
    model and reuse it)."""
    from monai.visualize import GradCAM

    model.eval()
    return GradCAM(nn_module=model, target_layers=layer, postprocessing=unit_scaled)


def gradcam_map(cam: Any, x: torch.Tensor, class_index: int) -> np.ndarray:
    """Grad-CAM (from :func:`make_gradcam`) of output ``class_index`` for one input ``x`` ``(1, C, *size)``:
    float32 ``(*size)`` in [0, 1]."""
    with torch.enable_grad():
        heat = cam(x.float(), class_idx=int(class_index))
    return heat[0, 0].detach().cpu().numpy().astype(np.float32)


def _normalised(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(float(high - low), 1e-8), 0.0, 1.0)


def write_overlay(image: np.ndarray, heat: np.ndarray, path: Path, title: str = "") -> Path:
    """A PNG of the heat map ``(*size)`` over ``image`` ``(C, *size)`` (first channel, or RGB for 3 channels in 2D).

    2D: one panel; 3D: the slices through the peak of ``heat`` across each axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = image.shape[0] == 3 and heat.ndim == 2
    background = np.stack([_normalised(c) for c in image], axis=-1) if rgb else _normalised(image[0])
    if heat.ndim == 2:
        panels = [(background, heat, "")]
    else:
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        panels = [
            (np.take(background, peak[a], axis=a), np.take(heat, peak[a], axis=a), f"axis {a} = {peak[a]}")
            for a in range(3)
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (picture, cam, label) in zip(axes[0], panels, strict=True):
        # array axis 0 (X) runs along a row of the picture, as a viewer shows it
        ax.imshow(np.swapaxes(picture, 0, 1), cmap=None if rgb else "gray", origin="upper")
        ax.imshow(cam.T, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0, origin="upper")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path
