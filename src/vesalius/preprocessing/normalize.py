"""Intensity normalisation per channel, as the plan says (see :func:`vesalius.planning.rules.normalization`).

Schemes: ``ct`` (clip to data-set foreground percentiles, then z-score with the data-set mean/std), ``zscore``
(per image, optionally inside the non-zero mask, where the outside is set to 0), ``scale`` (``low..high`` to
0..1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vesalius.planning.plan import Normalization


def normalize(
    array: np.ndarray, schemes: Sequence[Normalization], nonzero_mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalise a ``(C, *spatial)`` array channel by channel; returns float32.

    Args:
        array: the image.
        schemes: one normalisation per channel (from the plan).
        nonzero_mask: ``(*spatial)`` bool mask of the region that was non-zero before cropping; used by
            ``zscore`` with ``use_nonzero_mask``.
    """
    if len(schemes) != array.shape[0]:
        raise ValueError(f"{array.shape[0]} channels but {len(schemes)} normalisation schemes")
    out = np.empty(array.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        x = array[c].astype(np.float32, copy=False)
        kind = scheme.scheme
        if kind == "ct":
            low, high = scheme.clip  # type: ignore[misc]
            out[c] = (np.clip(x, low, high) - scheme.mean) / scheme.std  # type: ignore[operator]
        elif kind == "scale":
            out[c] = (x - scheme.low) / (scheme.high - scheme.low)  # type: ignore[operator]
        elif kind == "zscore":
            use_mask = scheme.use_nonzero_mask and nonzero_mask is not None and nonzero_mask.any()
            values = x[nonzero_mask] if use_mask else x
            mean, std = float(values.mean()), float(values.std())
            out[c] = (x - mean) / max(std, 1e-8)
            if use_mask:
                out[c][~nonzero_mask] = 0
        else:
            raise ValueError(f"unknown normalisation scheme '{kind}'")
    return out
