"""``vesalius export --format monai-bundle``: a trained segmentation model as a MONAI Bundle.

MONAI Label, MONAI Deploy and ``python -m monai.bundle run`` load a model as a bundle folder: ``configs/metadata.json``
(what goes in and out of the network, versions, labels), ``configs/inference.json`` (the pipeline, in MONAI's own
transforms and inferer) and the network in ``models/``. Vesalius's contract (:mod:`vesalius.runtime.contract`) is
translated into that pipeline, so that the bundle needs MONAI, torch and nibabel, and no Vesalius:

* the network is one TorchScript module (``models/model.ts``, with the two configs inside it as MONAI's
  ``ckpt_export`` writes them, which MONAI Deploy reads) that runs every fold on each window, each fold mirrored on the
  trained axes with its logits averaged over the flips; ``models/model.pt`` holds its weights (the file the MONAI
  Bundle specification requires; MONAI Label loads it into ``network_def``, which is that same module);
* a fold ensemble outputs ``log(mean over folds of softmax)``: one set of ``K`` logits, so that MONAI's usual
  softmax, argmax and label names apply; for one fold the output is the logits themselves, and the softmax of the
  Gaussian-weighted window average is then exactly Vesalius's;
* preprocessing: crop to the non-zero box (``CropForegroundd``), resample with ``ResampleToMatchd`` onto the grid
  Vesalius resamples onto (:data:`CORNER_GRID`: the first voxel's corner kept, linear, nearest neighbour across the
  coarse axis of an anisotropic image), normalise (``NormalizeIntensityd`` / ``ScaleIntensityRanged``); the
  prediction goes back onto the input's grid by ``Invertd`` (nearest neighbour of the argmax, as Vesalius maps labels
  back), then the decided post-processing (``KeepLargestConnectedComponentd``, ``FillHolesd``);
* inference: ``SlidingWindowInferer`` (``SliceInferer`` for a 2D network on volumes) with Vesalius's window: the
  trained patch, overlap 0.5, Gaussian weights of sigma 1/8 of the patch, the trained window batch.

The run itself is a plain loop over the data set (``evaluator``), not an ignite engine, so the bundle needs no
``pytorch-ignite``. MONAI's usual ``Spacingd`` is not used: it keeps the first voxel's centre, not its corner, and
shifts the network's grid by half the change of spacing, which on a briefly trained phantom model cost 2-6 points of
Dice against Vesalius's own label maps; on Vesalius's grid the two agree voxel for voxel. What still differs is in
:data:`DIFFERENCES`.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
import zipfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vesalius.deploy.model_card import model_card, render_markdown
from vesalius.errors import VesaliusError
from vesalius.inference.model import LoadedModel, load_ensemble
from vesalius.inference.sliding_window import GAUSSIAN_SIGMA_SCALE
from vesalius.inference.windows import tta_flips
from vesalius.io.atomic import atomic_path, json_bytes, write_folder_atomic
from vesalius.model_package import TrainedSegmentation, find_packages, versions
from vesalius.outputs import check_output
from vesalius.planning.plan import Normalization
from vesalius.preprocessing.spatial import ANISOTROPY_RATIO

__all__ = ["BUNDLE_SCHEMA", "CORNER_GRID", "DIFFERENCES", "EnsembleNetwork", "export_monai_bundle", "inference_config"]

#: The metadata schema the bundle declares (the one MONAI's model zoo validates against).
BUNDLE_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
#: Largest difference allowed between the TorchScript module and the networks it was traced from (float32 logits).
TRACE_ATOL = 1e-4
#: Files in the input folder that ``inference.json`` predicts by default.
INPUT_PATTERN = "*.nii*"
#: Where a bundle's label maps can differ from ``vesalius predict``'s (the bundle's README lists them).
DIFFERENCES = (
    "A fold ensemble averages the folds' probabilities window by window (the network's output is log(mean of "
    "softmax)); Vesalius averages each fold's logits over the whole image first. One fold: no difference.",
    "Nearest-neighbour ties (a voxel centre exactly half-way between two others, as when halving the resolution) are "
    "rounded half to even by torch, half up by SimpleITK.",
    "Where the resampled size was rounded down, input voxels whose centres lie beyond the network's grid (a band "
    "under half a network voxel at the far end of that axis) take the nearest label (MONAI pads by the border); "
    "Vesalius makes them background (SimpleITK pads with 0). It shows only where the crop box's last slab is labelled.",
    "FillHolesd also fills other labels enclosed by a label; Vesalius fills only background.",
    "Prediction runs in float32 (no bf16 autocast). Inputs are files MONAI reads (NIfTI: nibabel), not reoriented; "
    "several channels come as one 4D file, channels last.",
)


class EnsembleNetwork(nn.Module):
    """The folds of a model and its test-time mirroring as one network: what MONAI's inferer calls on each batch of
    windows, so that the bundle's config needs no code of its own. Written for ``torch.jit.script`` (its folds are
    traced networks), so that the flips are not unrolled into copies of the folds' graphs.

    Each fold's logits are averaged over the flips (Vesalius averages logits, not probabilities, over flips). One
    fold returns them as they are; several return ``log(mean_f softmax(logits_f))``, whose softmax is the mean of the
    folds' probabilities on that window.

    Args:
        networks: the folds' networks, ``(B, C, *patch)`` -> ``(B, K, *patch)`` logits, in eval mode.
        mirror_axes: the patch axes mirrored for test-time augmentation (``()``: none).
    """

    # a type, not the string ``from __future__ import annotations`` would make of it: TorchScript reads it
    __annotations__ = {"flips": list[list[int]]}

    def __init__(self, networks: Sequence[nn.Module], mirror_axes: Sequence[int]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(networks)
        self.flips = [[a + 2 for a in axes] for axes in tta_flips(mirror_axes)]  # axes after (batch, channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        totals: list[torch.Tensor] = []
        for i, dims in enumerate(self.flips):
            flipped = torch.flip(x, dims) if len(dims) > 0 else x
            for f, network in enumerate(self.folds):
                logits = network(flipped).float()
                if len(dims) > 0:
                    logits = torch.flip(logits, dims)
                if i == 0:
                    totals.append(logits)
                else:
                    totals[f] = totals[f] + logits
        if len(totals) == 1:
            return totals[0] / len(self.flips)
        log_probabilities = torch.stack([torch.log_softmax(t / len(self.flips), dim=1) for t in totals])
        return torch.logsumexp(log_probabilities, dim=0) - math.log(len(totals))


def _scripted(models: Sequence[LoadedModel], trained: TrainedSegmentation) -> torch.jit.ScriptModule:
    """The folds and the mirroring as one TorchScript module; each fold is traced and checked against its network."""
    configuration = trained.configuration
    example = torch.randn(
        (1, len(trained.channels), *configuration.patch_size), generator=torch.Generator().manual_seed(0)
    )
    folds = []
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and torch.jit's deprecation notices
        for m in models:
            network = m.network.eval()
            for parameter in network.parameters():
                parameter.requires_grad_(False)  # a loaded bundle builds no autograd graph, with or without no_grad
            traced = torch.jit.trace(network, example, check_trace=False)
            difference = float((traced(example) - network(example)).abs().max())
            if not difference <= TRACE_ATOL:
                raise VesaliusError(
                    f"the TorchScript network of {m.package.root.name} differs from it by {difference:.2g}",
                    remedy="report this bug",
                )
            folds.append(traced)
        return torch.jit.script(EnsembleNetwork(folds, configuration.mirror_axes).eval())


def _normalization(schemes: Sequence[Normalization]) -> list[dict[str, Any]]:
    """MONAI's transforms for Vesalius's normalisation (:mod:`vesalius.preprocessing.normalize`) of every channel.

    ``zscore`` uses the image's own statistics, inside the non-zero mask when told (the mask is the crop's non-zero
    voxels, resampled by nearest neighbour, as Vesalius does; outside it the image is set to 0 first, then left at
    0); ``ct`` clips and shifts in one ``ScaleIntensityRanged``; ``scale`` maps ``low..high`` to ``0..1`` per channel.
    """
    kinds = {s.scheme for s in schemes}
    if len(kinds) > 1:
        raise VesaliusError(
            f"channels normalised differently ({', '.join(sorted(kinds))}) cannot be written as a MONAI Bundle",
            remedy="export a .vpkg package instead (--format vpkg)",
        )
    first = schemes[0]
    if first.scheme == "zscore":
        if len({s.use_nonzero_mask for s in schemes}) > 1:
            raise VesaliusError(
                "channels z-scored with and without the non-zero mask cannot be written as a MONAI Bundle",
                remedy="export a .vpkg package instead (--format vpkg)",
            )
        # NormalizeIntensityd(nonzero=True) takes each channel's own non-zero voxels; Vesalius takes the mask of any
        # channel, zeros included: shifted to >= 1, only what lies outside the mask is 0 (a shift the z-score undoes)
        masked = (
            [
                {"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x - x.min() + 1"},
                {"_target_": "MaskIntensityd", "keys": "image", "mask_key": "mask"},
            ]
            if first.use_nonzero_mask
            else []
        )
        return [
            *masked,
            {
                "_target_": "NormalizeIntensityd",
                "keys": "image",
                "nonzero": first.use_nonzero_mask,
                "channel_wise": True,
            },
        ]
    if first.scheme == "scale":
        return [
            {
                "_target_": "NormalizeIntensityd",
                "keys": "image",
                "subtrahend": [float(s.low) for s in schemes],  # type: ignore[arg-type]
                "divisor": [float(s.high) - float(s.low) for s in schemes],  # type: ignore[arg-type]
                "channel_wise": True,
            }
        ]
    if any(s != first for s in schemes):
        raise VesaliusError(
            "CT channels with different clipping or statistics cannot be written as a MONAI Bundle",
            remedy="export a .vpkg package instead (--format vpkg)",
        )
    low, high = (float(v) for v in first.clip)  # type: ignore[union-attr]
    mean, std = float(first.mean), float(first.std)  # type: ignore[arg-type]
    return [
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": low,
            "a_max": high,
            "b_min": (low - mean) / std,
            "b_max": (high - mean) / std,
            "clip": True,
        }
    ]


#: ``corner_grid`` in ``inference.json``: ``@corner_grid#of(x, in_plane)`` is the grid Vesalius resamples the
#: cropped image ``x`` onto (:func:`vesalius.preprocessing.spatial.grid_for_spacing`): ``round(n * s / t)`` voxels of
#: the trained spacing ``t`` along each axis, the corner of the first voxel where it was; with ``in_plane``, for an
#: anisotropic image (its coarsest spacing above ``anisotropy_ratio`` times its finest), the grid of the linear step,
#: which keeps the coarse axis as it is (:func:`vesalius.preprocessing.spatial.resample_to`). A zero ``uint8``
#: MetaTensor, for ``ResampleToMatchd``. Affines are MONAI's (voxel index to world); ``a.dot`` because ``@`` marks a
#: reference in MONAI's configs.
CORNER_GRID = {
    "voxel_spacing": "$lambda a: numpy.linalg.norm(a[:3, :3], axis=0)",
    "spacing": (
        "$lambda s, in_plane: numpy.where(in_plane & (s.max() > @anisotropy_ratio * s.min())"
        " & (numpy.arange(3) == s.argmax()), s, numpy.asarray(@target_spacing, dtype=float))"
    ),
    "shape": "$lambda n, s, t: [max(1, int(round(float(k) * si / ti))) for k, si, ti in zip(n, s, t)]",
    "affine": (
        "$lambda a, s, t: numpy.vstack([numpy.hstack([a[:3, :3] / s * t,"
        " (a[:3, 3] + a[:3, :3].dot((t - s) / (2 * s)))[:, None]]), [[0.0, 0.0, 0.0, 1.0]]])"
    ),
    "make": (
        "$lambda n, a, s, t: monai.data.MetaTensor(torch.zeros((1, *@corner_grid#shape(n, s, t)), dtype=torch.uint8),"
        " affine=torch.as_tensor(@corner_grid#affine(a, s, t)))"
    ),
    "of": (
        "$lambda x, in_plane: (lambda a: (lambda s: @corner_grid#make(x.shape[1:], a, s,"
        " @corner_grid#spacing(s, in_plane)))(@corner_grid#voxel_spacing(a)))(x.affine.numpy().astype(float))"
    ),
}


def _resampling(masked: bool) -> list[dict[str, Any]]:
    """Resampling onto Vesalius's grid with ``ResampleToMatchd``: linear onto the in-plane grid, then nearest
    neighbour onto the final grid (the identity unless the image is anisotropic); the non-zero mask in one nearest
    step. ``Spacingd`` would keep the first voxel's centre, not its corner: a sub-voxel shift that costs Dice."""
    keys = ["image", "mask"] if masked else "image"
    return [
        {"_target_": "CopyItemsd", "keys": "image", "names": "grid"},
        {
            "_target_": "Lambdad",
            "keys": "grid",
            "func": "$lambda x: @corner_grid#of(x, True)",
            "allow_missing_keys": True,
        },
        {"_target_": "ResampleToMatchd", "keys": "image", "key_dst": "grid", "mode": "bilinear"},
        {
            "_target_": "Lambdad",
            "keys": "grid",
            "func": "$lambda x: @corner_grid#of(x, False)",
            "allow_missing_keys": True,
        },
        {
            "_target_": "ResampleToMatchd",
            "keys": keys,
            "key_dst": "grid",
            "mode": "nearest",
            "allow_missing_keys": True,
        },
        {"_target_": "DeleteItemsd", "keys": "grid"},
    ]


