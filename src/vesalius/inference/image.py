"""One image segmented on the network's grid, the answer on the image's own grid: the part of prediction that does
not depend on what runs the network (torch here, ONNX Runtime in :mod:`vesalius.runtime`).

The image is cropped to its non-zero region, filtered as in training (if the model was), resampled to the trained
spacing and normalised (:func:`vesalius.preprocessing.pipeline.preprocess_image`); a backend turns that ``(C, *grid)``
array into class probabilities ``(K, *grid)``; the label map (their argmax) is mapped back by the exact inverse of
the preprocessing, so it has the input's shape, spacing, origin and direction. NumPy and SimpleITK only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vesalius.io import Image
from vesalius.planning.plan import ChannelFilters, Normalization
from vesalius.preprocessing.pipeline import preprocess_image, restore_to_original

__all__ = ["segment_image"]


def segment_image(
    image: Image,
    spacing: Sequence[float],
    normalization: Sequence[Normalization],
    probabilities_of: Callable[[np.ndarray], np.ndarray],
    *,
    filters: Sequence[ChannelFilters] | None = None,
    return_probabilities: bool = False,
) -> tuple[Image, Image | None]:
    """Segment ``image`` ``(C, *spatial)``.

    Args:
        image: on its native grid.
        spacing: the grid the network works on; ``normalization``: per channel, as in training.
        probabilities_of: preprocessed float32 ``(C, *grid)`` -> class probabilities ``(K, *grid)``.
        filters: per channel, the intensity filters of training (``None``: none).
        return_probabilities: also return the probabilities on the input's grid.

    Returns:
        The ``uint8`` label map ``(1, *spatial)`` with the geometry of ``image``, and (``return_probabilities``) a
        float32 ``(K, *spatial)`` image on the same grid (background 1 outside the region that preprocessing cropped
        to), else ``None``.
    """
    data, _, properties = preprocess_image(image, None, spacing, normalization, filters)
    probabilities = np.asarray(probabilities_of(data), dtype=np.float32)
    labels = probabilities.argmax(axis=0)[None].astype(np.uint8)
    label_image = image.with_array(restore_to_original(labels, properties, is_label=True).array)
    if not return_probabilities:
        return label_image, None
    classes = [
        restore_to_original(p[None], properties, is_label=False, fill=1.0 if k == 0 else 0.0).array
        for k, p in enumerate(probabilities)
    ]
    return label_image, image.with_array(np.concatenate(classes, axis=0))
