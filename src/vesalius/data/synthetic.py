"""Seeded synthetic phantoms that look like a small MRI segmentation task, so demos and tests need no download.

Everything here is deterministic: a case is a pure function of its seed (``np.random.default_rng(seed)``) and
its arguments, so the same seed gives bit-identical arrays and geometry on the same platform.

Arrays follow :mod:`vesalius.io.image`: channels first, ``(1, X, Y)`` in 2D and ``(1, X, Y, Z)`` in 3D, with
``Z`` the slice axis of a 3D case. Geometry: the drawn spacing, a non-zero origin, identity direction.

What a case contains (all sizes are drawn in millimetres and converted to voxels, so the anatomy keeps its
physical size whatever the spacing):

* a head/body-like ellipsoid (semi-axes about 18-25 mm in-plane, 28-40 mm along ``Z``, smaller where the
  field of view is small) with a bright 2-3.5 mm rim (intensity 220-280) around a darker interior (100-140);
  the image is exactly ``0`` outside it (as after masking), so there is a foreground to crop;
* an organ: a deformed, rotated ellipsoid inside the body (semi-axes about 8-11.5 mm in-plane, 9-13 mm along
  ``Z``), intensity about 300 (276-324);
* lesions of ``num_lesion_classes`` classes inside the organ, never touching its border (each lesion voxel has
  all its neighbours, diagonals included, inside the organ or another lesion), 0-3 per class (about 90 % of
  cases have a lesion of a given class), radii about 1.8-4.2 mm but at least 0.9 voxel. Lesion class ``k``
  (0-based, label ``2 + k``) is brighter than the organ for even ``k`` (label 2: +45-60 %) and darker for odd
  ``k`` (label 3: -42-52 %), more so for higher ``k``;
* a smooth random deformation shared by all shapes, a fine tissue texture, partial-volume blur, a smooth
  multiplicative bias field (+-10-20 %) and Rician noise (sigma 12-25), so classes overlap in intensity
  but lesion and organ means differ by several noise standard deviations.

Label coding (``uint8``, one channel): ``0`` background (air and body), ``1`` organ, ``2 .. 1 + num_lesion_classes``
the lesion classes. The image is ``float32``, one channel, non-negative.

Default geometry when ``shape`` / ``spacing`` are not given: 3D sides 32-48 voxels, in-plane spacing
0.8-1.2 mm (the same along ``X`` and ``Y``), slice spacing 1.0-3.0 mm; 2D sides 48-80 pixels, spacing
0.5-1.0 mm (isotropic). Sides are drawn so that the field of view is at least 40 mm in-plane and along
``Z`` where the side range allows it.

Datasets: :func:`write_segmentation_dataset` writes a Medical Segmentation Decathlon layout and
:func:`write_classification_dataset` writes one folder per class (``absent`` / ``present``); case ``i`` of a
dataset written with ``seed`` uses the case seed ``seed * 100003 + i``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from vesalius.io.image import Geometry, Image, to_sitk

__all__ = [
    "CASE_SEED_STRIDE",
    "case_seed",
    "make_classification_case",
    "make_segmentation_case",
    "write_classification_dataset",
    "write_segmentation_dataset",
]

CASE_SEED_STRIDE = 100003
"""Case ``i`` of a dataset written with ``seed`` is generated with ``seed * CASE_SEED_STRIDE + i``."""

_SIDE_RANGE = {2: (48, 80), 3: (32, 48)}
_INPLANE_SPACING = {2: (0.5, 1.0), 3: (0.8, 1.2)}
_Z_SPACING = (1.0, 3.0)
_MIN_FOV_MM = (40.0, 40.0)  # in-plane, along Z

_ORGAN_MEAN = 300.0
_LESION_COUNT_P = (0.1, 0.5, 0.3, 0.1)  # probability of 0, 1, 2, 3 lesions of a class
_MAX_LESION_CLASSES = 250

# Sample directions on the unit sphere / circle used to test whether the organ fits inside the body.
_FIT_DIRECTIONS: dict[int, np.ndarray] = {}


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset written with ``seed``."""
    return seed * CASE_SEED_STRIDE + index


# --------------------------------------------------------------------------------------------- public API


