"""Segmentations drawn over their image: one colour per label, a legend, true physical aspect.

Display convention: 3D images are first turned, by axis permutations and flips only, to the orientation of an
identity direction (array axes X, Y, Z along the LPS world axes). Then an axial panel (fixed Z) shows X across (the
patient's left on the right, radiological) and Y down (anterior at the top); a coronal panel (fixed Y) shows X
across and Z up; a sagittal panel (fixed X) shows Y across (anterior on the left) and Z up. A 2D image ``(C, X, Y)``
is shown like an axial panel: X across, Y down, as a picture file stores it.

Panels are resampled (nearest neighbour) onto square pixels of one common size in millimetres, so a voxel of
spacing ``(1, 3)`` mm becomes a 1 x 3 block of pixels and shapes keep their physical proportions. A segmentation
is drawn as a translucent fill in its label colour (``alpha``), a reference as a one-pixel outline in the same
colour. Intensities are windowed by a CT preset (:data:`WINDOW_PRESETS`), a ``(level, width)`` pair, or by default
between percentiles of the non-zero voxels (for MRI and pictures). Three-channel 8-bit pictures are shown in colour.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from vesalius.errors import VesaliusError
from vesalius.io import Image, reorient
from vesalius.io.atomic import write_bytes_atomic

__all__ = [
    "PALETTE",
    "WINDOW_PRESETS",
    "Overlay",
    "Panel",
    "focus_point",
    "label_colour",
    "parse_window",
    "render_overlay",
    "render_panel",
    "window_range",
]

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}
"""CT windows in Hounsfield units as ``(level, width)``: the window shows ``level - width/2 .. level + width/2``."""

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 57, 70),
    (46, 204, 64),
    (0, 116, 217),
    (255, 220, 0),
    (240, 18, 190),
    (57, 204, 204),
    (255, 133, 27),
    (177, 13, 201),
    (1, 255, 112),
    (133, 20, 75),
)
"""Label colours (RGB): label ``k >= 1`` gets ``PALETTE[(k - 1) % len(PALETTE)]``."""

Window = str | tuple[float, float] | None

_GAP = 6  # pixels between panels
_TITLE = 16  # pixel rows above each panel for its title
_LEGEND_ROW = 18
_LEGEND_ENTRY = 130  # pixels across per legend entry


def label_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of label value ``label`` (>= 1)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def parse_window(text: str | None) -> Window:
    """A window from the command line: a preset name, ``LEVEL,WIDTH``, or ``None``/``""`` (percentiles)."""
    if not text:
        return None
    if text.lower() in WINDOW_PRESETS:
        return text.lower()
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise VesaliusError(
            f"unknown window '{text}'", remedy=f"use one of {', '.join(WINDOW_PRESETS)} or LEVEL,WIDTH (e.g. 40,400)"
        ) from None
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise VesaliusError(f"--window {text}: the width must be positive", remedy="give LEVEL,WIDTH, e.g. 40,400")
    return (level, width)


def window_range(array: np.ndarray, window: Window = None, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple:
    """The intensity range ``(low, high)`` shown from black to white.

    Args:
        array: intensities, any shape.
        window: a :data:`WINDOW_PRESETS` name, ``(level, width)``, or ``None`` for the ``percentiles`` of the
            non-zero finite voxels (of all finite voxels when none is non-zero).
        percentiles: lower and upper percentile for ``window=None``.
    """
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise VesaliusError(f"unknown window '{window}'", remedy=f"use one of {', '.join(WINDOW_PRESETS)}")
        window = WINDOW_PRESETS[window]
    if window is not None:
        level, width = window
        return (float(level - width / 2), float(level + width / 2))
    values = array[np.isfinite(array)]
    nonzero = values[values != 0]
    values = nonzero if nonzero.size else values
    if values.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(values, percentiles)
    return (float(low), float(high) if high > low else float(low) + 1.0)


def focus_point(seg: np.ndarray, label: int | None = None) -> tuple[int, ...]:
    """The voxel at the centre of mass of the largest connected part of ``label`` in ``seg`` (shape ``(X, Y[, Z])``).

    ``label=None`` takes the highest label value present (lesions usually come after organs); an empty ``seg``
    gives the centre of the grid. Parts are connected through faces, edges and corners.
    """
    values = np.unique(seg)
    values = values[values != 0]
    if label is None and values.size:
        label = int(values.max())
    mask = seg == label if label is not None else np.zeros(seg.shape, bool)
    if not mask.any():
        return tuple(s // 2 for s in seg.shape)
    parts, _count = ndimage.label(mask, structure=np.ones((3,) * seg.ndim))
    sizes = np.bincount(parts.ravel())[1:]
    largest = parts == int(np.argmax(sizes)) + 1
    centre = ndimage.center_of_mass(largest)
    return tuple(round(c) for c in centre)


@dataclass(frozen=True)
class Panel:
    """Where one panel lies in an :class:`Overlay`'s pixels: ``pixels[top:top+height, left:left+width]``.

    ``plane`` is ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"2d"``; ``index`` the slice index along the
    plane's fixed array axis (``None`` in 2D).
    """

    plane: str
    index: int | None
    top: int
    left: int
    height: int
    width: int


@dataclass
class Overlay:
    """A rendered overlay: ``pixels`` ``(H, W, 3)`` uint8 RGB, its panels and the legend ``{label: name}``."""

    pixels: np.ndarray
    panels: list[Panel]
    legend: dict[int, str]

    def png(self) -> bytes:
        """The picture as PNG bytes."""
        from PIL import Image as PILImage

        buffer = io.BytesIO()
        PILImage.fromarray(self.pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the PNG atomically; returns the path."""
        write_bytes_atomic(path, self.png())
        return Path(path)


