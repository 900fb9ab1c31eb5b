"""Drift monitoring: how far the requests a model serves have moved from what it was trained and validated on.

For every request the service records a few numbers, the *features* (:func:`input_features`,
:func:`output_features`; JSON in the jobs database), and compares a sliding window of the last ones of a model
version with the package's reference (:class:`DriftReference`): one score per feature (:func:`drift_scores`), and
the features over the threshold (:func:`drift_status`).

Features (spatial axes in the voxel order of the image, as in the fingerprint; channels by index)::

    spacing:AXIS        segmentation: the voxel spacing in mm          reference: the fingerprint's per-case spacings
    shape:AXIS          the spatial shape in voxels                     ... per-case shapes (segmentation: before crop)
    intensity_mean:CH   mean intensity of channel CH                    ... the fingerprint's pooled statistics
    intensity_p00_5:CH  0.5th, 50th and 99.5th percentile               (``mean``, ``percentile_00_5``,
    intensity_p50:CH    (the fingerprint's ``median`` is the p50)        ``median``, ``percentile_99_5``)
    intensity_p99_5:CH
    volume_ml:NAME      segmentation (3D): predicted volume of class NAME in mL; reference: the validation cases'
    area_cm2:NAME       segmentation (2D): predicted area in cm² (of the image's spacing, pixels when it has none)
    probability:NAME    classification: the probability of class NAME; reference: the validation cases'

The output reference is the package's ``reference_outputs.json``, written by
:func:`vesalius.deploy.export.export_model` from the folds' validation predictions; a package without it has input
drift only, and its output features stay unscored (:attr:`DriftStatus.unscored`).

Intensities are raw values, before any normalisation. The segmentation fingerprint pools the voxels of the training
cases' reference foreground (label > 0); a request has no reference label, so its intensities are measured over the
*predicted* foreground, and over the image's non-zero voxels when nothing is predicted (all voxels when none is
non-zero). Classification intensities are over the whole image, as its fingerprint's. Limits of the comparison: the
percentiles of one case are compared with those of a pooled data set, and a predicted foreground that spills over
a boundary takes in partial-volume voxels, so tail percentiles (``p00_5`` above all) can score 1-2 on requests like
the training cases; a model that segments badly measures other tissue; and a request that falls back to the non-zero
voxels (an empty prediction) measures the whole body: its intensities look shifted when it is the output that
changed (the volumes say so too).

Reference of each feature: a centre and a scale (:class:`FeatureReference`).

* Per-case features (spacing, shape, volume, area): centre = median over the reference cases, scale = 1.4826 x
  their median absolute deviation (MAD; the standard deviation of normal data, unmoved by a few outliers).
* Intensities (only pooled statistics are recorded): centre = the fingerprint's statistic, scale = its foreground
  standard deviation ``std`` (``(p99.5 - p0.5) / 5.15``, the same for normal data, without one).
* Probabilities: centre = mean over the validation cases (the predicted frequency of the class; the median of
  bimodal probabilities jumps between the modes), scale = their standard deviation.

Every scale is at least a floor, max(5% of the centre's magnitude, an absolute floor per kind: 0.001 mm, 1 voxel,
1e-6 intensity units, 0.01 mL or cm², 0.05 probability), so that a reference without spread (every training case of
one spacing) does not make each small difference infinite: then a 15% change of the spacing scores 3.

Score of a feature over a window of ``n`` observations (at least ``min_observations`` of them, else no score)::

    median features:  |median(window) - centre| / scale
    probabilities:    |mean(window) - centre| / (scale * sqrt(1/n + 1/m))      m: the validation cases

A median score of 3: the typical request lies 3 reference standard deviations from the reference centre, where
about 0.3% of normal reference cases would; the requests no longer look like the training (or validation) cases in
that respect. A probability score of 3: the window's mean probability (the predicted frequency of the class) is 3
standard errors (of the difference of two means, each from its few cases) from the validation mean, a difference
that ``n`` requests and ``m`` validation cases drawn alike show about 3 times in 1000. Scores are in units of the
reference spread, so a feature that varies a lot between training cases needs a larger shift to score 3 (doubled
phantom spacings score 6 in-plane, 0.8-1.2 mm, but 3 across slices, 1-3 mm).

Example (what the service does)::

    reference = DriftReference.from_package(package)           # cached as reference.to_json()
    features = input_features(image, labels.array, "segmentation") | output_features(
        "segmentation", labels=labels, names=package.contract.labels
    )
    status = drift_status(reference, last_50_feature_dicts)
    if status.drifting: log.warning(...status.over_threshold...)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.io import Image
from vesalius.io.schema import SchemaError, from_json, to_json
from vesalius.metrics.segmentation import volume_features
from vesalius.runtime.package import Package

__all__ = [
    "DEFAULT_MIN_OBSERVATIONS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_WINDOW",
    "DriftReference",
    "DriftStatus",
    "FeatureReference",
    "drift_scores",
    "drift_status",
    "feature_kind",
    "input_features",
    "is_output_feature",
    "output_features",
    "probability_features",
    "score_history",
]

#: Version of the layout of :meth:`DriftReference.to_json` and of ``reference_outputs.json`` read here.
SCHEMA_VERSION = 1
#: A score above it is drift (see the module docstring).
DEFAULT_THRESHOLD = 3.0
#: Observations per model version a score is computed over.
DEFAULT_WINDOW = 50
#: Fewer observations of a feature than this: no score.
DEFAULT_MIN_OBSERVATIONS = 10
FINGERPRINT = "fingerprint.json"
REFERENCE_OUTPUTS = "reference_outputs.json"
#: Standard deviations per median absolute deviation, and per 0.5-99.5 percentile range, of normal data.
MAD_TO_SD = 1.4826
RANGE_TO_SD = 5.1517
#: Every scale is at least this fraction of the centre's magnitude, and at least the absolute floor of its kind.
RELATIVE_FLOOR = 0.05
ABSOLUTE_FLOOR = {
    "spacing": 1e-3,
    "shape": 1.0,
    "intensity": 1e-6,
    "volume_ml": 0.01,
    "area_cm2": 0.01,
    "probability": 0.05,
}
#: The fingerprint's per-channel intensity statistics -> the features measuring them.
INTENSITY_FEATURES = {
    "mean": "intensity_mean",
    "percentile_00_5": "intensity_p00_5",
    "median": "intensity_p50",
    "percentile_99_5": "intensity_p99_5",
}
OUTPUT_KINDS = ("volume_ml", "area_cm2", "probability")


def feature_kind(name: str) -> str:
    """The kind of feature ``name``: ``spacing``, ``shape``, ``intensity``, ``volume_ml``, ``area_cm2`` or
    ``probability``."""
    kind = name.split(":", 1)[0]
    return "intensity" if kind.startswith("intensity_") else kind


def is_output_feature(name: str) -> bool:
    """Whether ``name`` measures the model's output (volumes, areas, probabilities) rather than its input."""
    return feature_kind(name) in OUTPUT_KINDS