def _postprocessing_transforms(models: Sequence[LoadedModel]) -> list[dict[str, Any]]:
    """The label-map clean-up every fold decided on (:mod:`vesalius.inference.postprocess`), as MONAI transforms."""
    from vesalius.inference.segmentation import agreed_postprocessing

    decision = agreed_postprocessing(models)
    if not decision:
        return []
    transforms = []
    ndim = len(models[0].trained.configuration.resampling_spacing)
    if decision.get("keep_largest_component"):
        transforms.append(
            {
                "_target_": "KeepLargestConnectedComponentd",
                "keys": "pred",
                "applied_labels": [int(k) for k in decision["keep_largest_component"]],
                "is_onehot": False,
                "independent": True,
                "connectivity": ndim if decision.get("connectivity", "full") == "full" else 1,
            }
        )
    if decision.get("fill_holes"):
        # connectivity 1: a hole is background not face-connected to the border, as scipy's binary_fill_holes has it
        transforms.append(
            {
                "_target_": "FillHolesd",
                "keys": "pred",
                "applied_labels": [int(k) for k in decision["fill_holes"]],
                "connectivity": 1,
            }
        )
    return transforms


def inference_config(models: Sequence[LoadedModel]) -> dict[str, Any]:
    """``configs/inference.json``: the pipeline of :func:`vesalius.inference.segmentation.predict_image` in MONAI's
    transforms and inferer, runnable with ``python -m monai.bundle run`` (see the module docstring)."""
    trained = models[0].trained
    assert isinstance(trained, TrainedSegmentation)
    configuration = trained.configuration
    masked = any(n.scheme == "zscore" and n.use_nonzero_mask for n in trained.normalization)
    mask = (
        [
            {"_target_": "CopyItemsd", "keys": "image", "names": "mask"},
            {
                "_target_": "Lambdad",
                "keys": "mask",
                "func": "$lambda x: (x != 0).any(0, keepdim=True).float()",
                "allow_missing_keys": True,
            },
        ]
        if masked
        else []
    )
    preprocessing = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        # the bounding box of voxels non-zero in any channel (MONAI's default keeps only positive ones)
        {
            "_target_": "CropForegroundd",
            "keys": "image",
            "source_key": "image",
            "select_fn": "$lambda x: x != 0",
            "margin": 0,
        },
        *mask,
        *_resampling(masked),
        *_normalization(trained.normalization),
        *([{"_target_": "DeleteItemsd", "keys": "mask"}] if masked else []),
    ]
    window = {
        "roi_size": list(configuration.patch_size),
        "sw_batch_size": configuration.batch_size,
        "overlap": 0.5,
        "mode": "gaussian",
        "sigma_scale": GAUSSIAN_SIGMA_SCALE,
        "padding_mode": "constant",
        "cval": 0.0,
        "progress": False,
    }
    if len(configuration.patch_size) < len(configuration.resampling_spacing):
        inferer = {"_target_": "SliceInferer", "spatial_dim": configuration.slice_axis, **window}
    else:
        inferer = {"_target_": "SlidingWindowInferer", **window}
    postprocessing = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": True,  # labels go back by nearest neighbour, as Vesalius maps its argmax back
            "to_tensor": True,
            "device": "cpu",
        },
        *_postprocessing_transforms(models),
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_ext": "@output_ext",
            "output_dtype": "$numpy.uint8",
            "output_postfix": "@output_postfix",
            "separate_folder": False,
            "resample": False,
            "print_log": False,
            "savepath_in_metadict": True,
        },
    ]
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "/workspace/data",
        "input_pattern": INPUT_PATTERN,
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, @input_pattern)))",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "output_ext": ".nii.gz",
        "output_postfix": "seg",
        "target_spacing": [float(v) for v in configuration.resampling_spacing],
        "anisotropy_ratio": ANISOTROPY_RATIO,
        "corner_grid": CORNER_GRID,
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location='cpu')",
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        # one image: its (1, K, *spatial) logits by sliding windows, without autograd
        "predict": "$torch.no_grad()(lambda image: @inferer(image[None].to(@device), @network)[0])",
        # the workflow: predict and post-process (invert, clean up, save) each case in turn, keeping only the paths
        # written; a plain loop, no ignite
        "evaluator": (
            "$lambda: [@postprocessing({**d, 'pred': @predict(d['image'])})['pred'].meta['saved_to'] for d in @dataset]"
        ),
        "run": ["$@evaluator()"],
    }


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _tensor(kind: str, fmt: str, channels: int, shape: list[Any], dtype: str, value_range: list[float]) -> dict:
    return {
        "type": kind,
        "format": fmt,
        "num_channels": channels,
        "spatial_shape": shape,
        "dtype": dtype,
        "value_range": value_range,
    }


