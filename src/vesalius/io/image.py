"""The in-memory image: a voxel array with channels first, and its geometry.

Axis convention (the same as MONAI and nibabel): ``Image.array`` has shape ``(C, X, Y)`` for 2D and
``(C, X, Y, Z)`` for 3D, so spatial axis ``i`` of the array is ITK index axis ``i``; ``spacing[i]`` is the
spacing along it and column ``i`` of the direction matrix is its direction in world (LPS) coordinates.
Conversion to and from SimpleITK (whose NumPy view is ``(Z, Y, X)``) lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk


@dataclass(frozen=True)
class Geometry:
    """Where the voxel grid lies in the world, in millimetres (ITK/LPS convention).

    Attributes:
        spacing: voxel size along each array axis, length ``ndim``.
        origin: world position of the centre of voxel ``(0, ..., 0)``, length ``ndim``.
        direction: ``ndim x ndim`` matrix, row-major; column ``i`` is the direction of array axis ``i``.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.spacing)
        if len(self.origin) != n or len(self.direction) != n * n:
            raise ValueError(f"inconsistent geometry: spacing {self.spacing}, origin {self.origin}")
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @classmethod
    def default(cls, ndim: int) -> Geometry:
        """Unit spacing, zero origin, identity direction."""
        return cls((1.0,) * ndim, (0.0,) * ndim, tuple(np.eye(ndim).ravel()))

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction as an ``(ndim, ndim)`` array."""
        return np.asarray(self.direction).reshape(self.ndim, self.ndim)

    def affine(self) -> np.ndarray:
        """``(ndim+1, ndim+1)`` matrix mapping voxel indices (array axis order) to world LPS millimetres."""
        a = np.eye(self.ndim + 1)
        a[: self.ndim, : self.ndim] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        a[: self.ndim, self.ndim] = self.origin
        return a

    def differences(self, other: Geometry, atol: float = 1e-3) -> list[str]:
        """Human-readable differences beyond ``atol`` (mm for spacing/origin, cosine for direction)."""
        if self.ndim != other.ndim:
            return [f"dimension {self.ndim} vs {other.ndim}"]
        out = []
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, rtol=0, atol=atol):
                out.append(f"{name} {_fmt(a)} vs {_fmt(b)}")
        return out

    def is_close(self, other: Geometry, atol: float = 1e-3) -> bool:
        return not self.differences(other, atol)

    def to_dict(self) -> dict[str, list[float]]:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))


def _fmt(a: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in a) + ")"


@dataclass
class Image:
    """A voxel array with channels first and its geometry.

    Attributes:
        array: ``(C, X, Y)`` or ``(C, X, Y, Z)``; any numeric dtype.
        geometry: spacing, origin, direction of the spatial axes.
        orientation_on_disk: set when the image was reoriented on load (``read_image(..., canonical=True)``):
            the orientation code (e.g. ``"LPI"``) it had in its file. ``write_image`` restores it.
    """

    array: np.ndarray
    geometry: Geometry
    orientation_on_disk: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.array.ndim != self.geometry.ndim + 1:
            raise ValueError(
                f"array of shape {self.array.shape} needs a channel axis plus {self.geometry.ndim} spatial axes"
            )

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.geometry.ndim

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    def with_array(self, array: np.ndarray) -> Image:
        """The same geometry (and orientation record) with another array of the same spatial shape."""
        if tuple(array.shape[1:]) != self.spatial_shape:
            raise ValueError(f"spatial shape {array.shape[1:]} differs from {self.spatial_shape}")
        return replace(self, array=array)

    def channel(self, index: int) -> Image:
        """One channel as a single-channel image."""
        return replace(self, array=self.array[index : index + 1])


def from_sitk(img: sitk.Image) -> Image:
    """SimpleITK image (scalar or vector pixels) to :class:`Image`; vector components become channels."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X) or (Z, Y, X, C)
    arr = arr.T if img.GetNumberOfComponentsPerPixel() > 1 else arr.T[None]
    geometry = Geometry(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return Image(np.ascontiguousarray(arr), geometry)


def to_sitk(image: Image, channel: int | None = None) -> sitk.Image:
    """:class:`Image` to SimpleITK; several channels become a vector image unless ``channel`` picks one."""
    import SimpleITK as sitk

    arr = image.array if channel is None else image.array[channel : channel + 1]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.shape[0] == 1:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr[0].T), isVector=False)
    else:
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T), isVector=True)
    img.SetSpacing(image.geometry.spacing)
    img.SetOrigin(image.geometry.origin)
    img.SetDirection(image.geometry.direction)
    return img


def nonzero_box(array: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of voxels that are non-zero in any channel of a ``(C, *spatial)`` array."""
    mask = np.any(array != 0, axis=0)
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
