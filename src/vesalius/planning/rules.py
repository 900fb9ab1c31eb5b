"""Planning rules: pure functions of a data set's fingerprint and the compute budget.

The numbers live in ``rules.json`` next to this file (rules as data, as in nnU-Net); each function here reads
only the keys it names, and each has a unit test. The approach follows nnU-Net's (median spacing with an
anisotropy exception, pooling per axis by spacing, patch from the median shape) with two additions: the patch,
batch and width are sized for the compute budget (device throughput x time), so a CPU plan can finish; and
augmentation mirrors only along axes where the data set's classes have no fixed relative position.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

Rules = dict[str, Any]


@cache
def _default_rules_text() -> str:
    return resources.files("vesalius.planning").joinpath("rules.json").read_text()


def load_rules(overrides: dict[str, Any] | None = None) -> Rules:
    """The default rules, with ``overrides`` (top-level keys) applied."""
    rules = json.loads(_default_rules_text())
    rules.pop("_doc", None)
    rules.update(overrides or {})
    return rules


def target_spacing(spacings: np.ndarray, shapes: np.ndarray, rules: Rules) -> tuple[float, ...]:
    """Resampling target: the median spacing per axis, except for strongly anisotropic data.

    Args:
        spacings: ``(N, D)`` spacing of every case.
        shapes: ``(N, D)`` shape of every case (voxels).

    When the coarsest axis is ``anisotropy_ratio`` times coarser than the finest and also has that many times
    fewer voxels, its target is the ``anisotropic_axis_percentile`` of its spacings (but no finer than the
    other axes), so thick-slice data is not interpolated into many fake slices.
    """
    target = np.percentile(spacings, rules["spacing_percentile"], axis=0)
    sizes = np.median(shapes * spacings / target, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    ratio = rules["anisotropy_ratio"]
    if others and target[worst] > ratio * min(target[others]) and sizes[worst] * ratio < min(sizes[others]):
        coarse = np.percentile(spacings[:, worst], rules["anisotropic_axis_percentile"])
        target[worst] = max(coarse, max(target[others]) + 1e-5)
    return tuple(float(v) for v in target)


def normalization(modality: str, crop_shrink: float, stats: dict[str, float], rules: Rules) -> dict[str, Any]:
    """How to normalise one channel.

    * CT: clip to the foreground ``ct_clip_percentiles`` then z-score with the foreground mean/std of the
      whole data set (Hounsfield units mean the same in every image).
    * RGB / 8-bit pictures: scale to [0, 1].
    * anything else (MRI, ...): per-image z-score; inside the non-zero mask when cropping to the non-zero
      region shrank the images below ``crop_shrink_for_mask`` of their volume (skull-stripped MRI).
    """
    kind = modality.upper()
    if kind == "CT":
        return {
            "scheme": "ct",
            "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
            "mean": stats["mean"],
            "std": max(stats["std"], 1e-8),
        }
    if kind in ("RGB", "8BIT", "GREY", "GRAY"):
        return {"scheme": "scale", "low": 0.0, "high": 255.0}
    return {"scheme": "zscore", "use_nonzero_mask": bool(crop_shrink < rules["crop_shrink_for_mask"])}


def topology(
    patch_size: tuple[int, ...], spacing: tuple[float, ...], rules: Rules, dims_key: str
) -> tuple[list[list[int]], list[list[int]], tuple[int, ...]]:
    """Strides and kernel sizes per stage, and the patch size rounded up so every stage divides it.

    An axis is pooled while its (current) spacing is within ``pool_spacing_ratio`` of the finest and its
    feature map stays at least ``2 * min_feature_map``; kernels are 1 along axes much coarser than the
    finest (``kernel_spacing_ratio``), else 3. At most ``max_stages[dims_key]`` stages.

    Returns:
        ``(strides, kernels, patch_size)``; ``strides[0]`` is all ones (the full-resolution stage).
    """
    ndim = len(patch_size)
    current_spacing = np.asarray(spacing, dtype=float)
    size = np.asarray(patch_size, dtype=float)
    strides, kernels = [[1] * ndim], [_kernel(current_spacing, rules)]
    while len(strides) < rules["max_stages"][dims_key]:
        finest = current_spacing.min()
        pool = [
            1
            if (current_spacing[i] <= rules["pool_spacing_ratio"] * finest and size[i] >= 2 * rules["min_feature_map"])
            else 0
            for i in range(ndim)
        ]
        if not any(pool):
            break
        stride = [2 if p else 1 for p in pool]
        current_spacing = current_spacing * np.asarray(stride)
        size = size / np.asarray(stride)
        strides.append(stride)
        kernels.append(_kernel(current_spacing, rules))
    total = np.prod(np.asarray(strides), axis=0)
    rounded = tuple(int(math.ceil(p / t) * t) for p, t in zip(patch_size, total, strict=True))
    return strides, kernels, rounded


def _kernel(spacing: np.ndarray, rules: Rules) -> list[int]:
    finest = spacing.min()
    return [3 if s <= rules["kernel_spacing_ratio"] * finest else 1 for s in spacing]


def features_per_stage(num_stages: int, device: str, dims_key: str, rules: Rules) -> list[int]:
    """Feature maps per stage: ``base_features[device]`` doubling per stage, capped at ``max_features``."""
    base = rules["base_features"]["cuda" if device.startswith("cuda") else "cpu"]
    return [int(min(base * 2**i, rules["max_features"][dims_key])) for i in range(num_stages)]


def network_stem(device: str, dims_key: str, rules: Rules) -> dict[str, Any]:
    """How the U-Net's first stage works: ``{"stem": "full"}`` (the first stage, of the plan's first feature count,
    at the input resolution before the first pooling, as in nnU-Net) for the configurations that
    ``full_resolution_stage[device]`` lists, else ``{"stem": "strided"}`` (the first convolution pools; the cheapest
    layout).

    Why the CPU's 3D plans get it: on MSD Hippocampus (``benchmarks/hippocampus_variants.py``, a fixed number of
    iterations) the full-resolution stage with AdamW + cosine gave a mean Dice 0.009-0.021 higher than the strided
    stem with SGD + poly on each of the three folds tried, where AdamW alone gained almost nothing; it costs about
    3x the time per iteration at batch 10 on 2 CPU threads (``full_resolution_stage_cost``). Figures:
    ``benchmarks/RESULTS.md``.
    """
    dev = "cuda" if device.startswith("cuda") else "cpu"
    return {"stem": "full" if dims_key in rules["full_resolution_stage"][dev] else "strided"}


def network_family(device: str, dims_key: str, rules: Rules) -> str:
    """The network family (:data:`vesalius.planning.plan.NETWORK_FAMILIES`) a configuration trains by default:
    ``network[device][dims_key]``; a run may choose another (``--network``).

    Every entry is ``"resunet"``: the attention and residual-encoder U-Nets cost more per training step
    (:mod:`vesalius.models.families`) and no measurement has yet shown either more accurate in the same time budget.
    """
    return str(rules["network"]["cuda" if device.startswith("cuda") else "cpu"][dims_key])


def intensity_filters(
    normalizations: list[dict[str, Any]], n4: bool, denoise: str | None, rules: Rules
) -> list[dict[str, Any]] | None:
    """Per channel, the intensity filters asked for (``vesalius plan --n4 --denoise METHOD``) with their parameters
    from ``intensity_filters``; ``None`` when none is (the default).

    N4 (``n4``) goes to the channels normalised per image (``zscore``: MRI and other modalities without a calibrated
    intensity scale): it divides each image by a smooth field of arbitrary scale, which the per-image z-score
    removes, where CT's Hounsfield units and 8-bit pictures are calibrated and have no coil bias. Denoising
    (``denoise``: ``curvature_flow`` or ``anisotropic``) goes to every channel.

    Both stay off unless asked for, MRI included (``benchmarks/bias_and_denoise.py``, ``benchmarks/RESULTS.md``): on
    whole skull-stripped brains (BraTS 2013, 6 cases) N4 lowered the slow intensity drift across the brain (the CV
    of its octants' mean intensity: FLAIR 0.048 to 0.042, T1c 0.055 to 0.035) for 4-7 s per image on 2 busy cores,
    but on MSD Hippocampus's small crops around the structure (about 35 x 50 x 35 mm) it made the intensities inside
    the label less uniform (median CV 0.263 to 0.288 over 208 cases): a crop that small holds no bias field worth
    fitting. Whether either filter improves segmentation accuracy has not been measured.
    """
    if not n4 and denoise is None:
        return None
    settings = rules["intensity_filters"]
    return [
        {
            **({"bias_field": {"method": "n4", **settings["n4"]}} if n4 and n["scheme"] == "zscore" else {}),
            **({"denoise": {"method": denoise, **settings[denoise]}} if denoise is not None else {}),
        }
        for n in normalizations
    ]


def training_defaults(device: str, rules: Rules) -> dict[str, str]:
    """The optimizer and learning-rate schedule a plan suggests for ``device`` (``training[device]``).

    CPU budgets allow a few thousand iterations; there AdamW with cosine decay together with the full-resolution
    stage (:func:`network_stem`) beat SGD + poly on Hippocampus (above). GPUs keep nnU-Net's SGD + poly.
    """
    entry = rules["training"]["cuda" if device.startswith("cuda") else "cpu"]
    return {"optimizer": str(entry["optimizer"]), "schedule": str(entry["schedule"])}


def patch_and_batch(
    median_shape: tuple[int, ...],
    num_cases: int,
    device: str,
    time_budget_s: float,
    memory_gb: float,
    base_features: int,
    rules: Rules,
    relative_cost: float = 1.0,
) -> tuple[tuple[int, ...], int, int]:
    """Patch size, batch size and the number of training iterations the budget allows.

    Start from the median (resampled, cropped) shape; shrink the patch (largest axis first, keeping the median
    shape's proportions) until one sample's activations fit ``memory_gb`` and the budget still allows
    ``min_iterations`` at the minimum batch. Then the batch grows while ``min_iterations`` still fit, up to
    ``max_batch_dataset_fraction`` of the samples and what fits in memory (at least ``min_batch``).

    The patch and batch follow ``devices[device].voxels_per_second`` (patch voxels x batch processed per second in
    a forward+backward pass, measured on a 2-core CPU and an H100 for the default widths) scaled by
    16 / ``base_features`` and divided by ``relative_cost`` (the network's time per iteration relative to the
    default layout, e.g. ``full_resolution_stage_cost``); the iterations are the budget over
    :func:`seconds_per_iteration`, capped at ``max_iterations`` (nnU-Net's 1000 epochs of 250 on a GPU): tiny images
    would otherwise be planned millions of iterations.
    """
    dev = rules["devices"]["cuda" if device.startswith("cuda") else "cpu"]
    throughput = dev["voxels_per_second"] * 16.0 / base_features / relative_cost
    # patch voxels x batch per iteration that still leave min_iterations of seconds_per_iteration in the budget
    voxel_budget = max(time_budget_s / dev["min_iterations"] - dev["step_overhead_s"], 0.0) * throughput
    memory_voxels = memory_gb * 1e9 / (rules["activation_bytes_per_voxel_feature"] * base_features * 2)
    patch = np.asarray(median_shape, dtype=float)
    min_batch = rules["min_batch"]
    while np.prod(patch) * min_batch > voxel_budget or np.prod(patch) > memory_voxels:
        axis = int(np.argmax(patch / np.asarray(median_shape)))  # keep proportions: shrink the largest ratio
        axis = int(np.argmax(patch)) if patch[axis] <= 2 * rules["min_feature_map"] else axis
        if patch[axis] <= 2 * rules["min_feature_map"]:
            break
        patch[axis] *= 0.9
    patch_size = tuple(int(max(2 * rules["min_feature_map"], round(p))) for p in patch)
    voxels = float(np.prod(patch_size))
    max_batch = max(min_batch, int(num_cases * rules["max_batch_dataset_fraction"]))
    max_batch = min(max_batch, max(min_batch, int(memory_voxels // voxels)))
    batch = int(np.clip(voxel_budget // voxels, min_batch, max_batch))
    step_s = seconds_per_iteration(voxels, batch, device, base_features, rules, relative_cost)
    iterations = min(int(time_budget_s / step_s), int(dev["max_iterations"]))
    return patch_size, batch, iterations


def seconds_per_iteration(
    patch_voxels: float, batch: int, device: str, base_features: int, rules: Rules, relative_cost: float = 1.0
) -> float:
    """The planner's estimate of one training step's seconds: ``devices[device].step_overhead_s`` plus
    ``patch_voxels x batch`` at the throughput of :func:`patch_and_batch`.

    The overhead is the part of a step that does not grow with the patch (sampling, augmentation, the optimiser,
    Python around the network). It dominates tiny patches: 6 CT patches of 48 x 48 took 0.039 s per step on 2 CPU
    threads (``benchmarks/segmentation_2d.py lung``) where the throughput alone predicts 0.005 s. The GPU's is
    0 until a GPU run measures it.
    """
    dev = rules["devices"]["cuda" if device.startswith("cuda") else "cpu"]
    throughput = dev["voxels_per_second"] * 16.0 / base_features / relative_cost
    return float(dev["step_overhead_s"] + patch_voxels * batch / throughput)


def iterations_needed(
    num_samples: int,
    median_shape: tuple[float, ...],
    patch_size: tuple[int, ...],
    batch: int,
    device: str,
    rules: Rules,
) -> int:
    """The training iterations a data set is expected to need: ``passes_to_converge[device]`` passes of the
    training patches over its voxels (``num_samples`` images of ``median_shape``), at most ``max_iterations``.

    Why passes over the voxels: a data set of tiny images converges in far fewer steps than its time budget allows
    (130 CT patches of 48 x 48 got 48000 iterations from a 30-minute CPU budget), and how many steps it needs grows
    with how much image there is to see per step. Why 2000 on the CPU: on those CT patches the plateau rule stopped
    the 48000-iteration schedule at 740-800 passes, with the learning rate still high, at a validation Dice of 0.795
    and 0.818 (2 seeds); schedules of 400 and 700 passes annealed to zero scored 0.769 and 0.768
    (``benchmarks/RESULTS.md``, "Budgets that fit the data"). So the cap sits well above where the plateau rule
    stops: it bounds the schedule and the expected time, and the plateau rule ends the run. Larger data sets need
    more steps than a CPU budget allows (Hippocampus, Montgomery and CHASE_DB1 at 30 minutes), so the rule leaves
    their plans alone. GPU plans (SGD with poly decay, another recipe, not measured here) keep nnU-Net's fixed
    ``max_iterations``: ``passes_to_converge["cuda"]`` is ``null``.
    """
    dev = "cuda" if device.startswith("cuda") else "cpu"
    cap = int(rules["devices"][dev]["max_iterations"])
    passes = rules["passes_to_converge"][dev]
    if passes is None:
        return cap
    voxels = num_samples * float(np.prod(median_shape))
    return int(min(cap, max(1, math.ceil(passes * voxels / (float(np.prod(patch_size)) * batch)))))


def mirror_axes(class_centroids: list[dict[str, list[float]]], spatial_dims: int, rules: Rules) -> tuple[int, ...]:
    """The spatial axes along which mirroring a training sample still gives a plausible label map.

    Mirroring is not label-neutral when two classes keep their relative position: in MSD Hippocampus the
    anterior part (label 1) lies on the same side of the posterior part (label 2) in every case along two axes,
    so flipping along those makes impossible samples. For every pair of foreground classes ``(a, b)``, over the
    cases holding both, axis ``k`` is excluded when ``centroid_a - centroid_b`` along ``k`` is larger than
    ``mirror_min_offset_voxels`` with the same sign in at least ``mirror_consistency`` of those cases. Pairs
    found together in fewer than ``mirror_min_cases`` cases exclude nothing, so a single class, or no
    centroids at all (an old fingerprint), gives every axis.

    Args:
        class_centroids: per case, label value (as a string) -> centroid in voxel coordinates (array axis order).
        spatial_dims: the number of spatial axes.

    Returns:
        The axes to mirror, ascending (0 is the first axis after the channel).
    """
    offsets: dict[tuple[str, str], list[np.ndarray]] = {}
    for case in class_centroids:
        labels = sorted(case, key=int)
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                offsets.setdefault((a, b), []).append(np.subtract(case[a], case[b]))
    excluded: set[int] = set()
    for pair_offsets in offsets.values():
        if len(pair_offsets) < rules["mirror_min_cases"]:
            continue
        d = np.asarray(pair_offsets)
        threshold = rules["mirror_min_offset_voxels"]
        same_side = np.maximum((d > threshold).mean(axis=0), (d < -threshold).mean(axis=0))
        excluded.update(int(k) for k in np.flatnonzero(same_side >= rules["mirror_consistency"]))
    return tuple(k for k in range(spatial_dims) if k not in excluded)
