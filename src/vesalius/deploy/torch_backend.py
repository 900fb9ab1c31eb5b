"""``vesalius predict -m NAME.vpkg --backend torch``: an exported package run by torch, from its ``torch.export``
programs, through the same prediction code as a run folder (:mod:`vesalius.inference`).

For the cases where torch is at hand and wanted: CUDA, bf16 autocast on CPUs that have it natively, or checking
the ONNX Runtime backend against the torch one on the very same package.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vesalius.deploy.export import CLASSIFIER_MODULE
from vesalius.errors import VesaliusError
from vesalius.inference.cohort import Shard
from vesalius.inference.files import ModelInput, classify_cases, segment_cases
from vesalius.inference.inputs import InputCase
from vesalius.inference.segmentation import segmenter
from vesalius.io import Image
from vesalius.io.schema import from_json
from vesalius.model_package import TrainedSegmentation
from vesalius.precision import autocast_dtype, check_device
from vesalius.preprocessing.classification import prepare_image
from vesalius.runtime.contract import ClassificationContract, SegmentationContract
from vesalius.runtime.package import Package

__all__ = ["ExportedNetwork", "package_gradcam", "predict_package_files"]


class ExportedNetwork(nn.Module):
    """A ``torch.export`` program as a module that the prediction code can put in eval mode and move.

    Exported graphs refuse ``train()``/``eval()`` (they are always in the mode they were exported in, eval here), so
    the program is held outside the module tree.
    """

    def __init__(self, program: torch.export.ExportedProgram, device: str | torch.device) -> None:
        super().__init__()
        object.__setattr__(self, "_graph", program.module().to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._graph(x.contiguous())


def _networks(package: Package, device: str) -> list[ExportedNetwork]:
    return [
        ExportedNetwork(torch.export.load(io.BytesIO(package.read(m))), device)
        for m in package.contract.network.torch_export
    ]


def package_gradcam(package: str | Path) -> Callable[[Image, int], tuple[np.ndarray, np.ndarray]]:
    """Grad-CAM of a classifier package (for ``vesalius serve``'s explanations), from its ``torch.export`` programs.

    The programs are unflattened (their module tree restored), so MONAI's ``GradCAM`` hooks the same stage the
    toolkit explains (:func:`vesalius.models.classifiers.gradcam_layer`, found on the fold's configuration). The
    exported graphs end in the probabilities, so the maps weigh the gradient of the class probability, not of its
    logit: the same regions, ranked by evidence for that class against the others. Returns
    ``explain(image, class_index) -> (prepared image (C, *size), map (*size) in [0, 1], averaged over the folds)``.
    """
    from vesalius.inference.gradcam import gradcam_map, make_gradcam
    from vesalius.inference.model import build_trained_network
    from vesalius.model_package import TrainedClassification
    from vesalius.models.classifiers import gradcam_layer

    with Package(package) as opened:
        contract = opened.contract
        if not isinstance(contract, ClassificationContract):
            raise VesaliusError("Grad-CAM explains classifiers; this is a segmentation model", package, "leave it out")
        programs = [torch.export.load(io.BytesIO(opened.read(m))) for m in contract.network.torch_export]
        fold = contract.network.onnx[0].removeprefix("models/").removesuffix(".onnx")
        trained = from_json(TrainedClassification, opened.json(f"folds/{fold}/model.json"))
    shape = (len(contract.channels), *contract.input_size)
    layer = gradcam_layer(build_trained_network(trained), trained.network.name, shape)
    cams = []
    for program in programs:
        module = torch.export.unflatten(program)
        for parameter in module.parameters():
            parameter.requires_grad_(True)
        cams.append(make_gradcam(module, f"{CLASSIFIER_MODULE}.{layer}"))

    def explain(image: Image, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        prepared = prepare_image(image.array, contract.normalization, contract.input_size)
        x = torch.from_numpy(np.ascontiguousarray(prepared[None], np.float32))
        heat = np.mean([gradcam_map(cam, x, class_index) for cam in cams], axis=0)
        return prepared, heat

    return explain


def predict_package_files(
    source: str | Path,
    output: str | Path,
    package: str | Path,
    *,
    fast: bool = False,
    probabilities: bool = False,
    postprocess: bool = True,
    fill_holes: bool = False,
    device: str = "cpu",
    precision: str | None = None,
    on_case: Callable[[InputCase], None] | None = None,
    shard: Shard | None = None,
) -> list[Path] | Path:
    """Predict every case in ``source`` (of ``shard``) into ``output`` with the package's torch programs (options
    as for :meth:`vesalius.runtime.Predictor.predict_files`, plus ``device`` and ``precision``)."""
    check_device(device)
    with Package(package) as opened:
        contract = opened.contract
        networks = _networks(opened, device)
        fold = contract.network.onnx[0].removeprefix("models/").removesuffix(".onnx")
        trained_json = opened.json(f"folds/{fold}/model.json")
    inputs = ModelInput(len(contract.channels), contract.spatial_dims, Path(package))
    dtype = autocast_dtype(precision or contract.precision, torch.device(device))
    if isinstance(contract, ClassificationContract):

        @torch.inference_mode()
        def classify(image: Image, _case: InputCase, _folder: Path) -> np.ndarray:
            x = torch.from_numpy(prepare_image(image.array, contract.normalization, contract.input_size)[None])
            with torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
                total = sum(n(x.to(device)).float().cpu().numpy()[0] for n in networks)
            return np.asarray(total, dtype=np.float64) / len(networks)

        options = {"backend": "torch", "precision": precision}
        return classify_cases(
            source,
            output,
            inputs,
            classify,
            contract.class_names,
            contract.target_type,
            on_case=on_case,
            shard=shard,
            options=options,
        )
    assert isinstance(contract, SegmentationContract)
    trained = from_json(TrainedSegmentation, trained_json)

    segment = segmenter(
        networks,
        trained,
        fast=fast,
        probabilities=probabilities,
        device=device,
        precision=precision or contract.precision,
    )
    decision = contract.postprocessing_decision(postprocess=postprocess, fill_holes=fill_holes)
    options = {"fast": fast, "probabilities": probabilities, "backend": "torch", "precision": precision}
    return segment_cases(
        source,
        output,
        inputs,
        segment,
        contract.labels,
        postprocessing=decision,
        on_case=on_case,
        shard=shard,
        options=options,
    )
