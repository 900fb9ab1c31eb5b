"""Predict a series that lives in a PACS and file the results back into its study.

The series is retrieved (WADO-RS) into a temporary folder, segmented by the caller's ``predict`` (the same code as
``vesalius predict`` on a DICOM series folder, which writes the label map and a DICOM-SEG referencing the series),
measured (:func:`vesalius.evaluation.measure.measure_segmentation`), summarised as a DICOM SR measurement report
(:func:`vesalius.evaluation.structured_report.structured_report`, referencing the SEG and the series) and, when
asked, both objects are stored (STOW-RS) into the study. Nothing is left in the temporary folder; a local copy of
the results goes to ``output`` when one is given.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path, write_json_atomic
from vesalius.pacs.client import Pacs, SeriesSummary

__all__ = ["PacsPrediction", "predict_from_pacs"]

#: ``predict(series_folder, output_folder)`` -> the label maps written (one, for one series).
Predict = Callable[[Path, Path], Sequence[Path] | Path]


@dataclass
class PacsPrediction:
    """What :func:`predict_from_pacs` did.

    Attributes:
        series: the series predicted.
        seg_uid, sr_uid: SOP Instance UIDs of the DICOM-SEG and the structured report.
        pushed: whether both were stored into the PACS.
        files: the local copies (``labels``, ``seg``, ``sr``, ``measurements``), when an output folder was given.
        measurements: per label name, the volume (mL; 2D: mm^2) and number of connected components.
    """

    series: SeriesSummary
    seg_uid: str
    sr_uid: str
    pushed: bool
    files: dict[str, Path] = field(default_factory=dict)
    measurements: dict[str, dict[str, float]] = field(default_factory=dict)


def predict_from_pacs(
    pacs: Pacs,
    study_uid: str,
    predict: Predict,
    *,
    series_uid: str | None = None,
    push: bool = False,
    output: str | Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PacsPrediction:
    """Retrieve one series of ``study_uid``, segment it with ``predict``, measure it, and (``push``) store the
    DICOM-SEG and the SR measurement report into the study.

    ``series_uid``: the series to predict (default: the study's only image series). ``output``: a folder that
    receives the label map, the SEG, the SR and ``measurements.json``. ``on_step`` hears each step, for progress.
    """
    from vesalius.evaluation.measure import measure_segmentation
    from vesalius.evaluation.structured_report import structured_report
    from vesalius.io.dicom_seg import read_dicom_seg

    if not push and output is None:
        raise VesaliusError("nothing would be kept of the prediction", remedy="give --push, --output DIR or both")
    say = on_step or (lambda _step: None)
    series = pacs.image_series(study_uid, series_uid)
    with tempfile.TemporaryDirectory(prefix="vesalius-pacs-") as tmp:
        folder = Path(tmp) / "series" / series.series_uid
        say(f"retrieving series {series.series_uid} ({series.modality})")
        pacs.retrieve_series(series, folder)
        say("predicting")
        predicted = Path(tmp) / "predicted"
        try:
            written = predict(folder, predicted)
        except VesaliusError as e:  # it names the temporary folder, which is gone when the user reads the message
            raise VesaliusError(e.problem, pacs.url, e.remedy) from None
        labels_path = written if isinstance(written, Path) else written[0]
        seg_path = labels_path.parent / f"{series.series_uid}_seg.dcm"
        if labels_path.suffix.lower() == ".csv" or not seg_path.is_file():
            raise VesaliusError(
                "the model does not segment: --from-pacs stores a DICOM-SEG", remedy="give a segmentation model"
            )
        say("measuring")
        # measured as the SEG holds it (segment numbers as values), so the report's groups match its segments
        seg = read_dicom_seg(seg_path, folder)
        measurements = measure_segmentation(seg.labels, labels=seg.names)
        sources = [pydicom.dcmread(name, stop_before_pixels=True) for name in seg.series.files]
        report = structured_report(seg.dataset, sources, measurements)
        sr_path = predicted / f"{series.series_uid}_sr.dcm"
        report.save_as(sr_path, enforce_file_format=True)
        summary = {
            measured.name: {measurements.size_column: measured.size, "components": len(measured.components)}
            for measured in measurements.labels.values()
        }
        result = PacsPrediction(series, str(seg.dataset.SOPInstanceUID), str(report.SOPInstanceUID), False, {}, summary)
        if push:
            say("storing the segmentation and the report")
            pacs.store([seg.dataset, report])
            result.pushed = True
        if output is not None:
            result.files = _keep(Path(output), labels_path, seg_path, sr_path, summary, series)
    return result


def _keep(
    output: Path, labels: Path, seg: Path, sr: Path, summary: dict[str, dict[str, float]], series: SeriesSummary
) -> dict[str, Path]:
    """Copy the results into ``output``, each file atomically."""
    output.mkdir(parents=True, exist_ok=True)
    files = {"labels": output / labels.name, "seg": output / seg.name, "sr": output / sr.name}
    for source, target in ((labels, files["labels"]), (seg, files["seg"]), (sr, files["sr"])):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    files["measurements"] = output / f"{series.series_uid}_measurements.json"
    record = {"study_uid": series.study_uid, "series_uid": series.series_uid, "labels": summary}
    write_json_atomic(files["measurements"], record)
    return files