def make_segmentation_case(
    seed: int,
    ndim: int = 3,
    shape: tuple[int, ...] | None = None,
    spacing: tuple[float, ...] | None = None,
    num_lesion_classes: int = 1,
) -> tuple[Image, Image]:
    """One synthetic MRI-like case and its label map.

    Args:
        seed: non-negative seed; the same seed and arguments give bit-identical output.
        ndim: 2 or 3 spatial dimensions.
        shape: spatial shape ``(X, Y[, Z])``; drawn from the seed when ``None``.
        spacing: voxel size in mm along each axis; drawn from the seed when ``None``.
        num_lesion_classes: number of lesion classes (labels ``2 .. 1 + num_lesion_classes``); may be 0.

    Returns:
        ``(image, label)``: image ``float32`` of shape ``(1, *shape)``, label ``uint8`` of the same shape,
        sharing one geometry (drawn spacing, non-zero origin, identity direction).
    """
    image, label, geometry = _generate(seed, ndim, shape, spacing, num_lesion_classes, presence=None)
    return Image(image[None], geometry), Image(label[None], geometry)


def make_classification_case(
    seed: int,
    present: bool,
    ndim: int = 2,
    shape: tuple[int, ...] | None = None,
    spacing: tuple[float, ...] | None = None,
) -> Image:
    """One synthetic image with (``present=True``) or without a lesion, for a two-class classification task.

    The image looks like :func:`make_segmentation_case` with one lesion class: a present case has one or two
    bright lesions of 2.8-4.2 mm radius inside the organ, an absent case has none.

    Args:
        seed: non-negative seed; the same seed and arguments give bit-identical output.
        present: whether the image shows a lesion (the positive class).
        ndim: 2 or 3 spatial dimensions.
        shape: spatial shape; drawn from the seed when ``None``.
        spacing: voxel size in mm; drawn from the seed when ``None``.

    Returns:
        ``float32`` image of shape ``(1, *shape)``.
    """
    image, _, geometry = _generate(seed, ndim, shape, spacing, 1, presence=bool(present))
    return Image(image[None], geometry)