def _floor(centre: float, kind: str) -> float:
    return max(RELATIVE_FLOOR * abs(centre), ABSOLUTE_FLOOR.get(kind, 1e-6))


@dataclass(frozen=True)
class FeatureReference:
    """What a feature looked like on the reference cases.

    Attributes:
        centre: the reference value the window is compared with.
        scale: the reference spread (> 0, floored; see the module docstring).
        statistic: of the window: ``median`` (per-case and intensity features) or ``mean`` (probabilities, whose
            score is in standard errors of the difference of the window's and the reference's means).
        cases: reference cases behind it (0: a pooled fingerprint statistic).
    """

    centre: float
    scale: float
    statistic: Literal["median", "mean"] = "median"
    cases: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.centre) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"a reference needs a finite centre and a positive scale, not {self.centre}, {self.scale}")

    def window_statistic(self, values: Sequence[float]) -> float:
        """The median (or mean) of the window's ``values`` (non-empty)."""
        array = np.asarray(values, dtype=np.float64)
        return float(array.mean() if self.statistic == "mean" else np.median(array))

    def score(self, values: Sequence[float]) -> float:
        """The drift score of the window's ``values`` (non-empty; formula in the module docstring)."""
        scale = self.scale
        if self.statistic == "mean":
            scale *= math.sqrt(1 / len(values) + (1 / self.cases if self.cases else 0.0))
        return abs(self.window_statistic(values) - self.centre) / scale


