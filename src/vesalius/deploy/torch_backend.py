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

__all__ = ["ExportedNetwork", "predict_package_files"]


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
) -> list[Path] | Path:
    """Predict every case in ``source`` into ``output`` with the package's torch programs (options as for
    :meth:`vesalius.runtime.Predictor.predict_files`, plus ``device`` and ``precision``)."""
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

        return classify_cases(
            source, output, inputs, classify, contract.class_names, contract.target_type, on_case=on_case
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
    return segment_cases(source, output, inputs, segment, contract.labels, postprocessing=decision, on_case=on_case)