def metadata(models: Sequence[LoadedModel], name: str, card: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's schema (:data:`BUNDLE_SCHEMA`): versions, task, the network's input and
    output (``channel_def`` of the output gives MONAI Label its label names) and Vesalius's provenance."""
    trained = models[0].trained
    assert isinstance(trained, TrainedSegmentation)
    configuration = trained.configuration
    labels = {k: trained.labels[k] for k in sorted(trained.labels)}
    names = ", ".join(v for k, v in labels.items() if k != 0)
    channels = ", ".join(trained.channels)
    schemes = trained.normalization
    ct = schemes[0].scheme == "ct"
    if ct:
        low, high = schemes[0].clip  # type: ignore[misc]
        value_range = [(low - schemes[0].mean) / schemes[0].std, (high - schemes[0].mean) / schemes[0].std]  # type: ignore[operator]
    elif schemes[0].scheme == "scale":
        value_range = [0.0, 1.0]
    else:
        value_range = []  # z-scores: unbounded
    patch = list(configuration.patch_size)
    image = _tensor("image", "hounsfield" if ct else "magnitude", len(trained.channels), patch, "float32", value_range)
    image |= {
        "modality": channels,
        "is_patch_data": True,
        "channel_def": {str(i): c for i, c in enumerate(trained.channels)},
    }
    pred = _tensor("image", "labels", len(labels), patch, "float32", [])  # one channel per label: the spec's "labels"
    pred |= {"is_patch_data": True, "channel_def": {str(k): v for k, v in labels.items()}}
    saved = _tensor("image", "segmentation", 1, ["*"] * trained.spatial_dims, "uint8", [0, max(labels)])
    saved |= {"is_patch_data": False, "channel_def": {str(k): v for k, v in labels.items()}}
    validation = card.get("validation") or {}
    eval_metrics = {
        f"mean_dice_{label}": figures["mean"]
        for label, figures in validation.get("per_class", {}).items()
        if figures.get("mean") is not None
    }
    folds = [m.package.root.name for m in models]
    needed = ["nibabel"]  # MONAI's NIfTI reader and writer
    if any(t["_target_"] == "KeepLargestConnectedComponentd" for t in _postprocessing_transforms(models)):
        needed.append("scikit-image")  # its connected components, on the CPU
    required = {p: _package_version(p) or "" for p in needed}
    return {
        "schema": BUNDLE_SCHEMA,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by Vesalius {versions().get('vesalius', '')} ({checkpoint} weights)"},
        "monai_version": _package_version("monai") or "",
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": _package_version("numpy") or "",
        "required_packages_version": required,
        "name": name,
        "task": f"Segmentation of {names} in {channels} images",
        "description": (
            f"A {configuration.spatial_dims}D residual U-Net ({len(folds)} fold{'s' if len(folds) > 1 else ''}, "
            f"test-time mirroring on axes {list(configuration.mirror_axes)}) trained with Vesalius on data set "
            f"'{trained.dataset}', configuration '{trained.config}'. Images are cropped to their non-zero box, "
            f"resampled to {[round(v, 4) for v in configuration.resampling_spacing]} mm and normalised "
            f"({schemes[0].scheme}); the label map is written on the input's grid."
        ),
        "authors": "Exported by Vesalius from a model trained on data set " + repr(trained.dataset),
        "copyright": f"The weights are derived from data set '{trained.dataset}'; its terms of use apply",
        "data_source": f"Vesalius data set '{trained.dataset}'",
        "data_type": "nibabel",
        "image_classes": f"{len(trained.channels)} channel(s): {channels}; normalised {schemes[0].scheme}",
        "label_classes": "single channel, " + "; ".join(f"{k} = {v}" for k, v in labels.items()),
        "pred_classes": f"{len(labels)} channels of logits, "
        + "; ".join(f"channel {k} = {v}" for k, v in labels.items()),
        "eval_metrics": eval_metrics,
        "intended_use": card["intended_use"],
        "references": [],
        "network_data_format": {
            "inputs": {"image": image},
            "outputs": {"pred": pred},
            "post_processed_outputs": {"pred": saved},
        },
        "vesalius": {
            "version": versions().get("vesalius", ""),
            "dataset": trained.dataset,
            "config": trained.config,
            "folds": folds,
            "checkpoint": checkpoint,
            "spacing": list(configuration.resampling_spacing),
            "patch_size": patch,
            "batch_size": configuration.batch_size,
            "mirror_axes": list(configuration.mirror_axes),
            "slice_axis": configuration.slice_axis if len(patch) < trained.spatial_dims else None,
            "normalization": [{k: v for k, v in vars(s).items() if v is not None and v is not False} for s in schemes],
            "labels": {str(k): v for k, v in labels.items()},
        },
    }


_README = """\
# {name}: a MONAI Bundle exported by Vesalius

{description}

## Run it

Needs `monai`, `torch`, the packages of `required_packages_version` in `configs/metadata.json` (`nibabel`;
`scikit-image` to keep the largest component) and `fire` for MONAI's command line; not Vesalius. Every
`{pattern}` file of a folder, one label map (`uint8`, on the input's grid) per image into `eval/` or `--output_dir`:

```
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir /path/to/images --output_dir /path/to/labels
```

Images with several channels are 4D NIfTI files, channels last ({channels}). In Python,
`monai.bundle.ConfigWorkflow(config_file="configs/inference.json", workflow_type="infer")` is the same workflow.
MONAI Label and MONAI Deploy read `preprocessing`, `inferer`, `postprocessing` and `models/model.ts` (which holds
both configs); `models/model.pt` holds the same weights for `network_def`.

## What it does

- Crop to the bounding box of the voxels non-zero in any channel (`CropForegroundd`); resample to {spacing} mm
  keeping the first voxel's corner (`ResampleToMatchd` onto `corner_grid`: linear, nearest neighbour across the
  coarse axis of images whose coarsest spacing is over {ratio} times their finest); normalise ({normalization}).
- Sliding windows of {patch} voxels, overlap 0.5, Gaussian weights (sigma 1/8 of the window), {batch} windows a
  batch; the network (`models/model.ts`) mirrors each window on axes {mirror} and averages the logits{folds}.
- Softmax, argmax, back onto the input's grid by nearest neighbour (`Invertd`){postprocessing}.

## How it can differ from `vesalius predict`

{differences}

{card}
"""


def _readme(meta: dict[str, Any], card_markdown: str, decided: list[dict[str, Any]], folds: int) -> str:
    v = meta["vesalius"]
    normalization = ", ".join(sorted({n["scheme"] for n in v["normalization"]}))
    steps = ", ".join(t["_target_"] for t in decided)
    return _README.format(
        name=meta["name"],
        description=meta["description"],
        pattern=INPUT_PATTERN,
        channels=", ".join(meta["network_data_format"]["inputs"]["image"]["channel_def"].values()),
        spacing=[round(t, 4) for t in v["spacing"]],
        normalization=normalization,
        ratio=ANISOTROPY_RATIO,
        differences="\n".join(f"- {d}" for d in DIFFERENCES),
        patch=v["patch_size"],
        batch=v["batch_size"],
        mirror=v["mirror_axes"] or "none",
        folds=f", then the {folds} folds' probabilities" if folds > 1 else "",
        postprocessing=f", then {steps}" if steps else "",
        card=card_markdown.replace("# Model card", "## Model card", 1),
    )


_LICENSE = """\
The network weights in models/ were trained by Vesalius on data set '{dataset}'. Their use is subject to the terms
of that data set and of whoever trained them; this file grants no further rights.

The configuration files (configs/) were generated by Vesalius, which is licensed under the Apache License 2.0.

Not a medical device: not for clinical diagnosis or treatment decisions.
"""


def _write(members: dict[str, bytes], output: Path, name: str) -> Path:
    """Write the bundle atomically: a folder, or with a ``.zip`` output an archive whose files lie under ``name/``
    (the MONAI Bundle archive layout). A folder replaces only an earlier bundle, never another folder's files."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".zip":
        with atomic_path(output, ".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for member, data in members.items():
                archive.writestr(f"{name}/{member}", data)
        return output
    if output.exists() and any(output.iterdir()) and not (output / "configs" / "metadata.json").is_file():
        raise VesaliusError(
            "the output folder exists and is not a MONAI Bundle: nothing is written over it",
            output,
            "give --output a new folder",
        )
    return write_folder_atomic(output, members)


def export_monai_bundle(
    model: str | Path,
    output: str | Path,
    *,
    checkpoint: str = "final",
    name: str | None = None,
    intended_use: str | None = None,
) -> Path:
    """Export a segmentation ``model`` (a fold's run folder, or a folder of folds: an ensemble) as a MONAI Bundle.

    Args:
        model: the trained model.
        output: the bundle's folder, or ``NAME.zip`` for the bundle archive; it may not overwrite the model.
        checkpoint: the weights to export (``final``, ``best``).
        name: the bundle's name in its metadata (default: the output's name).
        intended_use: the intended use stated in the metadata and the README (default: research use).

    Returns:
        The written bundle.

    Raises:
        VesaliusError: for a classifier, 2D images, channels normalised in ways one MONAI transform cannot say, or
            a model trained with intensity filters (N4, denoising: MONAI has no transform for them).
    """
    output = Path(output)
    archive = output.suffix.lower() == ".zip"
    check_output(output, [model], kind="file" if archive else "folder", suffixes=(".zip",) if archive else ())
    packages = find_packages(model)
    trained = packages[0].trained
    if not isinstance(trained, TrainedSegmentation):
        raise VesaliusError(
            "a MONAI Bundle is exported for segmentation models only", packages[0].root, "export a .vpkg package"
        )
    if trained.spatial_dims != 3:
        raise VesaliusError("a MONAI Bundle is exported for 3D images only", packages[0].root, "export a .vpkg package")
    if trained.filters is not None:
        raise VesaliusError(
            "the model was trained with intensity filters (N4 bias-field correction or denoising), which a MONAI "
            "Bundle cannot apply",
            packages[0].root,
            "export a .vpkg package (its runtime applies them)",
        )
    _normalization(trained.normalization)  # refuses what one MONAI transform cannot say, before any loading
    name = name or output.name.removesuffix(".zip")
    models = load_ensemble(model, checkpoint)
    config = inference_config(models)
    card = model_card(packages, name, intended_use=intended_use, versions=versions())
    meta = metadata(models, name, card, checkpoint)
    traced = _scripted(models, trained)
    from monai.data import save_net_with_metadata

    ts = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save's deprecation notice
        save_net_with_metadata(
            traced,
            ts,
            include_config_vals=False,
            meta_values=meta,
            more_extra_files={"inference.json": json_bytes(config, 4)},
        )
    weights = io.BytesIO()
    torch.save(traced.state_dict(), weights)
    decided = _postprocessing_transforms(models)
    members = {
        "configs/metadata.json": json_bytes(meta, 4),
        "configs/inference.json": json_bytes(config, 4),
        "models/model.ts": ts.getvalue(),
        "models/model.pt": weights.getvalue(),
        "docs/README.md": _readme(meta, render_markdown(card), decided, len(models)).encode("utf-8"),
        "LICENSE": _LICENSE.format(dataset=trained.dataset).encode("utf-8"),
    }
    return _write(members, output, name)
