"""One image segmented on the network's grid, the answer on the image's own grid: the part of prediction that does
not depend on what runs the network (torch here, ONNX Runtime in :mod:`vesalius.runtime`).

The image is cropped to its non-zero region, filtered as in training (if the model was), resampled to the trained
spacing and normalised (:func:`vesalius.preprocessing.pipeline.preprocess_image`); a backend turns that ``(C, *grid)``
array (of a CT, only the box around its tissue: :mod:`vesalius.inference.roi`) into class probabilities
``(K, *grid)``; the label map (their argmax) is mapped back by the exact inverse of
the preprocessing, so it has the input's shape, spacing, origin and direction. NumPy and SimpleITK only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from vesalius.inference.roi import tissue_box
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
    window: Sequence[int] | None = None,
    slice_axis: int | None = None,
) -> tuple[Image, Image | None]:
    """Segment ``image`` ``(C, *spatial)``.

    Args:
        image: on its native grid.
        spacing: the grid the network works on; ``normalization``: per channel, as in training.
        probabilities_of: preprocessed float32 ``(C, *grid)`` (or a box of it) -> class probabilities ``(K, *grid)``.
        filters: per channel, the intensity filters of training (``None``: none).
        return_probabilities: also return the probabilities on the input's grid.
        window: the network's patch: a CT image is then predicted only in the box around its tissue
            (:func:`vesalius.inference.roi.tissue_box`; background outside); ``None``: everywhere.
        slice_axis: for a 2D network on a 3D grid, the axis it predicts slice by slice.

    Returns:
        The ``uint8`` label map ``(1, *spatial)`` with the geometry of ``image``, and (``return_probabilities``) a
        float32 ``(K, *spatial)`` image on the same grid (background 1 outside the region that preprocessing cropped
        to), else ``None``.
    """
    data, _, properties = preprocess_image(image, None, spacing, normalization, filters)
    box = None if window is None else tissue_box(data, normalization, window, slice_axis)
    if box is None:
        probabilities = np.asarray(probabilities_of(data), dtype=np.float32)
    else:
        inside = np.asarray(probabilities_of(np.ascontiguousarray(data[(slice(None), *box)])), dtype=np.float32)
        probabilities = np.zeros((inside.shape[0], *data.shape[1:]), dtype=np.float32)
        probabilities[0] = 1.0
        probabilities[(slice(None), *box)] = inside
    labels = probabilities.argmax(axis=0)[None].astype(np.uint8)
    label_image = image.with_array(restore_to_original(labels, properties, is_label=True).array)
    if not return_probabilities:
        return label_image, None
    classes = [
        restore_to_original(p[None], properties, is_label=False, fill=1.0 if k == 0 else 0.0).array
        for k, p in enumerate(probabilities)
    ]
    return label_image, image.with_array(np.concatenate(classes, axis=0))
