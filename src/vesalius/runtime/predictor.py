"""Predict with an exported package on ONNX Runtime: NumPy, SciPy, SimpleITK and ONNX Runtime, no torch, no MONAI.

:class:`Predictor` opens a package (its members checked, :class:`vesalius.runtime.package.Package`), starts one
ONNX Runtime session per fold and does what the contract says around them: for segmentation the crop, intensity
filters, resampling and normalisation of training, Gaussian-weighted sliding windows with mirroring
(:mod:`vesalius.inference.windows`, placed as the torch path places them), the fold average, the label map back on
the input's grid and the post-processing; for classification the normalisation and resize of training and the fold
average of the graph's probabilities. The preprocessing code is the training code itself (no copy), so both
backends see the same arrays.

Example::

    from vesalius.io import read_image
    from vesalius.runtime import Predictor

    predictor = Predictor("hippocampus.vpkg")
    labels = predictor.segment(read_image("case.nii.gz"))       # uint8 label map on the input's grid
    predictor.predict_files("scans/", "labels/")                # every case of a folder, as `vesalius predict`
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vesalius.errors import VesaliusError
from vesalius.inference.cohort import Shard
from vesalius.inference.files import ModelInput, classify_cases, segment_cases
from vesalius.inference.image import segment_image
from vesalius.inference.inputs import InputCase
from vesalius.inference.windows import predict_probabilities
from vesalius.io import Image
from vesalius.preprocessing.classification import prepare_image
from vesalius.preprocessing.spatial import ANISOTROPY_RATIO
from vesalius.runtime.contract import ClassificationContract, Contract, SegmentationContract
from vesalius.runtime.package import Package

__all__ = ["Predictor"]


class Predictor:
    """An exported model ready to predict on ONNX Runtime's CPU provider.

    Args:
        package: a ``.vpkg`` file or an exported package folder.
        threads: ONNX Runtime's intra-op threads (``None``: one per physical core).
    """

    def __init__(self, package: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        with Package(package) as opened:
            self.path = opened.path
            self.contract: Contract = opened.contract
            options = ort.SessionOptions()
            options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
            if threads:
                options.intra_op_num_threads = threads
            network = self.contract.network
            self._sessions = [
                ort.InferenceSession(opened.read(member), options, providers=["CPUExecutionProvider"])
                for member in network.onnx
            ]
            self._weights = (
                np.load(io.BytesIO(opened.read(self.contract.window.weights)), allow_pickle=False)
                if isinstance(self.contract, SegmentationContract)
                else None
            )
        if isinstance(self.contract, SegmentationContract) and self.contract.anisotropy_ratio != ANISOTROPY_RATIO:
            raise VesaliusError(
                f"the package resamples with anisotropy ratio {self.contract.anisotropy_ratio}, this Vesalius with "
                f"{ANISOTROPY_RATIO}",
                self.path,
                "predict with the Vesalius version that exported it",
            )

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, {self.contract.task}, {len(self._sessions)} fold(s))"

    @property
    def task(self) -> str:
        """``"segmentation"`` or ``"classification"``."""
        return self.contract.task

    def _run(self, session: object) -> Callable[[np.ndarray], np.ndarray]:
        network = self.contract.network

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run([network.output_name], {network.input_name: batch})[0]  # type: ignore[attr-defined]

        return run

    # -- segmentation ------------------------------------------------------------------------------------------------
    def segment(
        self,
        image: Image,
        *,
        fast: bool = False,
        postprocess: bool = True,
        fill_holes: bool = False,
        return_probabilities: bool = False,
    ) -> Image | tuple[Image, Image]:
        """Segment ``image`` ``(C, *spatial)`` on its native grid.

        ``fast``: no mirroring and the larger window step; ``postprocess``: the package's post-processing;
        ``fill_holes``: then fill the holes of every class. Returns the ``uint8`` label map ``(1, *spatial)`` on the
        input's grid, with ``return_probabilities`` also the float32 ``(K, *spatial)`` probabilities (before
        post-processing).
        """
        contract = self._segmentation()
        self._check(image, self.path)
        window = contract.window
        slice_axis = window.slice_axis if len(window.patch_size) < image.ndim else None

        def probabilities_of(data: np.ndarray) -> np.ndarray:
            total = sum(
                predict_probabilities(
                    self._run(session),
                    data,
                    window.patch_size,
                    self._weights,  # type: ignore[arg-type]
                    step=window.fast_step if fast else window.step,
                    mirror_axes=() if fast else window.mirror_axes,
                    batch_size=window.batch_size,
                    slice_axis=slice_axis,
                )
                for session in self._sessions
            )
            return total / len(self._sessions)

        labels, probabilities = segment_image(
            image,
            contract.spacing,
            contract.normalization,
            probabilities_of,
            filters=contract.filters,
            return_probabilities=return_probabilities,
            window=window.patch_size,
            slice_axis=slice_axis,
        )
        decision = self._segmentation().postprocessing_decision(postprocess=postprocess, fill_holes=fill_holes)
        if decision:
            from vesalius.inference.postprocess import apply_postprocessing

            labels = labels.with_array(apply_postprocessing(labels.array[0], decision)[None])
        return (labels, probabilities) if return_probabilities else labels  # type: ignore[return-value]

    def _segmentation(self) -> SegmentationContract:
        if not isinstance(self.contract, SegmentationContract):
            raise VesaliusError("a classifier, not a segmentation model", self.path, "use Predictor.classify")
        return self.contract

    # -- classification ----------------------------------------------------------------------------------------------
    def classify(self, image: Image) -> np.ndarray:
        """Class (or label) probabilities ``(K,)`` of ``image`` ``(C, *spatial)``, averaged over the folds."""
        contract = self.contract
        if not isinstance(contract, ClassificationContract):
            raise VesaliusError("a segmentation model, not a classifier", self.path, "use Predictor.segment")
        self._check(image, self.path)
        prepared = prepare_image(image.array, contract.normalization, contract.input_size)[None]
        total = sum(self._run(session)(np.ascontiguousarray(prepared, np.float32))[0] for session in self._sessions)
        return np.asarray(total, dtype=np.float64) / len(self._sessions)

    def _check(self, image: Image, source: Path | str) -> None:
        contract = self.contract
        ModelInput(len(contract.channels), contract.spatial_dims, self.path).check(image, source, contract.channels)

    # -- files -------------------------------------------------------------------------------------------------------
    def predict_files(
        self,
        source: str | Path,
        output: str | Path,
        *,
        fast: bool = False,
        probabilities: bool = False,
        postprocess: bool = True,
        fill_holes: bool = False,
        on_case: Callable[[InputCase], None] | None = None,
        shard: Shard | None = None,
    ) -> list[Path] | Path:
        """Predict every case in ``source`` (of ``shard``, :mod:`vesalius.inference.cohort`) into ``output`` as
        ``vesalius predict`` does (:mod:`vesalius.inference.files`): the written label maps (segmentation) or the
        predictions CSV (classification). Segmentation options are refused for a classifier."""
        contract = self.contract
        inputs = ModelInput(len(contract.channels), contract.spatial_dims, self.path)
        if isinstance(contract, ClassificationContract):
            given = [n for n, v in (("fast", fast), ("probabilities", probabilities), ("fill_holes", fill_holes)) if v]
            if given or not postprocess:
                raise VesaliusError(
                    f"{', '.join(given) or 'postprocess'} does not apply to classification", self.path, "leave it out"
                )
            return classify_cases(
                source,
                output,
                inputs,
                lambda image, _case, _folder: self.classify(image),
                contract.class_names,
                contract.target_type,
                on_case=on_case,
                shard=shard,
            )

        def segment(image: Image) -> tuple[Image, Image | None]:
            result = self.segment(image, fast=fast, postprocess=False, return_probabilities=probabilities)
            return result if isinstance(result, tuple) else (result, None)

        decision = contract.postprocessing_decision(postprocess=postprocess, fill_holes=fill_holes)
        return segment_cases(
            source,
            output,
            inputs,
            segment,
            contract.labels,
            postprocessing=decision or None,
            on_case=on_case,
            shard=shard,
            options={"fast": fast, "probabilities": probabilities, "backend": "onnxruntime"},
        )