def _per_case(values: Sequence[float], kind: str) -> FeatureReference | None:
    """Median and 1.4826 MAD (probabilities: mean and standard deviation) of per-case ``values``, floored."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    if kind == "probability":
        centre = float(array.mean())
        spread = float(array.std(ddof=1)) if array.size > 1 else 0.0
        return FeatureReference(centre, max(spread, _floor(centre, kind)), "mean", int(array.size))
    centre = float(np.median(array))
    spread = MAD_TO_SD * float(np.median(np.abs(array - centre)))
    return FeatureReference(centre, max(spread, _floor(centre, kind)), "median", int(array.size))


def _pooled_intensity(statistics: Mapping[str, Any]) -> dict[str, FeatureReference]:
    """Feature stem -> reference for one channel's pooled fingerprint ``statistics``."""
    std = statistics.get("std")
    if std is None and "percentile_00_5" in statistics and "percentile_99_5" in statistics:
        std = (float(statistics["percentile_99_5"]) - float(statistics["percentile_00_5"])) / RANGE_TO_SD
    found = {}
    for key, stem in INTENSITY_FEATURES.items():
        if key in statistics and statistics[key] is not None:
            centre = float(statistics[key])
            found[stem] = FeatureReference(centre, max(float(std or 0.0), _floor(centre, "intensity")))
    return found


