"""The contract of an exported model: ``vesalius.json``, everything a runtime must do around the network.

A network alone is not a model: a label map is only right when the image is cropped, resampled and normalised as in
training, predicted with the same windows and mirroring, and mapped back onto the input's grid. The contract
states all of it, as data, so that the runtime here (:mod:`vesalius.runtime.predictor`) and any other one (a C++
service, a MONAI Bundle) can do the same. It is a typed document (:mod:`vesalius.io.schema`): a wrong key or value
gets a one-line error naming it, and ``schema_version`` says which version of this layout a file follows (a newer
one is refused with the remedy).

Axes: images are ``(C, X, Y[, Z])`` arrays in the voxel order of the file (NIfTI's i, j, k; SimpleITK's x, y, z);
spacings and patch sizes list the axes in that order. No reorientation: the image is predicted in its own voxel
orientation, and the label map is written on the input's grid (shape, spacing, origin and direction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vesalius.errors import VesaliusError
from vesalius.io.schema import SchemaError, from_json
from vesalius.planning.plan import ChannelFilters, Normalization, check_filters

__all__ = [
    "CONTRACT_VERSION",
    "ClassificationContract",
    "Contract",
    "Network",
    "Postprocessing",
    "SegmentationContract",
    "SlidingWindow",
    "contract_from_json",
]

#: Version of the layout of ``vesalius.json`` that this Vesalius writes and reads.
CONTRACT_VERSION = 1


@dataclass(frozen=True)
class Network:
    """The exported networks: one per fold, their outputs averaged (an ensemble).

    Attributes:
        onnx: package members of the ONNX models (opset >= 18), one per fold; dynamic batch and spatial sizes.
        torch_export: package members of the ``torch.export`` programs (``.pt2``), one per fold, in the same order.
        input_name: the input tensor, float32 ``(B, C, *spatial)``.
        output_name: segmentation: ``logits`` ``(B, K, *spatial)``; classification: ``probabilities`` ``(B, K)``.
        spatial_multiple: each spatial size of the input must be a multiple of it (the product of the strides).
        opset: the ONNX opset.
    """

    onnx: tuple[str, ...]
    torch_export: tuple[str, ...]
    input_name: str
    output_name: str
    spatial_multiple: tuple[int, ...]
    opset: int


@dataclass(frozen=True)
class SlidingWindow:
    """How a segmentation network covers an image (:mod:`vesalius.inference.windows`).

    Attributes:
        patch_size: the window, one size per axis of the network.
        batch_size: windows per forward pass.
        step: distance between windows as a fraction of the patch (0.5: they overlap by half), with test-time
            mirroring; ``fast_step``: without it (``--fast``).
        weighting: ``gaussian``: each window's logits weighted by a Gaussian of sigma ``sigma_scale`` times the
            patch, as stored in ``weights`` (a ``.npy`` member, float32 ``patch_size``), and averaged where windows
            overlap.
        mirror_axes: network axes mirrored for test-time augmentation; logits are averaged over every combination.
        slice_axis: for a 2D network on 3D images, the image axis whose slices are predicted one by one.
        padding: images smaller than the patch are zero-padded (symmetrically) after normalisation.
    """

    patch_size: tuple[int, ...]
    batch_size: int
    step: float
    fast_step: float
    mirror_axes: tuple[int, ...]
    weights: str
    sigma_scale: float
    weighting: Literal["gaussian"] = "gaussian"
    slice_axis: int | None = None
    padding: Literal["zero"] = "zero"


@dataclass(frozen=True)
class Postprocessing:
    """Label-map clean-up decided on the validation folds (:mod:`vesalius.inference.postprocess`).

    Attributes:
        keep_largest_component: labels that keep only their largest connected component (neighbourhood
            ``connectivity``: ``full`` = faces, edges and corners; ``face`` = faces only).
        fill_holes: labels whose enclosed background is filled.
    """

    keep_largest_component: tuple[int, ...] = ()
    connectivity: Literal["full", "face"] = "full"
    fill_holes: tuple[int, ...] = ()


@dataclass(frozen=True)
class SegmentationContract:
    """What to do with an image to segment it (see the module docstring for axes).

    Attributes:
        name: the model's name; ``dataset``: the data set it was trained on; ``config``: its plan configuration.
        channels: input channel names in order (MSD's modality names, e.g. ``FLAIR``, ``CT``).
        spatial_dims: dimensions of the input images (3 for a 2D network applied slice by slice).
        normalization: per channel (:mod:`vesalius.preprocessing.normalize`), after cropping and resampling;
            ``zscore`` with ``use_nonzero_mask`` uses the image's non-zero region (all channels) and sets the outside
            to 0.
        crop: ``nonzero``: the image is first cropped to the bounding box of its non-zero voxels (all channels).
        filters: per channel, intensity filters applied to the cropped image on its own grid, before resampling
            (:mod:`vesalius.preprocessing.filters`: N4 bias-field correction, then edge-preserving denoising, with
            the parameters given); ``None``: none. The non-zero mask is that of the image before filtering.
        spacing: the grid the network works on: the cropped image is resampled to it (every image axis), keeping the
            corner of the first voxel; linear interpolation, except across the coarse axis of anisotropic images
            (one spacing above ``anisotropy_ratio`` times the finest), where it is nearest neighbour.
        window: the sliding window.
        labels: label value -> name (0 is the background); ``K = len(labels)`` network outputs.
        postprocessing: applied to the label map, if any.
        output: ``input-grid``: class probabilities (softmax of the averaged logits, averaged over folds) are
            resampled back to the cropped grid (labels by nearest neighbour of the argmax), put back into the
            full image (background outside the crop) and written with the input's geometry as ``uint8`` labels.
        precision: the precision the model was trained with (``auto``: bf16 on CPUs with native bf16).
        versions: package versions that trained and exported the model.
    """

    name: str
    dataset: str
    config: str
    channels: tuple[str, ...]
    spatial_dims: int
    normalization: tuple[Normalization, ...]
    spacing: tuple[float, ...]
    network: Network
    window: SlidingWindow
    labels: dict[int, str]
    postprocessing: Postprocessing | None = None
    filters: tuple[ChannelFilters, ...] | None = None
    crop: Literal["nonzero"] = "nonzero"
    anisotropy_ratio: float = 3.0
    output: Literal["input-grid"] = "input-grid"
    precision: str = "auto"
    versions: dict[str, str] = field(default_factory=dict)
    task: Literal["segmentation"] = "segmentation"
    schema_version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        check_filters(self.filters, self.normalization)

    def postprocessing_decision(self, *, postprocess: bool = True, fill_holes: bool = False) -> dict[str, object]:
        """The post-processing to apply (:func:`vesalius.inference.postprocess.apply_postprocessing`): the package's
        when ``postprocess``, with hole filling of every class when ``fill_holes``; ``{}`` for none."""
        decision: dict[str, object] = {}
        if postprocess and self.postprocessing is not None:
            decision = {
                "keep_largest_component": list(self.postprocessing.keep_largest_component),
                "connectivity": self.postprocessing.connectivity,
                "fill_holes": list(self.postprocessing.fill_holes),
            }
        if fill_holes:
            decision["fill_holes"] = [k for k in sorted(self.labels) if k != 0]
        return decision


@dataclass(frozen=True)
class ClassificationContract:
    """What to do with an image to classify it.

    Attributes:
        name, dataset, channels, spatial_dims: as for :class:`SegmentationContract`.
        normalization: per channel, on the image as read.
        input_size: then every image is resized to it with linear interpolation (half-pixel centres,
            ``align_corners=False``; in 2D anti-aliased when an axis shrinks: :mod:`vesalius.preprocessing.resize`).
        labels: class (or label) value -> name; output ``k`` is the ``k``-th in value order.
        target_type: ``binary``, ``multiclass`` (probabilities sum to 1), ``multilabel`` (one independent
            probability per label) or ``ordinal`` (class probabilities from cumulative logits).
        decision: ``argmax``: the predicted class is the most probable; ``threshold``: every label whose
            probability is at least ``threshold`` (multi-label).
    """

    name: str
    dataset: str
    channels: tuple[str, ...]
    spatial_dims: int
    normalization: tuple[Normalization, ...]
    input_size: tuple[int, ...]
    network: Network
    labels: dict[int, str]
    target_type: Literal["binary", "multiclass", "multilabel", "ordinal"]
    decision: Literal["argmax", "threshold"] = "argmax"
    threshold: float = 0.5
    precision: str = "auto"
    versions: dict[str, str] = field(default_factory=dict)
    task: Literal["classification"] = "classification"
    schema_version: int = CONTRACT_VERSION

    @property
    def class_names(self) -> list[str]:
        """Output ``k``'s class (or label) name, in output order."""
        return [self.labels[k] for k in sorted(self.labels)]


Contract = SegmentationContract | ClassificationContract


def contract_from_json(data: object, source: str) -> Contract:
    """The contract in parsed ``vesalius.json`` ``data``; ``source`` names the file in errors."""
    if not isinstance(data, dict):
        raise VesaliusError("the contract is not a JSON object", source, "export the model again")
    version = data.get("schema_version", CONTRACT_VERSION)
    if isinstance(version, int) and version > CONTRACT_VERSION:
        raise VesaliusError(
            f"a contract of schema version {version}; this Vesalius reads up to {CONTRACT_VERSION}",
            source,
            "upgrade Vesalius (pip install -U vesalius)",
        )
    kind = ClassificationContract if data.get("task") == "classification" else SegmentationContract
    try:
        return from_json(kind, data)
    except SchemaError as e:
        raise VesaliusError(f"vesalius.json: {e}", source, "export the model again") from None
