"""Overlays: known masks give known colours at known places, the aspect follows the spacing, windows are right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import overlay_volume
from vesalius.errors import VesaliusError
from vesalius.io import Geometry, Image
from vesalius.reporting.overlay import (
    PALETTE,
    focus_point,
    label_colour,
    parse_window,
    render_overlay,
    render_panel,
    window_range,
)


def test_fill_and_outline_colours_at_known_pixels() -> None:
    grey = np.full((5, 6), 0.5)
    seg = np.zeros((5, 6), int)
    seg[0, 4] = 1
    reference = np.zeros((5, 6), int)
    reference[1:4, 1:4] = 2
    opaque = render_panel(grey, (1.0, 1.0), 1.0, seg, reference, alpha=1.0)
    assert opaque.shape == (5, 6, 3)
    assert tuple(opaque[0, 4]) == PALETTE[0]
    assert tuple(opaque[0, 0]) == (128, 128, 128)
    outline = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2), (3, 3)]
    assert all(tuple(opaque[r, c]) == label_colour(2) for r, c in outline)
    assert tuple(opaque[2, 2]) == (128, 128, 128)  # inside the reference: no fill
    half = render_panel(grey, (1.0, 1.0), 1.0, seg, alpha=0.5)
    expected = np.rint(0.5 * 127.5 + 0.5 * np.asarray(PALETTE[0]))
    np.testing.assert_array_equal(half[0, 4], expected)


def test_panel_size_follows_the_spacing() -> None:
    panel = render_panel(np.zeros((10, 10)), (2.0, 1.0), 0.5)
    assert panel.shape[:2] == (40, 20)  # 20 mm x 10 mm at 0.5 mm per pixel
    seg = np.zeros((10, 10), int)
    seg[3, 7] = 4
    panel = render_panel(np.zeros((10, 10)), (2.0, 1.0), 0.5, seg, alpha=1.0)
    rows, cols = np.nonzero(np.all(panel == label_colour(4), axis=-1))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (12, 15, 14, 15)  # a 4 x 2 block


def test_2d_overlay_puts_x_across_and_y_down_with_physical_aspect() -> None:
    geometry = Geometry((0.5, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    image = Image(np.zeros((1, 20, 10), np.float32), geometry)  # 10 mm x 10 mm
    seg = np.zeros((1, 20, 10), np.uint8)
    seg[0, 2, 7] = 1  # x = 2 (1.0-1.5 mm), y = 7 (7-8 mm)
    overlay = render_overlay(image, Image(seg, geometry), alpha=1.0, size=100)
    (panel,) = overlay.panels
    assert (panel.plane, panel.height, panel.width) == ("2d", 100, 100)
    pixels = overlay.pixels[panel.top : panel.top + panel.height, panel.left : panel.left + panel.width]
    rows, cols = np.nonzero(np.all(pixels == PALETTE[0], axis=-1))
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (70, 80, 10, 15)
    assert overlay.legend == {1: "label 1"}


def test_3d_planes_pass_through_the_largest_lesion_with_physical_aspect() -> None:
    image, seg = overlay_volume()
    assert focus_point(seg.array[0]) == (14, 5, 6)
    overlay = render_overlay(image, seg, labels={1: "organ", 2: "lesion"}, alpha=1.0, size=60)
    planes = {p.plane: p for p in overlay.panels}
    assert [(p.plane, p.index) for p in overlay.panels] == [("axial", 6), ("coronal", 5), ("sagittal", 14)]
    assert (planes["axial"].height, planes["axial"].width) == (32, 40)  # 16 mm down (y), 20 mm across (x)
    assert (planes["coronal"].height, planes["coronal"].width) == (60, 40)  # 30 mm (z) x 20 mm (x)
    assert (planes["sagittal"].height, planes["sagittal"].width) == (60, 32)
    axial = planes["axial"]
    pixels = overlay.pixels[axial.top : axial.top + axial.height, axial.left : axial.left + axial.width]
    rows, cols = np.nonzero(np.all(pixels == label_colour(2), axis=-1))
    assert (rows.min() // 2, rows.max() // 2, cols.min() // 2, cols.max() // 2) == (4, 6, 13, 15)
    coronal = planes["coronal"]
    pixels = overlay.pixels[coronal.top : coronal.top + coronal.height, coronal.left : coronal.left + coronal.width]
    rows, _ = np.nonzero(np.all(pixels == label_colour(2), axis=-1))
    assert (rows.min() // 6, rows.max() // 6) == (2, 4)  # z 5-7 shown with z up: rows 9-5 .. 9-7
    assert overlay.legend == {1: "organ", 2: "lesion"}


def test_3d_overlay_is_shown_in_the_same_orientation_whatever_the_direction() -> None:
    image, seg = overlay_volume()
    flip = np.diag([-1.0, 1.0, 1.0])
    flipped_image = Image(image.array[:, ::-1].copy(), Geometry((1.0, 1.0, 3.0), (19.0, 0.0, 0.0), tuple(flip.ravel())))
    flipped_seg = Image(seg.array[:, ::-1].copy(), flipped_image.geometry)  # the same world, stored mirrored
    a = render_overlay(image, seg, size=60)
    b = render_overlay(flipped_image, flipped_seg, size=60)
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_montage_spreads_axial_slices_over_the_segmentation() -> None:
    image, seg = overlay_volume()
    overlay = render_overlay(image, seg, montage=4, size=40)
    assert [p.plane for p in overlay.panels] == ["axial"] * 4
    assert [p.index for p in overlay.panels] == [2, 4, 5, 7]  # z 2..7 hold labels
    assert len({p.top for p in overlay.panels}) == 2  # a 2 x 2 grid


def test_windows() -> None:
    assert window_range(np.zeros(3), "lung") == (-1350.0, 150.0)
    assert window_range(np.zeros(3), "brain") == (0.0, 80.0)
    assert parse_window("abdomen") == "abdomen" and parse_window("40,400") == (40.0, 400.0)
    assert parse_window(None) is None
    with pytest.raises(VesaliusError, match="unknown window"):
        parse_window("liverish")
    values = np.concatenate([np.zeros(1000), np.arange(1, 101, dtype=float)])
    low, high = window_range(values, None, (0.0, 100.0))
    assert (low, high) == (1.0, 100.0)  # zeros (background after masking) are left out


def test_ct_window_maps_hounsfield_units_to_grey(tmp_path: Path) -> None:
    geometry = Geometry.default(2)
    ct = Image(np.array([[[-1000.0, 40.0, 240.0, 1000.0]]]).transpose(0, 2, 1), geometry)  # x = 0..3, y = 0
    overlay = render_overlay(ct, None, window="abdomen", size=4)  # 40 +- 200 HU
    (panel,) = overlay.panels
    row = overlay.pixels[panel.top, panel.left : panel.left + 4, 0]
    np.testing.assert_array_equal(row, [0, 128, 255, 255])