@dataclass(frozen=True)
class DriftReference:
    """The reference of every feature of a model (see the module docstring); JSON-ready for a cache.

    Attributes:
        task: ``segmentation`` or ``classification``: which input features a request gets.
        features: feature name -> its reference; input features from the training fingerprint, output features
            from the validation predictions (none when the package has no ``reference_outputs.json``).
        channels: the input channel names (channel ``CH`` of a feature is ``channels[CH]``).
    """

    task: Literal["segmentation", "classification"]
    features: dict[str, FeatureReference]
    channels: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def has_outputs(self) -> bool:
        """Whether output drift can be scored (the package had validation outputs)."""
        return any(is_output_feature(name) for name in self.features)

    @classmethod
    def from_package(cls, package: Package) -> DriftReference:
        """The reference of an opened package: its ``fingerprint.json`` and ``reference_outputs.json``, each when
        present (a package without them has no input, or no output, features)."""
        members = set(package.members)
        fingerprint = package.json(FINGERPRINT) if FINGERPRINT in members else None
        outputs = package.json(REFERENCE_OUTPUTS) if REFERENCE_OUTPUTS in members else None
        contract = package.contract
        return cls.from_records(contract.task, fingerprint, outputs, channels=contract.channels, source=package.path)

    @classmethod
    def from_records(
        cls,
        task: Literal["segmentation", "classification"],
        fingerprint: Mapping[str, Any] | None,
        reference_outputs: Mapping[str, Any] | None = None,
        *,
        channels: Sequence[str] = (),
        source: str | Path | None = None,
    ) -> DriftReference:
        """The reference from a parsed training ``fingerprint`` (:class:`vesalius.planning.fingerprint.Fingerprint`
        or :class:`vesalius.planning.classification.ClassificationFingerprint` as JSON) and ``reference_outputs``
        (``{"schema_version", "task", "cases", "features": {name: [per-case values]}}``); ``source`` names them in
        errors."""
        try:
            features = _input_references(task, fingerprint or {})
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise VesaliusError(f"unreadable fingerprint.json ({e!r})", source, "export the model again") from None
        if reference_outputs is not None:
            version = reference_outputs.get("schema_version")
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise VesaliusError(
                    f"reference_outputs.json of schema version {version!r}; this Vesalius reads up to {SCHEMA_VERSION}",
                    source,
                    "upgrade Vesalius (pip install -U vesalius)",
                )
            try:
                for name, values in reference_outputs["features"].items():
                    reference = _per_case([float(v) for v in values], feature_kind(name))
                    if reference is not None and is_output_feature(name):
                        features[name] = reference
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise VesaliusError(
                    f"unreadable reference_outputs.json ({e!r})", source, "export the model again"
                ) from None
        return cls(task, features, tuple(channels))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data, read back by :meth:`from_json`."""
        return to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> DriftReference:
        """The reference written by :meth:`to_json`; a malformed or newer one is a :class:`VesaliusError`."""
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise VesaliusError(
                f"a drift reference of schema version {version}; this Vesalius reads up to {SCHEMA_VERSION}",
                remedy="drop the cached reference",
            )
        try:
            return from_json(cls, data)
        except SchemaError as e:
            raise VesaliusError(f"drift reference: {e}", remedy="drop the cached reference") from None


def _input_references(task: str, fingerprint: Mapping[str, Any]) -> dict[str, FeatureReference]:
    per_case: dict[str, list[list[float]]] = {"shape": fingerprint.get("shapes", [])}
    if task == "segmentation":
        per_case = {"spacing": fingerprint.get("spacings", []), "shape": fingerprint.get("shapes_before_crop", [])}
    features = {}
    for kind, rows in per_case.items():
        for axis in range(min((len(r) for r in rows), default=0)):
            reference = _per_case([float(r[axis]) for r in rows], kind)
            if reference is not None:
                features[f"{kind}:{axis}"] = reference
    for channel, statistics in enumerate(fingerprint.get("intensity", [])):
        for stem, reference in _pooled_intensity(statistics).items():
            features[f"{stem}:{channel}"] = reference
    return features


# -- features of one request ----------------------------------------------------------------------------------------
def _foreground(array: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """The voxels whose intensities are measured: the predicted foreground, else the non-zero voxels, else all."""
    spatial = array.shape[1:]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape not in (spatial, (1, *spatial)):
            raise ValueError(f"labels of shape {labels.shape} for an image of spatial shape {spatial}")
        mask = labels.reshape(spatial) > 0
        if mask.any():
            return mask
    mask = np.any(array != 0, axis=0)
    return mask if mask.any() else np.ones(spatial, dtype=bool)


def input_features(
    image: Image, labels: np.ndarray | None, task: Literal["segmentation", "classification"] | str
) -> dict[str, float]:
    """The input features of one request (module docstring).

    Args:
        image: the image as received, ``(C, *spatial)``.
        labels: segmentation: the predicted label map, ``(*spatial)`` or ``(1, *spatial)`` (``None``: intensities of
            the non-zero voxels); ignored for classification.
        task: ``segmentation`` (spacing, shape, foreground intensities) or ``classification`` (shape, intensities
            of the whole image).

    Returns:
        feature name -> value, all finite (a channel without finite voxels has no intensity features).
    """
    features: dict[str, float] = {}
    if task == "segmentation":
        features.update({f"spacing:{axis}": float(s) for axis, s in enumerate(image.geometry.spacing)})
    features.update({f"shape:{axis}": float(s) for axis, s in enumerate(image.spatial_shape)})
    array = image.array
    voxels = array[:, _foreground(array, labels)] if task == "segmentation" else array.reshape(array.shape[0], -1)
    for channel, values in enumerate(voxels):
        values = values.astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        low, median, high = np.percentile(values, [0.5, 50.0, 99.5])
        features[f"intensity_mean:{channel}"] = float(values.mean())
        features[f"intensity_p00_5:{channel}"] = float(low)
        features[f"intensity_p50:{channel}"] = float(median)
        features[f"intensity_p99_5:{channel}"] = float(high)
    return features


def probability_features(probabilities: Sequence[float] | np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """``probability:NAME`` of each class of ``probabilities`` ``(K,)``, in the order of ``class_names``."""
    values = np.asarray(probabilities, dtype=np.float64).ravel()
    if values.size != len(class_names):
        raise ValueError(f"{values.size} probabilities for {len(class_names)} classes")
    return {f"probability:{name}": float(p) for name, p in zip(class_names, values, strict=True)}


def output_features(
    task: Literal["segmentation", "classification"] | str,
    *,
    labels: Image | None = None,
    probabilities: Sequence[float] | np.ndarray | None = None,
    names: Mapping[int, str] | Sequence[str],
) -> dict[str, float]:
    """The output features of one request.

    Args:
        task: ``segmentation``: :func:`volume_features` of the predicted label map ``labels`` ``(1, *spatial)``, with
            ``names`` the contract's labels (value -> name); ``classification``: :func:`probability_features` of
            ``probabilities`` ``(K,)``, with ``names`` the class names in output order.
    """
    if task == "segmentation":
        if labels is None or not isinstance(names, Mapping):
            raise TypeError("a segmentation's output features need the label map and the labels (value -> name)")
        return volume_features(labels, names)
    if probabilities is None:
        raise TypeError("a classification's output features need the probabilities")
    return probability_features(probabilities, list(names.values()) if isinstance(names, Mapping) else names)


# -- scores ---------------------------------------------------------------------------------------------------------
def _finite_values(name: str, observations: Sequence[Mapping[str, float]]) -> list[float]:
    values = (o.get(name) for o in observations)
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def drift_scores(
    reference: DriftReference,
    observations: Sequence[Mapping[str, float]],
    *,
    min_observations: int = DEFAULT_MIN_OBSERVATIONS,
) -> dict[str, float]:
    """The score of every reference feature over the window ``observations`` (each request's features, oldest
    first; the caller keeps the last :data:`DEFAULT_WINDOW`). A feature observed fewer than ``min_observations``
    times (at least once) gets no score."""
    scores = {}
    for name, feature in reference.features.items():
        values = _finite_values(name, observations)
        if len(values) >= max(1, min_observations):
            scores[name] = feature.score(values)
    return scores


@dataclass(frozen=True)
class DriftStatus:
    """The scores of a window and what they say.

    Attributes:
        scores: feature -> score (:func:`drift_scores`).
        threshold: a score above it is drift.
        observations: requests in the window.
        unscored: features of the reference or of the observations without a score: too few observations, or no
            reference (output features of a package without validation outputs).
    """

    scores: dict[str, float]
    threshold: float
    observations: int
    unscored: tuple[str, ...] = field(default=())

    @property
    def over_threshold(self) -> dict[str, float]:
        """Features whose score exceeds the threshold, highest first."""
        over = {name: score for name, score in self.scores.items() if score > self.threshold}
        return dict(sorted(over.items(), key=lambda item: -item[1]))

    @property
    def drifting(self) -> bool:
        """Whether any score exceeds the threshold."""
        return bool(self.over_threshold)


def drift_status(
    reference: DriftReference,
    observations: Sequence[Mapping[str, float]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_observations: int = DEFAULT_MIN_OBSERVATIONS,
) -> DriftStatus:
    """The :class:`DriftStatus` of the window ``observations`` (as for :func:`drift_scores`)."""
    scores = drift_scores(reference, observations, min_observations=min_observations)
    seen = set(reference.features).union(*(o.keys() for o in observations))
    return DriftStatus(scores, threshold, len(observations), tuple(sorted(seen - set(scores))))


def score_history(
    reference: DriftReference,
    observations: Sequence[Mapping[str, float]],
    *,
    window: int = DEFAULT_WINDOW,
    min_observations: int = DEFAULT_MIN_OBSERVATIONS,
) -> dict[str, list[float | None]]:
    """Feature -> its score after each of ``observations`` (oldest first), over the ``window`` observations ending
    there (``None`` before ``min_observations``): what a service scoring after every request would have seen."""
    history: dict[str, list[float | None]] = {name: [] for name in reference.features}
    for end in range(1, len(observations) + 1):
        scores = drift_scores(reference, observations[max(0, end - window) : end], min_observations=min_observations)
        for name, scores_of_feature in history.items():
            scores_of_feature.append(scores.get(name))
    return history
