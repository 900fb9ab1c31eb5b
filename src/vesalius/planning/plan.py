"""The plan: what the planner decided for a data set, as typed dataclasses saved as readable JSON.

A segmentation :class:`Plan` holds the normalisation per channel, optional intensity filters per channel
(:class:`ChannelFilters`: N4 bias-field correction, denoising) and one :class:`Configuration` per way of
training (``"3d"``, ``"2d"``): spacing, patch, batch, network topology, iterations, mirror axes. A
:class:`ClassificationPlan` holds the input size, normalisation, network, optimiser and augmentation of a
classifier. Both are written by :mod:`vesalius.planning.planner` and :mod:`vesalius.planning.classification` and
may be edited by hand: loading checks every key and value (:mod:`vesalius.io.schema`) and names the key of
a wrong one in a one-line error.

Only the planning package reads or writes plan JSON; everything else takes these objects. Training turns a plan
into a trained configuration (:mod:`vesalius.model_package`), and everything after training reads that instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from vesalius.errors import VesaliusError
from vesalius.io.atomic import write_json_atomic
from vesalius.io.schema import SchemaError, from_json, load_document, to_json

__all__ = [
    "NETWORK_FAMILIES",
    "PLAN_VERSION",
    "BiasField",
    "Budget",
    "ChannelFilters",
    "ClassificationPlan",
    "ClassifierNetwork",
    "Configuration",
    "Denoising",
    "Normalization",
    "Plan",
    "TrainingSuggestion",
    "check_filters",
    "load_any_plan",
]

#: Schema version written into every plan (``vesalius_plan``); a plan of a newer version is refused.
PLAN_VERSION = 1

Device = Literal["cpu", "cuda"]
#: Segmentation network families (:func:`vesalius.models.build_network`): the residual U-Net, the same with
#: attention gates on its skip connections, and the residual-encoder U-Net.
NetworkFamily = Literal["resunet", "attention", "resenc"]
NETWORK_FAMILIES: tuple[str, ...] = get_args(NetworkFamily)
NORMALIZATION_SCHEMES = ("ct", "zscore", "scale")


class _PlanFile:
    """JSON and file I/O of both kinds of plan."""

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls: type[P], data: Any) -> P:
        """A plan from parsed JSON; :class:`~vesalius.io.schema.SchemaError` names a wrong key."""
        return from_json(cls, data)

    def save(self, path: Path) -> Path:
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls: type[P], path: Path) -> P:
        """Read a plan file; a wrong key or value is a one-line error naming the file and the key."""
        return load_document(cls, path, "plan the data set again with 'vesalius plan NAME'")


P = TypeVar("P", bound=_PlanFile)


@dataclass(frozen=True)
class Normalization:
    """How one channel is normalised (:mod:`vesalius.preprocessing.normalize`).

    Attributes:
        scheme: ``"ct"`` (clip to ``clip``, then ``(x - mean) / std`` with the data set's foreground statistics),
            ``"zscore"`` (per image; inside the non-zero mask when ``use_nonzero_mask``) or ``"scale"``
            (``low..high`` to ``0..1``).
    """

    scheme: Literal["ct", "zscore", "scale"]
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    low: float | None = None
    high: float | None = None
    use_nonzero_mask: bool = False

    def __post_init__(self) -> None:
        needs = {"ct": ("clip", "mean", "std"), "scale": ("low", "high"), "zscore": ()}[self.scheme]
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise SchemaError(missing[0], f"the '{self.scheme}' scheme needs it")
        if self.scheme == "ct" and (self.std or 0) <= 0:
            raise SchemaError("std", "must be positive")
        if self.scheme == "scale" and self.high == self.low:
            raise SchemaError("high", "must differ from low")


@dataclass(frozen=True)
class BiasField:
    """N4 bias-field correction of one channel (:func:`vesalius.preprocessing.filters.correct_bias_field`).

    Attributes:
        method: ``"n4"``: N4 (Tustison et al., 2010), SimpleITK's ``N4BiasFieldCorrectionImageFilter``.
        shrink_factor: the field is fitted on the image shrunk by this factor per axis, then evaluated at full
            resolution.
        iterations: the most iterations of each fitting level, one entry per level (the B-spline mesh doubles
            from one level to the next).
        convergence_threshold: a level stops when the field changes less than this.
        control_points: B-spline control points per axis at the first level (at least 4: cubic splines).
    """

    method: Literal["n4"]
    shrink_factor: int
    iterations: tuple[int, ...]
    convergence_threshold: float
    control_points: int

    def __post_init__(self) -> None:
        if self.shrink_factor < 1:
            raise SchemaError("shrink_factor", "must be at least 1")
        if not self.iterations or any(n < 1 for n in self.iterations):
            raise SchemaError("iterations", "needs at least one level of at least one iteration")
        if not self.convergence_threshold > 0:
            raise SchemaError("convergence_threshold", "must be positive")
        if self.control_points < 4:
            raise SchemaError("control_points", "must be at least 4 (cubic B-splines)")


@dataclass(frozen=True)
class Denoising:
    """Edge-preserving denoising of one channel (:func:`vesalius.preprocessing.filters.denoise`).

    Attributes:
        method: ``"curvature_flow"`` (iso-intensity contours move by their curvature) or ``"anisotropic"``
            (curvature anisotropic diffusion: little diffusion across strong gradients).
        iterations: time steps (each the largest stable one for the image's spacing).
        conductance: ``anisotropic`` only: what counts as a strong gradient, relative to the image's mean gradient.
    """

    method: Literal["curvature_flow", "anisotropic"]
    iterations: int
    conductance: float | None = None

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise SchemaError("iterations", "must be at least 1")
        if (self.conductance is not None) != (self.method == "anisotropic"):
            raise SchemaError("conductance", "the 'anisotropic' method needs it, 'curvature_flow' takes none")
        if self.conductance is not None and not self.conductance > 0:
            raise SchemaError("conductance", "must be positive")


@dataclass(frozen=True)
class ChannelFilters:
    """The intensity filters of one channel, applied on the image's own grid before resampling and normalisation
    (:mod:`vesalius.preprocessing.filters`): the bias field first, then denoising; ``None``: not applied."""

    bias_field: BiasField | None = None
    denoise: Denoising | None = None


@dataclass(frozen=True)
class Budget:
    """The compute the plan was sized for: device, training wall time (seconds) and memory (GB)."""

    device: Device
    time_budget_s: float
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.time_budget_s <= 0:
            raise SchemaError("time_budget_s", "must be positive")


@dataclass(frozen=True)
class TrainingSuggestion:
    """The optimiser and learning-rate schedule the plan suggests for its device."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["poly", "cosine"] = "poly"


@dataclass(frozen=True)
class Configuration:
    """One way to train a segmentation network on the data set.

    Attributes:
        spacing: target spacing (mm) of the configuration's axes (2D: the in-plane axes).
        median_shape: the median case shape at that spacing (voxels).
        patch_size: training patch (and inference window), voxels.
        batch_size: patches per training step.
        strides: per stage, the downsampling stride per axis (the first stage's is ``1`` with ``stem="full"``).
        kernels: per stage, the convolution kernel size per axis.
        features: per stage, the number of feature maps.
        iterations: training iterations: what the time budget allows or, when fewer, :attr:`iterations_needed`.
        deep_supervision: train with losses at every decoder resolution.
        stem: ``"full"`` (a first stage at full resolution) or ``"strided"``.
        residual_units: convolutions per residual unit.
        network: the network family, one of :data:`NETWORK_FAMILIES` (plans and models of earlier versions,
            without it, are ``"resunet"``).
        mirror_axes: patch axes that augmentation and test-time augmentation may mirror.
        slice_axis: 2D configurations of 3D data: the axis across which the volume is cut into slices.
        spacing_full: 2D configurations of 3D data: the target spacing of all three axes.
        iterations_needed: the iterations the data set is expected to need to converge, whatever the budget
            (:func:`vesalius.planning.rules.iterations_needed`; ``None`` in plans of earlier versions).
        expected_training_s: the planner's estimate of the seconds those iterations take on the planned device.
    """

    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    strides: tuple[tuple[int, ...], ...]
    kernels: tuple[tuple[int, ...], ...]
    features: tuple[int, ...]
    iterations: int
    deep_supervision: bool = True
    stem: Literal["full", "strided"] = "strided"
    residual_units: int = 2
    network: NetworkFamily = "resunet"
    mirror_axes: tuple[int, ...] = ()
    slice_axis: int | None = None
    spacing_full: tuple[float, ...] | None = None
    iterations_needed: int | None = None
    expected_training_s: float | None = None

    def __post_init__(self) -> None:
        dims = len(self.patch_size)
        for name in ("spacing", "spacing_full"):
            values = getattr(self, name) or ()
            if not all(math.isfinite(v) and v > 0 for v in values):
                raise SchemaError(name, f"spacings must be positive, got {list(values)}")
        if dims not in (2, 3):
            raise SchemaError("patch_size", f"needs 2 or 3 sizes, got {dims}")
        if any(p < 1 for p in self.patch_size):
            raise SchemaError("patch_size", "sizes must be positive")
        if self.batch_size < 1:
            raise SchemaError("batch_size", "must be at least 1")
        if self.iterations < 1:
            raise SchemaError("iterations", "must be at least 1")
        if not (len(self.strides) == len(self.kernels) == len(self.features)):
            raise SchemaError("strides", "strides, kernels and features need one entry per stage")
        for name in ("strides", "kernels"):
            if any(len(entry) != dims for entry in getattr(self, name)):
                raise SchemaError(name, f"each stage needs {dims} values (one per patch axis)")
        if any(not 0 <= a < dims for a in self.mirror_axes):
            raise SchemaError("mirror_axes", f"axes must lie in 0-{dims - 1}")

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    @property
    def patch_divisors(self) -> tuple[int, ...]:
        """Per axis, the product of the strides: a patch must be a multiple of it."""
        return tuple(math.prod(stage[axis] for stage in self.strides) for axis in range(self.spatial_dims))

    @property
    def resampling_spacing(self) -> tuple[float, ...]:
        """The spacing cases are resampled to: all axes of the image (2D configurations of 3D data included)."""
        return self.spacing_full or self.spacing


@dataclass(frozen=True)
class Plan(_PlanFile):
    """The segmentation plan of a data set (``preprocessed/NAME/plan.json``).

    Attributes:
        dataset: the data set's name; ``spatial_dims``: 2 or 3.
        channels: channel names, in order; ``labels``: label value -> name (0 is the background).
        normalization: one entry per channel.
        budget: the compute the plan was sized for.
        training: the suggested optimiser and schedule.
        configurations: ``"3d"`` (3D data) and ``"2d"``.
        filters: one entry per channel (bias-field correction, denoising), or ``None`` (none: the default).
    """

    dataset: str
    spatial_dims: int
    channels: tuple[str, ...]
    labels: dict[int, str]
    normalization: tuple[Normalization, ...]
    budget: Budget
    configurations: dict[str, Configuration]
    training: TrainingSuggestion = field(default_factory=TrainingSuggestion)
    filters: tuple[ChannelFilters, ...] | None = None
    task: Literal["segmentation"] = "segmentation"
    vesalius_plan: int = PLAN_VERSION

    def __post_init__(self) -> None:
        _check_common(self.vesalius_plan, self.channels, self.normalization, self.labels)
        check_filters(self.filters, self.normalization)
        if not self.configurations:
            raise SchemaError("configurations", "the plan needs at least one configuration")

    def configuration(self, config: str) -> Configuration:
        """The configuration named ``config``; a :class:`~vesalius.errors.VesaliusError` when there is none."""
        if config not in self.configurations:
            raise VesaliusError(
                f"the plan has no '{config}' configuration", remedy=f"use one of {', '.join(self.configurations)}"
            )
        return self.configurations[config]

    @property
    def class_names(self) -> list[str]:
        """Names of the foreground labels in label order."""
        return [self.labels[k] for k in sorted(self.labels) if k != 0]

    def with_configuration(self, config: str, **changes: Any) -> Plan:
        """A copy whose configuration ``config`` has ``changes`` (field values) applied."""
        configurations = dict(self.configurations)
        configurations[config] = replace(self.configuration(config), **changes)
        return replace(self, configurations=configurations)


@dataclass(frozen=True)
class ClassifierNetwork:
    """A classifier architecture (:func:`vesalius.models.classifiers.build_classifier`).

    Attributes:
        name: ``cnn``, ``resnet18``, ``resnet50`` or ``densenet121``.
        stem_stride: ResNets: stride of the first convolution (1 keeps small inputs' resolution, no max-pooling).
        width: ResNets: fraction of the standard number of features.
        dropout: DenseNet: dropout probability.
    """

    name: Literal["cnn", "resnet18", "resnet50", "densenet121"]
    stem_stride: int | None = None
    width: float | None = None
    dropout: float | None = None


@dataclass(frozen=True)
class ClassificationPlan(_PlanFile):
    """The classification plan of a data set (``preprocessed/NAME/classification_plan.json``).

    Attributes:
        target_type: ``binary``, ``multiclass``, ``multilabel`` or ``ordinal``.
        input_size: the network's input (every image is resized to it).
        network: the planned architecture.
        batch_size, optimizer, lr, weight_decay, schedule, epochs, early_stopping_patience: the training recipe.
        balance: ``none``, ``weights`` (class-weighted loss) or ``sampling`` (class-balanced batches).
        label_smoothing: cross-entropy label smoothing.
        augmentation: :class:`vesalius.augmentation.AugmentationConfig` overrides.
        fingerprint: case and class counts of the training cases the plan was made from.
    """

    dataset: str
    spatial_dims: int
    channels: tuple[str, ...]
    labels: dict[int, str]
    target_type: Literal["binary", "multiclass", "multilabel", "ordinal"]
    input_size: tuple[int, ...]
    normalization: tuple[Normalization, ...]
    network: ClassifierNetwork
    batch_size: int
    optimizer: Literal["sgd", "adamw"]
    lr: float
    weight_decay: float
    schedule: Literal["cosine", "step", "poly"]
    epochs: int
    early_stopping_patience: int
    balance: Literal["none", "weights", "sampling"]
    label_smoothing: float
    augmentation: dict[str, Any]
    budget: Budget
    fingerprint: dict[str, Any] = field(default_factory=dict)
    task: Literal["classification"] = "classification"
    vesalius_plan: int = PLAN_VERSION

    def __post_init__(self) -> None:
        _check_common(self.vesalius_plan, self.channels, self.normalization, self.labels)
        if len(self.input_size) != self.spatial_dims or any(s < 1 for s in self.input_size):
            raise SchemaError("input_size", f"needs {self.spatial_dims} positive sizes")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise SchemaError(name, "must be at least 1")

    @property
    def class_names(self) -> list[str]:
        """Output ``k``'s class (or label) name, in output order."""
        return [self.labels[k] for k in sorted(self.labels)]


def _check_common(version: int, channels: tuple[str, ...], normalization: tuple[Any, ...], labels: dict) -> None:
    if version > PLAN_VERSION:
        raise SchemaError("vesalius_plan", f"version {version} is newer than this Vesalius reads ({PLAN_VERSION})")
    if not channels:
        raise SchemaError("channels", "the plan needs at least one channel")
    if len(normalization) != len(channels):
        raise SchemaError("normalization", f"needs one entry per channel ({len(channels)})")
    if not labels:
        raise SchemaError("labels", "the plan needs labels")


def check_filters(filters: tuple[ChannelFilters, ...] | None, normalization: tuple[Normalization, ...]) -> None:
    """Refuse filters that are not one entry per channel, or a bias-field correction of a channel whose
    normalisation is not the per-image z-score: N4 rescales each image by a field of arbitrary scale, which only a
    per-image normalisation removes (the ``ct`` and ``scale`` schemes rely on absolute intensities)."""
    if filters is None:
        return
    if len(filters) != len(normalization):
        raise SchemaError("filters", f"needs one entry per channel ({len(normalization)})")
    for c, (channel, scheme) in enumerate(zip(filters, normalization, strict=True)):
        if channel.bias_field is not None and scheme.scheme != "zscore":
            raise SchemaError(
                f"filters[{c}].bias_field", f"needs the 'zscore' normalisation (the channel's is '{scheme.scheme}')"
            )


def load_any_plan(path: Path) -> Plan | ClassificationPlan:
    """The plan in ``path``, of either task (its ``task`` key; segmentation when absent)."""
    import json

    try:
        task = json.loads(path.read_text(encoding="utf-8")).get("task", "segmentation")
    except (OSError, ValueError, AttributeError):
        task = "segmentation"  # let Plan.load report the problem
    return ClassificationPlan.load(path) if task == "classification" else Plan.load(path)