# Per plane: the fixed array axis, the axis shown across (columns), the axis shown down (rows), and whether the
# rows run against the axis (Z up).
_PLANES = {"axial": (2, 0, 1, False), "coronal": (1, 0, 2, True), "sagittal": (0, 1, 2, True)}


def _plane(volume: np.ndarray, spacing: tuple[float, ...], plane: str, index: int) -> tuple[np.ndarray, tuple]:
    """The 2D ``(rows, cols)`` section of ``volume`` ``(X, Y, Z)`` and its ``(row, column)`` spacing."""
    fixed, across, down, flip = _PLANES[plane]
    section = np.take(volume, index, axis=fixed)  # the two remaining axes keep their order
    remaining = [a for a in range(3) if a != fixed]
    section = section if remaining.index(down) == 0 else section.T
    if flip:
        section = section[::-1]
    return section, (spacing[down], spacing[across])


def render_panel(
    grey: np.ndarray,
    spacing: tuple[float, float],
    pixel_mm: float,
    seg: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """One panel: a windowed section with a segmentation fill and a reference outline.

    Args:
        grey: ``(rows, cols)`` values in ``[0, 1]``, or ``(rows, cols, 3)`` RGB values in ``[0, 1]``.
        spacing: ``(row, column)`` spacing in mm.
        pixel_mm: size of an output pixel in mm; the panel gets ``round(rows * spacing[0] / pixel_mm)`` rows and
            ``round(cols * spacing[1] / pixel_mm)`` columns (at least one each).
        seg: ``(rows, cols)`` label map drawn as a fill of opacity ``alpha``, or ``None``.
        reference: ``(rows, cols)`` label map drawn as a one-pixel outline inside each label's region.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    rows = _resample_index(grey.shape[0], spacing[0], pixel_mm)
    cols = _resample_index(grey.shape[1], spacing[1], pixel_mm)
    picture = grey[rows][:, cols]
    rgb = picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=-1)
    rgb = rgb.astype(np.float32) * 255.0
    if seg is not None:
        labels = seg[rows][:, cols]
        for value in np.unique(labels[labels != 0]):
            mask = labels == value
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(label_colour(int(value)), np.float32)
    if reference is not None:
        labels = reference[rows][:, cols]
        for value in np.unique(labels[labels != 0]):
            mask = labels == value
            outline = mask & ~ndimage.binary_erosion(mask, border_value=0)
            rgb[outline] = label_colour(int(value))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _resample_index(n: int, spacing: float, pixel_mm: float) -> np.ndarray:
    """Source index of each output pixel along an axis of ``n`` voxels (nearest neighbour, pixel centres)."""
    size = max(1, round(n * spacing / pixel_mm))
    return np.minimum(((np.arange(size) + 0.5) * pixel_mm / spacing).astype(np.int64), n - 1)


def _canonical(image: Image) -> Image:
    """A 3D image turned (axis permutations and flips) to the orientation of an identity direction."""
    import SimpleITK as sitk

    identity = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(np.eye(3).ravel()))
    return reorient(image, identity)


def _display_values(image: Image, channel: int, window: Window, percentiles: tuple[float, float]) -> np.ndarray:
    """``(*spatial)`` grey values or ``(*spatial, 3)`` colours in ``[0, 1]``."""
    array = image.array
    if array.shape[0] == 3 and array.dtype == np.uint8 and window is None:
        return np.moveaxis(array, 0, -1).astype(np.float32) / 255.0
    if not 0 <= channel < array.shape[0]:
        raise VesaliusError(f"channel {channel} does not exist", remedy=f"use 0-{array.shape[0] - 1}")
    values = array[channel].astype(np.float32)
    low, high = window_range(values, window, percentiles)
    return np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0)


def _label_array(seg: Image | None, image: Image, what: str) -> np.ndarray | None:
    if seg is None:
        return None
    if seg.spatial_shape != image.spatial_shape:
        raise VesaliusError(
            f"the {what} has shape {seg.spatial_shape}, the image {image.spatial_shape}",
            remedy=f"give the {what} on the image's grid (e.g. the output of 'vesalius predict' for this image)",
        )
    return np.rint(seg.array[0]).astype(np.int64)


def render_overlay(
    image: Image,
    seg: Image | None = None,
    reference: Image | None = None,
    *,
    labels: dict[int, str] | None = None,
    window: Window = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    point: tuple[int, ...] | None = None,
    focus_label: int | None = None,
    montage: int = 0,
    alpha: float = 0.5,
    channel: int = 0,
    size: int = 256,
) -> Overlay:
    """Draw ``seg`` (fill) and ``reference`` (outline) over ``image``.

    Args:
        image: ``(C, X, Y)`` or ``(C, X, Y, Z)``; ``channel`` is shown (three-channel uint8 pictures in colour).
        seg: label map on the image's grid, ``(1, *spatial)``, or ``None``.
        reference: reference label map on the image's grid, or ``None``.
        labels: ``{value: name}`` for the legend; by default the values found, named ``label K``.
        window: CT preset name, ``(level, width)``, or ``None`` for percentile windowing.
        percentiles: the percentiles used when ``window`` is ``None``.
        point: 3D: the voxel ``(x, y, z)`` (in the image's array order) the three planes pass through; by default
            :func:`focus_point` of the segmentation (else of the reference).
        focus_label: the label whose largest part :func:`focus_point` centres on.
        montage: 3D: show this many axial slices, evenly spread over the segmented slices, instead of three planes.
        alpha: opacity of the segmentation fill.
        size: the longest panel side in pixels.

    Returns:
        An :class:`Overlay`.
    """
    seg_array = _label_array(seg, image, "segmentation")
    ref_array = _label_array(reference, image, "reference")
    if image.ndim == 3:
        original = image
        image = _canonical(image)
        seg_array = None if seg is None else np.rint(_canonical(seg).array[0]).astype(np.int64)
        ref_array = None if reference is None else np.rint(_canonical(reference).array[0]).astype(np.int64)
        if point is not None:
            point = _canonical_point(original, image, point)
    values = _display_values(image, channel, window, percentiles)
    spacing = image.geometry.spacing
    sections: list[tuple[str, int | None, tuple]] = []  # (plane, index, (grey, seg, ref, spacing))
    if image.ndim == 2:
        sections.append(("2d", None, _sections_2d(values, seg_array, ref_array, spacing)))
    else:
        focus = seg_array if seg_array is not None and seg_array.any() else ref_array
        if montage > 0:
            planes = [("axial", int(z)) for z in _montage_slices(focus, values.shape[2], montage)]
        else:
            centre = point or (focus_point(focus, focus_label) if focus is not None else None)
            centre = centre or tuple(s // 2 for s in values.shape[:3])
            planes = [(p, int(centre[_PLANES[p][0]])) for p in ("axial", "coronal", "sagittal")]
        for plane, index in planes:
            parts = [None if a is None else _plane(a, spacing, plane, index)[0] for a in (seg_array, ref_array)]
            grey, plane_spacing = _plane(values, spacing, plane, index)
            sections.append((plane, index, (grey, parts[0], parts[1], plane_spacing)))
    extent = max(max(s[2][0].shape[0] * s[2][3][0], s[2][0].shape[1] * s[2][3][1]) for s in sections)
    pixel_mm = extent / size
    rendered = [
        (plane, index, render_panel(grey, sp, pixel_mm, s, r, alpha)) for plane, index, (grey, s, r, sp) in sections
    ]
    found = set()
    for array in (seg_array, ref_array):
        if array is not None:
            found |= {int(v) for v in np.unique(array) if v != 0}
    legend = {k: (labels or {}).get(k, f"label {k}") for k in sorted(found)}
    caption = "fill: segmentation, outline: reference" if seg_array is not None and ref_array is not None else ""
    columns = math.ceil(math.sqrt(len(rendered))) if montage > 0 else len(rendered)
    return _compose(rendered, legend, caption, columns)


def _canonical_point(original: Image, turned: Image, point: tuple[int, ...]) -> tuple[int, ...]:
    """The voxel of ``turned`` at the world position of voxel ``point`` of ``original``."""
    world = original.geometry.affine() @ np.asarray([*point, 1.0])
    index = np.linalg.solve(turned.geometry.affine(), world)[:3]
    return tuple(round(v) for v in index)


def _sections_2d(values: np.ndarray, seg: np.ndarray | None, ref: np.ndarray | None, spacing: tuple) -> tuple:
    """A 2D image ``(X, Y)`` shown with X across and Y down: ``(grey, seg, ref, (row, column) spacing)``."""

    def turn(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.swapaxes(a, 0, 1)

    return turn(values), turn(seg), turn(ref), (spacing[1], spacing[0])


def _montage_slices(focus: np.ndarray | None, depth: int, count: int) -> np.ndarray:
    """``count`` axial slice indices evenly spread over the slices holding labels (all slices when none)."""
    occupied = np.flatnonzero(focus.any(axis=(0, 1))) if focus is not None else np.array([], int)
    low, high = (occupied.min(), occupied.max()) if occupied.size else (0, depth - 1)
    return np.unique(np.rint(np.linspace(low, high, count)).astype(int))


def _compose(
    rendered: list[tuple[str, int | None, np.ndarray]], legend: dict[int, str], caption: str, columns: int
) -> Overlay:
    """Panels in a grid (titles above), the legend and a caption below, on a black background."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    rows = math.ceil(len(rendered) / columns)
    cell_w = max(p.shape[1] for _, _, p in rendered)
    cell_h = max(p.shape[0] for _, _, p in rendered) + _TITLE
    width = columns * cell_w + (columns + 1) * _GAP
    per_row = max(1, (width - 2 * _GAP) // _LEGEND_ENTRY)
    legend_rows = math.ceil(len(legend) / per_row) + bool(caption)
    height = rows * cell_h + (rows + 1) * _GAP + legend_rows * _LEGEND_ROW
    canvas = np.zeros((height, width, 3), np.uint8)
    panels = []
    for i, (plane, index, pixels) in enumerate(rendered):
        top = _GAP + (i // columns) * (cell_h + _GAP) + _TITLE
        left = _GAP + (i % columns) * (cell_w + _GAP)
        canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        panels.append(Panel(plane, index, top, left, pixels.shape[0], pixels.shape[1]))
    picture = PILImage.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for panel in panels:
        title = panel.plane if panel.index is None else f"{panel.plane} {panel.index}"
        draw.text((panel.left, panel.top - _TITLE + 2), title, fill=(200, 200, 200))
    legend_top = height - legend_rows * _LEGEND_ROW
    for i, (value, name) in enumerate(legend.items()):
        x = _GAP + (i % per_row) * _LEGEND_ENTRY
        y = legend_top + (i // per_row) * _LEGEND_ROW + 3
        draw.rectangle((x, y, x + 11, y + 11), fill=label_colour(value))
        draw.text((x + 16, y), f"{value}: {name}"[:20], fill=(230, 230, 230))
    if caption:
        draw.text((_GAP, height - _LEGEND_ROW + 3), caption, fill=(200, 200, 200))
    return Overlay(np.asarray(picture), panels, legend)