def write_segmentation_dataset(
    root: str | Path,
    num_cases: int = 12,
    ndim: int = 3,
    seed: int = 0,
    num_lesion_classes: int = 1,
    name: str = "Phantom",
) -> Path:
    """Write a synthetic dataset in the Medical Segmentation Decathlon layout.

    Layout: ``root/dataset.json``, ``root/imagesTr/phantom_000.nii.gz`` ... and
    ``root/labelsTr/phantom_000.nii.gz`` ...; case ``i`` is ``make_segmentation_case(seed * 100003 + i, ...)``.
    Everything is written into a temporary folder next to ``root`` which is then renamed to ``root``, so
    ``root`` either does not exist or is complete.

    Args:
        root: the dataset folder; it must not exist or be an empty folder.
        num_cases: number of training cases.
        ndim: 2 or 3.
        seed: non-negative dataset seed.
        num_lesion_classes: number of lesion classes.
        name: the ``name`` field of ``dataset.json``.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` exists and is not an empty folder.
    """
    import SimpleITK as sitk

    _check_ndim(ndim)
    _check_count(num_cases)
    _check_seed(seed)
    _check_lesion_classes(num_lesion_classes)
    root = Path(root)
    labels = {"0": "background", "1": "organ"}
    for k in range(num_lesion_classes):
        labels[str(2 + k)] = "lesion" if num_lesion_classes == 1 else f"lesion_{k + 1}"
    training = []
    tmp = _make_temp_root(root)
    try:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for i in range(num_cases):
            image, label = make_segmentation_case(case_seed(seed, i), ndim=ndim, num_lesion_classes=num_lesion_classes)
            file_name = f"phantom_{i:03d}.nii.gz"
            sitk.WriteImage(to_sitk(image), str(tmp / "imagesTr" / file_name), useCompression=True)
            sitk.WriteImage(to_sitk(label), str(tmp / "labelsTr" / file_name), useCompression=True)
            training.append({"image": f"./imagesTr/{file_name}", "label": f"./labelsTr/{file_name}"})
        description = (
            f"Synthetic MRI-like phantoms from vesalius.data.synthetic (dataset seed {seed}; case i uses "
            f"seed {seed} * {CASE_SEED_STRIDE} + i): an organ with {num_lesion_classes} lesion class(es) "
            "inside it."
        )
        meta = {
            "name": name,
            "description": description,
            "reference": "vesalius.data.synthetic",
            "licence": "CC0",
            "release": "1.0",
            "tensorImageSize": f"{ndim}D",
            "modality": {"0": "MRI"},
            "labels": labels,
            "numTraining": num_cases,
            "numTest": 0,
            "training": training,
            "test": [],
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        _publish(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def write_classification_dataset(
    root: str | Path,
    num_cases: int = 20,
    ndim: int = 2,
    seed: int = 0,
) -> Path:
    """Write a synthetic two-class dataset: ``root/absent/*.nii.gz`` and ``root/present/*.nii.gz``.

    Case ``i`` (``case_{i:03d}.nii.gz``, numbered across both folders so names are unique) shows a lesion when
    ``i`` is odd, so the classes are balanced (the absent class gets the extra case when ``num_cases`` is
    odd); it is ``make_classification_case(seed * 100003 + i, present=i % 2 == 1, ndim=ndim)``. Written into a
    temporary folder which is then renamed to ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not an empty folder.
    """
    import SimpleITK as sitk

    _check_ndim(ndim)
    _check_count(num_cases)
    _check_seed(seed)
    root = Path(root)
    tmp = _make_temp_root(root)
    try:
        for folder in ("absent", "present"):
            (tmp / folder).mkdir()
        for i in range(num_cases):
            present = i % 2 == 1
            image = make_classification_case(case_seed(seed, i), present=present, ndim=ndim)
            path = tmp / ("present" if present else "absent") / f"case_{i:03d}.nii.gz"
            sitk.WriteImage(to_sitk(image), str(path), useCompression=True)
        _publish(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


# --------------------------------------------------------------------------------------------- checks


def _check_ndim(ndim: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, not {ndim!r}")


def _check_count(n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"the number of cases must be a positive integer, not {n!r}")


def _check_seed(seed: int) -> None:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")


def _check_lesion_classes(n: int) -> None:
    if int(n) != n or not 0 <= n <= _MAX_LESION_CLASSES:
        raise ValueError(f"num_lesion_classes must be an integer in [0, {_MAX_LESION_CLASSES}], not {n!r}")


# --------------------------------------------------------------------------------------------- writing


def _make_temp_root(root: Path) -> Path:
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} already exists and is not an empty folder; choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    tmp.chmod(0o755)
    return tmp


def _publish(tmp: Path, root: Path) -> None:
    """Rename the finished temporary folder to ``root`` (which may exist as an empty folder)."""
    try:
        os.replace(tmp, root)
    except OSError as err:
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # platforms that cannot rename onto an empty folder
            os.replace(tmp, root)
        else:
            raise FileExistsError(f"{root} appeared while the dataset was being written") from err


# --------------------------------------------------------------------------------------------- generator


def _generate(
    seed: int,
    ndim: int,
    shape: tuple[int, ...] | None,
    spacing: tuple[float, ...] | None,
    num_lesion_classes: int,
    presence: bool | None,
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """The spatial image (float32), label (uint8) and geometry of one case.

    ``presence``: ``None`` draws 0-3 lesions per class; ``True`` draws 1-2 lesions of 2.8-4.2 mm radius
    per class; ``False`` draws none.
    """
    _check_ndim(ndim)
    _check_lesion_classes(num_lesion_classes)
    rng = np.random.default_rng(seed)
    shape, spacing_arr = _draw_grid(rng, ndim, shape, spacing)
    fov = np.asarray(shape) * spacing_arr
    origin = np.round(-0.5 * (np.asarray(shape) - 1) * spacing_arr + rng.uniform(-30.0, 30.0, ndim), 2)
    origin = np.where(origin == 0.0, 0.01, origin)
    geometry = Geometry(tuple(spacing_arr), tuple(origin), tuple(np.eye(ndim).ravel()))
    # Physical coordinates (mm) of the voxel centres, relative to the centre of the grid.
    axes = [(np.arange(n) - 0.5 * (n - 1)) * s for n, s in zip(shape, spacing_arr, strict=True)]

    # --- anatomy, in mm --------------------------------------------------------------------------------
    inplane = [0, 1]
    body_r = np.empty(ndim)
    body_r[inplane] = rng.uniform(18.0, 25.0, 2)
    if ndim == 3:
        body_r[2] = rng.uniform(28.0, 40.0)
    body_c = rng.uniform(-1.0, 1.0, ndim) * np.minimum(2.0, 0.02 * fov)
    body_rot = _rotation(ndim, rng.uniform(-0.17, 0.17), 0.0, 0.0)
    # Keep a margin of background around the body (room for the warp and the bumps): shrink it to fit.
    limit = np.maximum(0.5 * fov - np.abs(body_c) - spacing_arr - 2.5, 0.25 * fov)
    body_r = body_r * np.minimum(1.0, limit / (1.04 * _half_extent(body_rot, body_r)))
    rim = rng.uniform(2.0, 3.5)

    organ_r = np.empty(ndim)
    organ_r[inplane] = rng.uniform(8.0, 11.5, 2)
    if ndim == 3:
        organ_r[2] = rng.uniform(9.0, 13.0)
    tilt = rng.uniform(-0.44, 0.44, 2)
    organ_rot = _rotation(ndim, rng.uniform(0.0, 2.0 * math.pi), tilt[0], tilt[1])
    organ_c, organ_r = _place_organ(rng, body_c, body_rot, body_r, organ_rot, organ_r)
    organ_bump = 0.07

    radius_range = (1.8, 4.2)
    if presence is None:
        counts = rng.choice(len(_LESION_COUNT_P), size=num_lesion_classes, p=_LESION_COUNT_P)
    elif presence:
        counts = rng.integers(1, 3, size=num_lesion_classes)
        radius_range = (2.8, 4.2)
    else:
        counts = np.zeros(num_lesion_classes, dtype=int)
    lesions: list[tuple[int, np.ndarray, np.ndarray]] = []  # (class index, centre, radii)
    for k, count in enumerate(counts):
        for _ in range(int(count)):
            lesions.append((k, *_place_lesion(rng, organ_c, organ_rot, organ_r, spacing_arr, radius_range, lesions)))
    lesion_bump = 0.15

    # --- intensities -----------------------------------------------------------------------------------
    organ_mean = _ORGAN_MEAN * rng.uniform(0.92, 1.08)
    body_mean = rng.uniform(100.0, 140.0)
    rim_mean = rng.uniform(220.0, 280.0)
    lesion_means = np.empty(num_lesion_classes)
    for k in range(num_lesion_classes):
        step = 1.0 + 0.8 * (k // 2)
        if k % 2 == 0:
            lesion_means[k] = organ_mean * (1.0 + rng.uniform(0.45, 0.6) * step)
        else:
            lesion_means[k] = organ_mean * (1.0 - min(0.75, rng.uniform(0.42, 0.52) * step))
    sigma = rng.uniform(12.0, 25.0)
    bias_amp = rng.uniform(0.1, 0.2)

    # --- smooth random fields --------------------------------------------------------------------------
    warp_amp = rng.uniform(0.6, 1.4)
    warp = [warp_amp * _smooth_field(rng, axes, rng.uniform(20.0, 35.0), 12) for _ in range(ndim)]
    body_bump = _smooth_field(rng, axes, 30.0, 12)
    shape_bump = _smooth_field(rng, axes, 14.0, 16)
    small_bump = _smooth_field(rng, axes, 6.0, 16)
    texture = _smooth_field(rng, axes, 4.0, 32)
    bias = _smooth_field(rng, axes, 2.0 * float(fov.max()), 6)
    bias = 1.0 + bias_amp * bias / max(float(np.abs(bias).max()), 1e-6)

    # --- rasterise -------------------------------------------------------------------------------------
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    coords = [g + w for g, w in zip(grid, warp, strict=True)]  # where each voxel samples the reference anatomy
    reach = np.array([float(np.abs(w).max()) for w in warp]) + spacing_arr
    bump_max = (float(np.abs(shape_bump).max()), float(np.abs(small_bump).max()))

    full = tuple(slice(None) for _ in range(ndim))
    body = _inside(coords, full, body_c, body_rot, body_r, body_bump, 0.03)
    inner = _inside(coords, full, body_c, body_rot, np.maximum(body_r - rim, 1.0), body_bump, 0.03)
    label = np.zeros(tuple(shape), dtype=np.uint8)
    sl = _bbox(axes, reach, organ_c, organ_rot, organ_r * (1.0 + organ_bump * bump_max[0]))
    organ = _inside(coords, sl, organ_c, organ_rot, organ_r, shape_bump, organ_bump)
    label[sl][organ] = 1
    # Lesions may only occupy voxels whose whole neighbourhood lies in the organ.
    core_sl = _bbox(axes, reach, organ_c, organ_rot, organ_r * (1.0 + organ_bump * bump_max[0]), pad=1)
    core = ndimage.binary_erosion(label[core_sl] >= 1, structure=np.ones((3,) * ndim, bool), border_value=0)
    allowed = np.zeros(tuple(shape), dtype=bool)
    allowed[core_sl] = core
    eye = np.eye(ndim)
    for k, centre, radii in lesions:
        lsl = _bbox(axes, reach, centre, eye, radii * (1.0 + lesion_bump * bump_max[1]))
        mask = _inside(coords, lsl, centre, eye, radii, small_bump, lesion_bump) & allowed[lsl]
        label[lsl][mask] = 2 + k

    tissue = np.where(label > 0, label + 2, np.where(inner, 1, np.where(body, 2, 0))).astype(np.intp)
    means = np.concatenate([[0.0, body_mean, rim_mean, organ_mean], lesion_means])
    textures = np.concatenate([[0.0, 0.10, 0.06, 0.05], np.full(num_lesion_classes, 0.05)])
    signal = means[tissue] * (1.0 + textures[tissue] * texture)
    signal = ndimage.gaussian_filter(signal, 0.5, truncate=3.0) * bias
    real = signal + sigma * rng.standard_normal(signal.shape)
    imag = sigma * rng.standard_normal(signal.shape)
    image = np.sqrt(real * real + imag * imag)
    image[tissue == 0] = 0.0
    return image.astype(np.float32), label, geometry


def _draw_grid(
    rng: np.random.Generator, ndim: int, shape: tuple[int, ...] | None, spacing: tuple[float, ...] | None
) -> tuple[tuple[int, ...], np.ndarray]:
    if spacing is None:
        inplane = round(float(rng.uniform(*_INPLANE_SPACING[ndim])), 3)
        sp = [inplane, inplane] + ([round(float(rng.uniform(*_Z_SPACING)), 3)] if ndim == 3 else [])
        spacing_arr = np.asarray(sp, dtype=float)
    else:
        spacing_arr = np.asarray(spacing, dtype=float)
        if spacing_arr.shape != (ndim,) or not np.all(np.isfinite(spacing_arr)) or np.any(spacing_arr <= 0):
            raise ValueError(f"spacing must be {ndim} positive numbers, not {spacing!r}")
    if shape is None:
        lo, hi = _SIDE_RANGE[ndim]
        sides = []
        for axis in range(ndim):
            min_fov = _MIN_FOV_MM[1] if axis == 2 else _MIN_FOV_MM[0]
            low = min(hi, max(lo, math.ceil(min_fov / spacing_arr[axis])))
            sides.append(int(rng.integers(low, hi + 1)))
        shape = tuple(sides)
    else:
        shape = tuple(int(s) for s in shape)
        if len(shape) != ndim or min(shape) < 4:
            raise ValueError(f"shape must be {ndim} sides of at least 4 voxels, not {shape!r}")
    return shape, spacing_arr


def _rotation(ndim: int, angle: float, tilt_x: float, tilt_y: float) -> np.ndarray:
    """In-plane rotation by ``angle`` (radians), then in 3D tilts about the X and Y axes; columns = axes."""
    c, s = math.cos(angle), math.sin(angle)
    rz = np.array([[c, -s], [s, c]])
    if ndim == 2:
        return rz
    r = np.eye(3)
    r[:2, :2] = rz
    cx, sx, cy, sy = math.cos(tilt_x), math.sin(tilt_x), math.cos(tilt_y), math.sin(tilt_y)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return r @ rx @ ry


def _fit_directions(ndim: int) -> np.ndarray:
    if ndim not in _FIT_DIRECTIONS:
        if ndim == 2:
            t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
            d = np.stack([np.cos(t), np.sin(t)])
        else:  # Fibonacci sphere
            n = 200
            i = np.arange(n) + 0.5
            z = 1.0 - 2.0 * i / n
            phi = math.pi * (3.0 - math.sqrt(5.0)) * i
            rho = np.sqrt(1.0 - z * z)
            d = np.stack([rho * np.cos(phi), rho * np.sin(phi), z])
        _FIT_DIRECTIONS[ndim] = d
    return _FIT_DIRECTIONS[ndim]


def _half_extent(rot: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Half the axis-aligned bounding box of a rotated ellipsoid."""
    return np.sqrt(((rot * radii[None, :]) ** 2).sum(axis=1))


def _place_organ(
    rng: np.random.Generator,
    body_c: np.ndarray,
    body_rot: np.ndarray,
    body_r: np.ndarray,
    rot: np.ndarray,
    radii: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A centre where the organ (with room for its bumps) lies inside the body; shrinks the organ if needed."""
    dirs = _fit_directions(len(radii))
    radii = radii.copy()
    for attempt in range(40):
        # Try random offsets that shrink towards the body centre, then shrink the organ itself.
        if attempt > 20:
            radii = radii * 0.95
        room = np.maximum(body_r - _half_extent(rot, radii), 0.0) * max(0.0, 1.0 - attempt / 20)
        centre = body_c + rng.uniform(-1.0, 1.0, len(radii)) * room
        surface = centre[:, None] + rot @ (radii[:, None] * 1.1 * dirs)
        u = body_rot.T @ (surface - body_c[:, None]) / body_r[:, None]
        if float((u * u).sum(axis=0).max()) <= 0.9**2:
            return centre, radii
    return body_c.copy(), np.minimum(radii, 0.5 * body_r.min())


def _place_lesion(
    rng: np.random.Generator,
    organ_c: np.ndarray,
    organ_rot: np.ndarray,
    organ_r: np.ndarray,
    spacing: np.ndarray,
    radius_range: tuple[float, float],
    others: list[tuple[int, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and (axis-aligned) radii of one lesion, well inside the organ and apart from the others."""
    ndim = len(organ_r)
    base = math.exp(rng.uniform(math.log(radius_range[0]), math.log(radius_range[1])))
    radii = np.maximum(base * rng.uniform(0.8, 1.25, ndim), 0.9 * spacing)
    room = max(0.0, 0.7 - 0.5 * float(radii.max()) / float(organ_r.min()))
    centre = organ_c.copy()
    for _ in range(20):
        d = rng.standard_normal(ndim)
        u = d / max(float(np.linalg.norm(d)), 1e-12) * room * rng.uniform() ** (1.0 / ndim)
        centre = organ_c + organ_rot @ (organ_r * u)
        if all(np.linalg.norm(centre - c) >= radii.max() + r.max() for _, c, r in others):
            break
    return centre, radii


def _smooth_field(rng: np.random.Generator, axes: list[np.ndarray], wavelength: float, n_waves: int) -> np.ndarray:
    """A smooth random field with unit variance: a sum of ``n_waves`` plane waves of about ``wavelength`` mm."""
    ndim = len(axes)
    dirs = rng.standard_normal((n_waves, ndim))
    dirs /= np.maximum(np.sqrt((dirs * dirs).sum(axis=1, keepdims=True)), 1e-12)
    k = 2.0 * math.pi / (wavelength * rng.uniform(0.75, 1.5, n_waves))
    w = dirs * k[:, None]
    coef = rng.standard_normal(n_waves) * np.exp(1j * rng.uniform(0.0, 2.0 * math.pi, n_waves))
    # exp(i w.x) factorises over the axes: build the product over all but the last axis, contract the last.
    acc = coef[:, None] * np.exp(1j * w[:, 0, None] * axes[0][None, :])
    for d in range(1, ndim - 1):
        factor = np.exp(1j * w[:, d, None] * axes[d][None, :])
        acc = acc[..., None] * factor.reshape((n_waves,) + (1,) * d + (-1,))
    last = np.exp(1j * w[:, ndim - 1, None] * axes[ndim - 1][None, :])
    field = np.tensordot(acc.real, last.real, axes=([0], [0])) - np.tensordot(acc.imag, last.imag, axes=([0], [0]))
    return field / math.sqrt(0.5 * n_waves)


def _bbox(
    axes: list[np.ndarray],
    reach: np.ndarray,
    centre: np.ndarray,
    rot: np.ndarray,
    radii: np.ndarray,
    pad: int = 0,
) -> tuple[slice, ...]:
    """Index slices that hold every voxel that can sample the given ellipsoid (warp included)."""
    half = _half_extent(rot, radii) + reach
    out = []
    for axis, a in enumerate(axes):
        lo = int(np.searchsorted(a, centre[axis] - half[axis], side="left")) - pad
        hi = int(np.searchsorted(a, centre[axis] + half[axis], side="right")) + pad
        out.append(slice(max(lo, 0), max(min(hi, len(a)), 0)))
    return tuple(out)


def _inside(
    coords: list[np.ndarray],
    sl: tuple[slice, ...],
    centre: np.ndarray,
    rot: np.ndarray,
    radii: np.ndarray,
    bump: np.ndarray,
    bump_amp: float,
) -> np.ndarray:
    """Voxels in ``sl`` whose warped position lies in the bumpy ellipsoid ``|R^T (x - c) / r| < 1 + a * bump``."""
    ndim = len(coords)
    rel = [np.broadcast_to(coords[i], bump.shape)[sl] - centre[i] for i in range(ndim)]
    q = np.zeros(rel[0].shape)
    for j in range(ndim):
        u = sum(rot[i, j] * rel[i] for i in range(ndim)) / radii[j]
        q += u * u
    limit = 1.0 + bump_amp * bump[sl]
    return q <= limit * limit
