"""Measurements of a segmentation on phantoms with known sizes, centroids and intensities."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from vesalius.errors import VesaliusError
from vesalius.evaluation.measure import measure_segmentation
from vesalius.io import Geometry, Image, to_sitk

SHAPE = (10, 12, 8)
SPACING = (0.5, 0.8, 2.0)
ORIGIN = (-10.5, 20.25, 30.125)
# Array axis 0 -> +y, axis 1 -> -z, axis 2 -> -x: permuted and flipped.
PERMUTED = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
GEOMETRY = Geometry(SPACING, ORIGIN, tuple(PERMUTED.ravel()))
VOXEL_MM3 = 0.5 * 0.8 * 2.0
# Label 1: box A (3 x 4 x 2 = 24 voxels, first in raster order) and the larger box B (3 x 3 x 3 = 27); label 2: box C.
BOX_A = (slice(1, 4), slice(2, 6), slice(1, 3))
BOX_B = (slice(6, 9), slice(8, 11), slice(4, 7))
BOX_C = (slice(6, 8), slice(1, 3), slice(0, 2))


def phantom(geometry: Geometry = GEOMETRY) -> tuple[Image, Image]:
    """A label map with boxes A, B (label 1) and C (label 2), and an image of value ``10 i + j`` at index (i, j, k)."""
    seg = np.zeros(SHAPE, np.uint8)
    seg[BOX_A] = 1
    seg[BOX_B] = 1
    seg[BOX_C] = 2
    i, j, _ = np.indices(SHAPE)
    return Image(seg[None], geometry), Image((10.0 * i + j)[None].astype(np.float32), geometry)


def test_phantom_sizes_centroids_boxes_and_intensities() -> None:
    seg, image = phantom()
    m = measure_segmentation(seg, image, labels={1: "tumour", 2: "cyst"})

    assert (m.quantity, m.unit, m.size_column) == ("volume", "mL", "volume_mL")
    assert (m.connectivity, m.neighbourhood) == ("full", 26)
    assert list(m.labels) == [1, 2]
    one, two = m.labels[1], m.labels[2]
    assert (one.name, two.name) == ("tumour", "cyst")
    assert (one.voxels, one.num_components, two.voxels, two.num_components) == (51, 2, 8, 1)
    assert one.size == pytest.approx(51 * VOXEL_MM3 / 1000, rel=1e-12)
    assert two.size == pytest.approx(8 * VOXEL_MM3 / 1000, rel=1e-12)

    b, a = one.components  # largest first, although A comes first in raster order
    assert (b.voxels, a.voxels) == (27, 24)
    assert a.size == pytest.approx(24 * VOXEL_MM3 / 1000, rel=1e-12)
    assert b.size == pytest.approx(0.0216, rel=1e-12)
    assert (a.bbox_start, a.bbox_stop) == ((1, 2, 1), (4, 6, 3))
    assert a.extent_mm == pytest.approx((1.5, 3.2, 4.0))
    assert a.centroid_index == pytest.approx((2.0, 3.5, 1.5))
    # spacing * index = (1.0, 2.8, 3.0); the direction maps it to (-3.0, 1.0, -2.8); plus the origin.
    assert a.centroid_world == pytest.approx((-13.5, 21.25, 27.325))
    # B: index centre (7, 9, 5) -> spacing * index (3.5, 7.2, 10) -> direction (-10, 3.5, -7.2).
    assert b.centroid_world == pytest.approx((-20.5, 23.75, 22.925))

    # Intensity 10 i + j over A: i uniform on {1, 2, 3} (variance 2/3), j uniform on {2..5} (variance 5/4).
    assert a.intensity is not None
    assert a.intensity.mean == pytest.approx((23.5,))
    assert a.intensity.std == pytest.approx((math.sqrt(100 * 2 / 3 + 5 / 4),))
    assert (a.intensity.min, a.intensity.max) == ((12.0,), (35.0,))
    c = two.components[0]
    assert c.intensity is not None and c.intensity.mean == pytest.approx((66.5,))


def test_world_centroid_matches_simpleitk_on_an_oblique_grid() -> None:
    a, b, c = np.radians([17.0, -23.0, 31.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    seg, _ = phantom(Geometry(SPACING, ORIGIN, tuple((rz @ ry @ rx).ravel())))
    itk = to_sitk(seg)
    m = measure_segmentation(seg)
    for lab in m.labels.values():
        for comp in lab.components:
            expected = itk.TransformContinuousIndexToPhysicalPoint(comp.centroid_index)
            assert comp.centroid_world == pytest.approx(expected, abs=1e-9)

    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.Execute(itk)
    for value, lab in m.labels.items():
        assert lab.voxels == shape_stats.GetNumberOfPixels(value)
        assert lab.size * 1000 == pytest.approx(shape_stats.GetPhysicalSize(value))
        # A label's centroid is the voxel-weighted mean of its components' centroids.
        weighted = sum(np.asarray(c.centroid_world) * c.voxels for c in lab.components) / lab.voxels
        assert weighted == pytest.approx(shape_stats.GetCentroid(value))


def test_2d_area_in_square_millimetres() -> None:
    seg = np.zeros((6, 7), np.int16)
    seg[1:4, 2:6] = 3
    geometry = Geometry((0.5, 0.25), (4.0, -2.0), (0.0, 1.0, -1.0, 0.0))
    m = measure_segmentation(Image(seg[None], geometry))
    assert (m.quantity, m.unit, m.size_column, m.neighbourhood) == ("area", "mm^2", "area_mm2", 8)
    (comp,) = m.labels[3].components
    assert m.labels[3].name == "3"
    assert comp.size == pytest.approx(12 * 0.5 * 0.25, rel=1e-12)
    assert comp.centroid_index == pytest.approx((2.0, 3.5))
    # spacing * index = (1.0, 0.875); columns (0, -1) and (1, 0): world offset (0.875, -1.0).
    assert comp.centroid_world == pytest.approx((4.875, -3.0))
    assert comp.extent_mm == pytest.approx((1.5, 1.0))
    row = m.to_rows()[0]
    assert row["area_mm2"] == pytest.approx(1.5)
    assert "centroid_z_mm" not in row and "bbox_start_k" not in row and "mean_intensity" not in row


@pytest.mark.parametrize(
    ("shape", "voxels", "face_neighbours", "full_neighbours"),
    [
        ((3, 3), [(0, 0), (1, 1)], 4, 8),
        ((3, 3, 3), [(0, 0, 0), (1, 1, 1)], 6, 26),
        ((3, 3, 3), [(0, 0, 0), (1, 1, 0)], 6, 26),
    ],
    ids=["2d-corner", "3d-corner", "3d-edge"],
)
def test_face_versus_full_connectivity(shape, voxels, face_neighbours, full_neighbours) -> None:
    arr = np.zeros(shape, np.uint8)
    for v in voxels:
        arr[v] = 1
    seg = Image(arr[None], Geometry.default(len(shape)))
    full, face = measure_segmentation(seg), measure_segmentation(seg, connectivity="face")
    assert (full.labels[1].num_components, full.neighbourhood) == (1, full_neighbours)
    assert (face.labels[1].num_components, face.neighbourhood) == (2, face_neighbours)
    assert face.labels[1].voxels == full.labels[1].voxels == 2


def test_image_on_another_grid_is_refused() -> None:
    seg, image = phantom()
    shifted = Geometry(SPACING, (ORIGIN[0] + 1.0, *ORIGIN[1:]), GEOMETRY.direction)
    with pytest.raises(VesaliusError, match="origin"):
        measure_segmentation(seg, Image(image.array, shifted))
    with pytest.raises(VesaliusError, match="shape"):
        measure_segmentation(seg, Image(image.array[:, :-1], GEOMETRY))


@pytest.mark.parametrize(
    ("array", "connectivity", "message"),
    [
        (np.zeros((2, *SHAPE)), "full", "2 channels"),
        (np.full((1, *SHAPE), 0.5), "full", "non-integer"),
        (np.zeros((1, *SHAPE)), "corner", "unknown connectivity"),
    ],
    ids=["channels", "probabilities", "connectivity"],
)
def test_bad_input_is_refused(array, connectivity, message) -> None:
    with pytest.raises(VesaliusError, match=message):
        measure_segmentation(Image(array, GEOMETRY), connectivity=connectivity)


def test_empty_segmentation_has_no_labels(tmp_path) -> None:
    seg, image = phantom()
    m = measure_segmentation(seg.with_array(np.zeros_like(seg.array)), image)
    assert m.labels == {} and m.to_rows() == [] and m.label_rows() == []
    m.write_csv(tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().splitlines() == [",".join(m.columns())]
    assert json.loads(m.write_json(tmp_path / "m.json").read_text())["labels"] == []


def test_rows_dict_and_files(tmp_path) -> None:
    seg, image = phantom()
    two_channels = image.with_array(np.concatenate([image.array, -image.array]))
    m = measure_segmentation(seg.with_array(seg.array.astype(np.float32)), two_channels, labels={1: "tumour"})
    rows = m.to_rows()
    assert [(r["label"], r["name"], r["component"], r["voxels"]) for r in rows] == [
        (1, "tumour", 1, 27),
        (1, "tumour", 2, 24),
        (2, "2", 1, 8),
    ]
    assert rows[1]["mean_intensity_c0"] == pytest.approx(23.5)
    assert rows[1]["mean_intensity_c1"] == pytest.approx(-23.5)
    assert rows[1]["min_intensity_c1"] == pytest.approx(-35.0)
    assert (rows[1]["centroid_x_mm"], rows[1]["bbox_stop_j"], rows[1]["extent_k_mm"]) == (pytest.approx(-13.5), 6, 4.0)
    assert m.label_rows()[0] == {
        "label": 1,
        "name": "tumour",
        "voxels": 51,
        "volume_mL": pytest.approx(0.0408),
        "components": 2,
    }

    csv_path, json_path = m.write_csv(tmp_path / "out" / "m.csv"), m.write_json(tmp_path / "out" / "m.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.csv", "m.json"]
    with csv_path.open(newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == m.columns()
    assert [float(r["volume_mL"]) for r in read] == pytest.approx([r["volume_mL"] for r in rows])
    data = json.loads(json_path.read_text())
    assert data == json.loads(json.dumps(m.to_dict()))
    assert (data["unit"], data["neighbourhood"], data["intensity_channels"]) == ("mL", 26, 2)
    assert data["labels"][0]["num_components"] == 2
    assert data["labels"][0]["components"][1]["centroid_world_mm"] == pytest.approx([-13.5, 21.25, 27.325])


def test_non_finite_intensity_becomes_null_in_json(tmp_path) -> None:
    seg, image = phantom()
    values = image.array.copy()
    values[(0, *BOX_C)] = np.nan
    m = measure_segmentation(seg, image.with_array(values))
    assert math.isnan(m.labels[2].components[0].intensity.mean[0])
    assert m.to_dict()["labels"][1]["components"][0]["intensity"]["mean"] == [None]
    written = json.loads(m.write_json(tmp_path / "m.json").read_text())
    assert written["labels"][1]["components"][0]["intensity"]["max"] == [None]
