"""A real CT series through a real PACS: push, ``vesalius predict --from-pacs --push``, then check what came back.

Run it from the project's root::

    python benchmarks/pacs_roundtrip.py

The three CT volumes of ``../shared/data/STS_SoftTissueSarcoma_CT`` (HU, 0.98 x 0.98 x 3.27 mm) are written as CT
DICOM series with :func:`vesalius.io.dicom.write_dicom_series` and stored (STOW-RS) into an Orthanc started on
127.0.0.1 (:mod:`tests.pacs.orthanc`). The model is a 3D U-Net trained briefly on cases 1 and 2 (``--train-s``,
5 minutes; cached in ``benchmarks/.work/pacs/``): the point is the DICOM path, not the tumour Dice, which is printed for
information only. For each case the command ``vesalius predict --from-pacs URL --study UID -m RUN --push`` runs as
a process of its own (timed: retrieval, prediction, measurement, SR, storage), the same series is predicted
locally from the folder (``vesalius.predict``), and then the study is queried again: the DICOM-SEG and the SR must
be there, reference the CT series, the SEG's label map must equal the local prediction voxel for voxel, and the
SR's volumes and component counts must equal ``vesalius measure`` of the local prediction.

Without Orthanc or the shared data it says so and exits 0. Prints a table and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, dice_per_class, emit_json, machine_and_date, shared_data

WORK = REPO_ROOT / "benchmarks" / ".work" / "pacs"


def _model(source: Path, budget_s: float) -> Path:
    """A 3D U-Net trained on STS cases 1 and 2 (validated on case 3); reused when already trained."""
    import vesalius
    from vesalius.io.atomic import write_json_atomic
    from vesalius.workspace import Workspace

    run = WORK / "ws" / "runs" / "sts" / "3d" / "fold_2"
    if (run / "checkpoint_final.pt").is_file():
        return run
    staging = WORK / "sts_source"
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (staging / sub).mkdir(parents=True)
        for case in sorted((source / sub).glob("*.nii.gz")):
            os.symlink(case, staging / sub / case.name)
    workspace = WORK / "ws"
    vesalius.import_dataset(staging, "sts", workspace=workspace, modalities=["CT"], overwrite=True)
    vesalius.plan("sts", workspace=workspace)
    vesalius.preprocess("sts", "3d", workspace=workspace)
    cases = ["STS_001", "STS_002", "STS_003"]
    split = [{"train": [c for c in cases if c != val], "val": [val]} for val in cases]  # three folds of one
    write_json_atomic(Workspace(workspace).splits_path("sts"), split)
    return vesalius.train("sts", "3d", 2, workspace=workspace, time_budget_s=budget_s, report=False).run_dir


def _series(image_path: Path, folder: Path) -> tuple[str, str]:
    """The CT volume as a CT DICOM series of a named test patient; returns (study UID, series UID)."""
    import pydicom

    from vesalius.io import read_image
    from vesalius.io.dicom import write_dicom_series
    from vesalius.io.image import to_sitk

    image = read_image(image_path)
    written = write_dicom_series(
        to_sitk(image.with_array(np.round(image.array).astype(np.int16))), folder, modality="CT"
    )
    for path in written:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = f"STS^{image_path.name[:7]}", image_path.name[:7]
        ds.save_as(path)
    first = pydicom.dcmread(written[0], stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-s", type=float, default=300, help="Training time of the model (once; cached).")
    args = parser.parse_args()

    from tests.pacs.orthanc import PASSWORD, USER, installed, running_orthanc

    source = shared_data("STS_SoftTissueSarcoma_CT")
    why = installed() or (None if source else "../shared/data/STS_SoftTissueSarcoma_CT is absent")
    if why:
        print(f"skipped: {why}")
        return 0
    assert source is not None
    import highdicom as hd

    import vesalius
    from vesalius.evaluation.measure import measure_segmentation
    from vesalius.evaluation.structured_report import read_structured_report
    from vesalius.io import read_image
    from vesalius.io.dicom_seg import read_dicom_seg
    from vesalius.pacs.client import Pacs

    start = time.perf_counter()
    run = _model(source, args.train_s)
    train_s = time.perf_counter() - start
    vesalius_cli = str(Path(sys.executable).with_name("vesalius"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp, running_orthanc(Path(tmp) / "orthanc") as server:
        client = Pacs(server.url, user=USER, password=PASSWORD)
        env = {**os.environ, "VESALIUS_PACS_USER": USER, "VESALIUS_PACS_PASSWORD": PASSWORD}
        for case in sorted((source / "imagesTr").glob("*.nii.gz")):
            name = case.name[:7]
            folder = Path(tmp) / name
            study, series = _series(case, folder)
            t0 = time.perf_counter()
            subprocess.run([vesalius_cli, "pacs", "push", "--url", server.url, str(folder)], env=env, check=True)
            push_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            command = [vesalius_cli, "predict", "-m", str(run), "--from-pacs", server.url, "--study", study, "--push"]
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            pacs_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            (local_path,) = vesalius.predict(folder, Path(tmp) / f"{name}_local", run)
            local_s = time.perf_counter() - t0

            found = {s.modality: s for s in client.find_series(study)}
            client.retrieve_series(found["SEG"], Path(tmp) / f"{name}_seg")
            client.retrieve_series(found["SR"], Path(tmp) / f"{name}_sr")
            seg = read_dicom_seg(next((Path(tmp) / f"{name}_seg").glob("*.dcm")), folder)
            sr_file = next((Path(tmp) / f"{name}_sr").glob("*.dcm"))
            local = read_image(local_path)
            reported = read_structured_report(sr_file)
            measured = measure_segmentation(local)
            refs = [str(r.SeriesInstanceUID) for r in seg.dataset.ReferencedSeriesSequence]
            sr_study = str(hd.sr.srread(sr_file).StudyInstanceUID)
            volumes_agree = all(
                abs(reported[n].volume_ml - lab.size) <= 1e-6 * max(lab.size, 1.0)
                and reported[n].components == lab.num_components
                and reported[n].source_series_uid == series
                for n, lab in measured.labels.items()
            )
            reference = read_image(source / "labelsTr" / case.name).array[0]
            rows.append(
                {
                    "case": name,
                    "shape": list(local.spatial_shape),
                    "push_s": round(push_s, 2),
                    "from_pacs_s": round(pacs_s, 2),
                    "local_predict_s": round(local_s, 2),
                    "seg_equals_local": bool(np.array_equal(seg.labels.array, local.array)),
                    "seg_references_series": refs == [series],
                    "sr_in_study": sr_study == study,
                    "sr_equals_measure": volumes_agree,
                    "tumour_volume_ml": round(measured.labels[1].size, 2) if 1 in measured.labels else 0.0,
                    "dice_tumour_info": round(dice_per_class(local.array[0], reference, [1])[1], 3),
                }
            )
    print(f"model: {run} ({train_s:.0f} s to train or load)")
    header = (
        f"{'case':8} {'shape':>14} {'push s':>7} {'from-pacs s':>12} {'local s':>8} {'SEG=local':>9} {'SR=measure':>10}"
    )
    print(header)
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{r['case']:8} {shape:>14} {r['push_s']:7.2f} {r['from_pacs_s']:12.2f} {r['local_predict_s']:8.2f} "
            f"{r['seg_equals_local']!s:>9} {r['sr_equals_measure']!s:>10}"
        )
    ok = all(
        r["seg_equals_local"] and r["seg_references_series"] and r["sr_in_study"] and r["sr_equals_measure"]
        for r in rows
    )
    emit_json({"benchmark": "pacs_roundtrip", **machine_and_date(), "cases": rows, "all_checks_pass": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
