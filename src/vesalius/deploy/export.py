"""``vesalius export``: a trained model (one fold or a fold ensemble) as one deployable package.

The package (:mod:`vesalius.runtime.package`) holds each fold's network twice, as ONNX (opset 18, dynamic batch and,
for segmentation, dynamic spatial sizes in multiples of the network's strides; checked with ``onnx.checker``) and as
a ``torch.export`` program, both made from one ``torch.export`` graph; the contract ``vesalius.json``
(:mod:`vesalius.runtime.contract`) built from the trained configuration and the post-processing decision; the
sliding window's weighting; the training fingerprint; the outputs of the validation cases; the model card
(:mod:`vesalius.deploy.model_card`); and each fold's ``model.json``. A classifier's graph ends in its probabilities
(softmax, sigmoids or ordinal cumulative probabilities), so a runtime needs no task-specific arithmetic.

The validation outputs, ``reference_outputs.json`` (:func:`reference_outputs`), are the reference of output drift
(:mod:`vesalius.serving.drift`): each validation case's predicted volume per class (segmentation) or probability per
class (classification); a package of runs that were not validated has none.

Every ONNX model is checked against the torch network it came from on a random input before it is written: an
export that changed the numbers fails here, not at a user's site.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesalius.deploy.model_card import model_card, render_markdown
from vesalius.errors import VesaliusError
from vesalius.evaluation.classification import read_predictions_csv
from vesalius.inference.model import LoadedModel, load_ensemble
from vesalius.inference.segmentation import FAST_STEP, agreed_postprocessing
from vesalius.inference.sliding_window import GAUSSIAN_SIGMA_SCALE, _gaussian
from vesalius.io import image_suffix, read_image
from vesalius.io.atomic import json_bytes
from vesalius.io.schema import from_json, to_json
from vesalius.metrics.segmentation import volume_features
from vesalius.model_package import (
    ModelPackage,
    TrainedClassification,
    TrainedSegmentation,
    find_packages,
    versions,
)
from vesalius.models.classifiers import to_probabilities
from vesalius.outputs import check_output
from vesalius.preprocessing.spatial import ANISOTROPY_RATIO
from vesalius.runtime.contract import (
    ClassificationContract,
    Contract,
    Network,
    Postprocessing,
    SegmentationContract,
    SlidingWindow,
)
from vesalius.runtime.package import CONTRACT, SUFFIX, write_package

__all__ = ["CLASSIFIER_MODULE", "OPSET", "REFERENCE_OUTPUTS", "export_model", "export_network", "reference_outputs"]

#: The ONNX opset of exported networks (18: the first with ``Resize`` anti-aliasing and current ``Reduce*`` ops).
OPSET = 18
#: Largest batch the exported graphs accept (a bound torch.export needs; far above any window batch).
MAX_BATCH = 4096
#: Tolerance of the export check (float32 logits of order 1-10; ONNX Runtime fuses ops in another order).
EXPORT_ATOL = 1e-3


#: The name of the classifier inside a classifier package's exported graph (its layers are ``network.NAME``).
CLASSIFIER_MODULE = "network"


class _Probabilities(nn.Module):
    """A classifier followed by its probabilities (:func:`vesalius.models.classifiers.to_probabilities`)."""

    def __init__(self, network: nn.Module, target_type: str) -> None:
        super().__init__()
        self.network = network  # named CLASSIFIER_MODULE
        self.target_type = target_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_probabilities(self.network(x), self.target_type)


def _example(trained: TrainedSegmentation | TrainedClassification) -> tuple[torch.Tensor, dict[int, Any]]:
    """A random input of the network's shape (batch 2: a batch of 1 would be specialised) and its dynamic axes."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    generator = torch.Generator().manual_seed(0)
    if isinstance(trained, TrainedSegmentation):
        configuration = trained.configuration
        shape = (2, len(trained.channels), *configuration.patch_size)
        axes: dict[int, Any] = {0: batch}
        for i, multiple in enumerate(configuration.patch_divisors):
            axes[i + 2] = multiple * torch.export.Dim(f"size{i}", min=1, max=max(1, 4096 // multiple))
        return torch.randn(shape, generator=generator), axes
    return torch.randn((2, len(trained.channels), *trained.input_size), generator=generator), {0: batch}


def export_network(
    network: nn.Module, example: torch.Tensor, dynamic_axes: dict[int, Any], output_name: str
) -> tuple[bytes, bytes]:
    """``(onnx_bytes, torch_export_bytes)`` of ``network`` (eval mode) for inputs like ``example``.

    Raises a :class:`VesaliusError` when the ONNX model disagrees with the network on ``example``.
    """
    import onnx
    import onnxruntime as ort

    network = network.eval()
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notices (torchvision ops it skips) are not the user's business
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(network, (example,), dynamic_shapes={"x": dynamic_axes})
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            onnx_program = torch.onnx.export(
                program,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=["image"],
                output_names=[output_name],
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    proto = onnx_program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    model_bytes = proto.SerializeToString()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = network(example).float().numpy()
    got = session.run([output_name], {"image": example.numpy()})[0]
    difference = float(np.max(np.abs(got - expected)))
    if not difference <= EXPORT_ATOL:
        raise VesaliusError(f"the ONNX export differs from the network by {difference:.2g}", remedy="report this bug")
    return model_bytes, buffer.getvalue()


def _postprocessing(models: Sequence[LoadedModel]) -> Postprocessing | None:
    """The post-processing every fold decided on, as ``vesalius predict`` applies it
    (:func:`vesalius.inference.segmentation.agreed_postprocessing`), else ``None``."""
    decision = agreed_postprocessing(models) or {}
    agreed = Postprocessing(
        keep_largest_component=tuple(decision.get("keep_largest_component", ())),
        connectivity=decision.get("connectivity", "full"),
        fill_holes=tuple(decision.get("fill_holes", ())),
    )
    return None if agreed == Postprocessing() else agreed


def _contract(models: Sequence[LoadedModel], name: str, network: Network) -> Contract:
    trained = models[0].trained
    common = {
        "name": name,
        "dataset": trained.dataset,
        "channels": trained.channels,
        "normalization": trained.normalization,
        "labels": trained.labels,
        "network": network,
        "precision": trained.precision,
        "versions": versions(),
    }
    if isinstance(trained, TrainedClassification):
        return ClassificationContract(
            **common,
            spatial_dims=trained.spatial_dims,
            input_size=trained.input_size,
            target_type=trained.target_type,
            decision="threshold" if trained.target_type == "multilabel" else "argmax",
        )
    configuration = trained.configuration
    window = SlidingWindow(
        patch_size=configuration.patch_size,
        batch_size=configuration.batch_size,
        step=0.5,
        fast_step=FAST_STEP,
        mirror_axes=configuration.mirror_axes,
        weights=WEIGHTS,
        sigma_scale=GAUSSIAN_SIGMA_SCALE,
        slice_axis=configuration.slice_axis if len(configuration.patch_size) < trained.spatial_dims else None,
    )
    return SegmentationContract(
        **common,
        config=trained.config,
        spatial_dims=trained.spatial_dims,
        spacing=configuration.resampling_spacing,
        window=window,
        postprocessing=_postprocessing(models),
        filters=trained.filters,
        anisotropy_ratio=ANISOTROPY_RATIO,
    )


WEIGHTS = "window_weights.npy"
#: The member holding the validation outputs (:func:`reference_outputs`).
REFERENCE_OUTPUTS = "reference_outputs.json"
#: Version of the layout of ``reference_outputs.json``.
REFERENCE_OUTPUTS_VERSION = 1


def reference_outputs(packages: Sequence[ModelPackage]) -> dict[str, Any] | None:
    """What the folds ``packages`` predicted for their validation cases, the reference of output drift; ``None`` when
    none was validated.

    Segmentation: from each validation label map (``validation/CASE.nii.gz``), the predicted volume of every
    foreground class in mL (voxels x voxel volume in mm³ / 1000; 2D images: the area in cm², mm² / 100), as
    ``volume_ml:NAME`` (``area_cm2:NAME``). Classification: each validation case's probability of every class
    (``validation/predictions.csv``), as ``probability:NAME``. Values to 6 significant digits, one per case::

        {"schema_version": 1, "task": "segmentation", "cases": N, "features": {"volume_ml:liver": [N values], ...}}
    """
    trained = packages[0].trained
    features: dict[str, list[float]] = {}
    cases = 0
    for package in packages:
        if isinstance(trained, TrainedSegmentation):
            folder = package.validation_dir
            files = sorted(p for p in folder.iterdir() if p.is_file() and image_suffix(p)) if folder.is_dir() else []
            names = dict(zip(trained.foreground_labels, trained.class_names, strict=True))
            for path in files:
                for feature, volume in volume_features(read_image(path), names).items():
                    features.setdefault(feature, []).append(float(f"{volume:.6g}"))
            cases += len(files)
        elif package.validation_predictions_csv.is_file():
            _, names, probabilities = read_predictions_csv(package.validation_predictions_csv)
            for j, label in enumerate(names):
                features.setdefault(f"probability:{label}", []).extend(float(f"{p:.6g}") for p in probabilities[:, j])
            cases += len(probabilities)
    if not cases:
        return None
    return {"schema_version": REFERENCE_OUTPUTS_VERSION, "task": trained.task, "cases": cases, "features": features}


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def export_model(
    model: str | Path,
    output: str | Path,
    *,
    as_folder: bool = False,
    checkpoint: str = "final",
    name: str | None = None,
    intended_use: str | None = None,
) -> Path:
    """Export ``model`` (a fold's run folder, or a folder of folds: an ensemble) to the package ``output``.

    Args:
        model: the trained model.
        output: ``NAME.vpkg`` (a zip), or with ``as_folder`` a folder; it may not overwrite the model.
        checkpoint: the weights to export (``final``, ``best``).
        name: the model's name in the contract and the card (default: the output's name).
        intended_use: the model card's intended use (default: research use on images like the training set's).

    Returns:
        The written package.
    """
    output = Path(output)
    check_output(output, [model], kind="folder" if as_folder else "file", suffixes=() if as_folder else (SUFFIX,))
    packages = find_packages(model)
    models = load_ensemble(model, checkpoint)
    trained = models[0].trained
    name = name or output.name.removesuffix(SUFFIX)
    segmentation = isinstance(trained, TrainedSegmentation)
    output_name = "logits" if segmentation else "probabilities"
    members: dict[str, bytes] = {}
    onnx_names, program_names = [], []
    for m in models:
        example, axes = _example(trained)
        network = m.network if segmentation else _Probabilities(m.network, trained.target_type)
        onnx_bytes, program_bytes = export_network(network, example, axes, output_name)
        fold = m.package.root.name
        onnx_names.append(f"models/{fold}.onnx")
        program_names.append(f"models/{fold}.pt2")
        members[onnx_names[-1]] = onnx_bytes
        members[program_names[-1]] = program_bytes
        members[f"folds/{fold}/model.json"] = json_bytes(to_json(m.trained))
    multiple = trained.configuration.patch_divisors if segmentation else (1,) * trained.spatial_dims
    network_spec = Network(
        onnx=tuple(onnx_names),
        torch_export=tuple(program_names),
        input_name="image",
        output_name=output_name,
        spatial_multiple=tuple(multiple),
        opset=OPSET,
    )
    contract = _contract(models, name, network_spec)
    from_json(type(contract), to_json(contract))  # the contract reads back as written
    members[CONTRACT] = json_bytes(to_json(contract))
    if segmentation:
        members[WEIGHTS] = _npy(_gaussian(tuple(trained.configuration.patch_size), "cpu").numpy())
    if packages[0].fingerprint is not None:
        members["fingerprint.json"] = json_bytes(packages[0].fingerprint)
    outputs = reference_outputs(packages)
    if outputs is not None:
        members[REFERENCE_OUTPUTS] = json_bytes(outputs)
    card = model_card(packages, name, intended_use=intended_use, versions=versions())
    members["model_card.json"] = json_bytes(card)
    members["MODEL_CARD.md"] = render_markdown(card).encode("utf-8")
    return write_package(members, output, as_folder=as_folder, info={"created": card["created"], "name": name})
