"""The bad-input corpus, results side: ``predict``, ``evaluate``, ``measure``, ``overlay``, ``report``, ``view``.

The same contract as ``test_bad_inputs.py``: exit code 2, one ``error:`` line naming the file or option with a
remedy, no traceback, no internal error, inputs (images, models, predictions) byte for byte as they were, and no
output where the refusal should come first. The session models (``untrained_segmentation``,
``untrained_classifier``, ``fake_run``) are only read; cases that break a model break a copy.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import label_volume, volume
from tests.reliability.corpus import (
    HUGE_HEADER,
    NEGATIVE_SPACING,
    TABLES,
    ZERO_SPACING,
    Bad,
    Env,
    assert_refused,
    case,
    empty,
    folder,
    garbage,
    image3d,
    label3d,
    model_copy,
    nrrd,
    png,
    table,
    truncated,
    with_nan,
)
from vesalius.io import Geometry, write_image

__all__ = ["TABLES"]

# ---------------------------------------------------------------------------------------------------------------
# predict -i IN -o OUT -m RUN: nothing is written (least of all over an input) when the inputs are bad


def _phantom(env: Env, path: Path, seed: int = 0) -> Path:
    """A small 3D image of the kind the segmentation model takes (one channel)."""
    return image3d(path, seed)


def _predict(
    env: Env,
    source: Path,
    *options: str,
    names: tuple[str, ...],
    output: Path | None = None,
    model: Path | None = None,
    absent: bool = True,
) -> Bad:
    model = model or env.fixture("untrained_segmentation")
    output = output or env.tmp / "out"
    args = ["predict", "-i", str(source), "-o", str(output), "-m", str(model), *options]
    existing = (output,) if output.exists() else ()  # an existing output is an input too: it must not change
    return Bad(args, names, (source, model, *existing), (output,) if absent else ())


def _predict_file(env: Env, builder, name: str = "case.nii.gz") -> Bad:  # type: ignore[no-untyped-def]
    path = builder(env.tmp / "in" / name)
    return _predict(env, env.tmp / "in", names=(str(path),))


def _broken_model(env: Env, breaker, relative: str, *options: str) -> Bad:  # type: ignore[no-untyped-def]
    model = model_copy(env)
    breaker(model / relative)
    source = _phantom(env, env.tmp / "in" / "case.nii.gz")
    return _predict(env, source, *options, names=(str(model / relative),), model=model)


@case("predict", "input-missing")
def _(env: Env) -> Bad:
    return _predict(env, env.tmp / "nope", names=(str(env.tmp / "nope"),))


@case("predict", "input-empty-folder")
def _(env: Env) -> Bad:
    return _predict(env, folder(env.tmp / "in"), names=(str(env.tmp / "in"),))


@case("predict", "input-truncated-image")
def _(env: Env) -> Bad:
    return _predict_file(env, lambda p: truncated(_phantom(env, p)))


@case("predict", "input-garbage-bytes")
def _(env: Env) -> Bad:
    return _predict_file(env, garbage)


@case("predict", "input-empty-file")
def _(env: Env) -> Bad:
    return _predict_file(env, empty)


@case("predict", "input-text-file")
def _(env: Env) -> Bad:
    notes = env.tmp / "notes.txt"
    notes.write_text("not an image\n")
    return _predict(env, notes, names=(str(notes),))


@case("predict", "input-2d-picture-to-3d-model")
def _(env: Env) -> Bad:
    return _predict_file(env, png, "case.png")


@case("predict", "input-nan-voxels")
def _(env: Env) -> Bad:
    return _predict_file(env, with_nan)


@case("predict", "input-zero-spacing-nrrd")
def _(env: Env) -> Bad:
    return _predict_file(env, lambda p: nrrd(p, ZERO_SPACING), "case.nrrd")


@case("predict", "input-negative-spacing-nrrd")
def _(env: Env) -> Bad:
    return _predict_file(env, lambda p: nrrd(p, NEGATIVE_SPACING), "case.nrrd")


@case("predict", "input-header-claims-1e9-voxels")
def _(env: Env) -> Bad:
    return _predict_file(env, lambda p: nrrd(p, HUGE_HEADER), "case.nrrd")


@case("predict", "input-two-channels-to-one-channel-model")
def _(env: Env) -> Bad:
    _phantom(env, env.tmp / "in" / "case_0000.nii.gz")
    _phantom(env, env.tmp / "in" / "case_0001.nii.gz")
    return _predict(env, env.tmp / "in", names=("case",))


@case("predict", "output-is-the-input-folder")
def _(env: Env) -> Bad:
    source = env.tmp / "in"
    _phantom(env, source / "case.nii.gz")
    return _predict(env, source, names=(str(source),), output=source, absent=False)


@case("predict", "output-inside-the-input-folder")
def _(env: Env) -> Bad:
    source = env.tmp / "in"
    _phantom(env, source / "case.nii.gz")
    return _predict(env, source, names=(str(source / "seg"),), output=source / "seg")


@case("predict", "output-is-the-input-file")
def _(env: Env) -> Bad:
    source = _phantom(env, env.tmp / "case.nii.gz")
    return _predict(env, source, names=(str(source),), output=source, absent=False)


@case("predict", "output-is-an-existing-file-for-a-folder")
def _(env: Env) -> Bad:
    _phantom(env, env.tmp / "in" / "a.nii.gz")
    _phantom(env, env.tmp / "in" / "b.nii.gz", seed=1)
    existing = env.tmp / "result.txt"
    existing.write_text("keep me\n")
    return _predict(env, env.tmp / "in", names=(str(existing),), output=existing, absent=False)


@case("predict", "output-parent-is-a-file")
def _(env: Env) -> Bad:
    source = _phantom(env, env.tmp / "in" / "case.nii.gz")
    blocker = env.tmp / "blocker.txt"
    blocker.write_text("a file\n")
    bad = _predict(env, source, names=(str(blocker),), output=blocker / "seg")
    return Bad(bad.args, bad.names, (*bad.inputs, blocker), bad.absent)


@case("predict", "model-missing")
def _(env: Env) -> Bad:
    source = _phantom(env, env.tmp / "in" / "case.nii.gz")
    return _predict(env, source, names=(str(env.tmp / "nope"),), model=env.tmp / "nope")


@case("predict", "model-empty-folder")
def _(env: Env) -> Bad:
    source = _phantom(env, env.tmp / "in" / "case.nii.gz")
    model = folder(env.tmp / "model")
    return _predict(env, source, names=(str(model),), model=model)


@case("predict", "model-json-invalid")
def _(env: Env) -> Bad:
    return _broken_model(env, lambda p: p.write_text('{"network": '), "model.json")


@case("predict", "model-json-is-a-directory")
def _(env: Env) -> Bad:
    return _broken_model(env, lambda p: (p.unlink(), p.mkdir()), "model.json")


@case("predict", "checkpoint-truncated")
def _(env: Env) -> Bad:
    return _broken_model(env, truncated, "checkpoint_final.pt")


@case("predict", "checkpoint-garbage-bytes")
def _(env: Env) -> Bad:
    return _broken_model(env, garbage, "checkpoint_final.pt")


@case("predict", "checkpoint-file-missing")
def _(env: Env) -> Bad:
    return _broken_model(env, lambda p: p.unlink(), "checkpoint_final.pt")


PREDICT_OPTIONS = {
    "checkpoint-nope": (["--checkpoint", "nope"], ("nope", "latest")),  # names the choices
    "precision-int8": (["--precision", "int8"], ("int8",)),
    "device-tpu": (["--device", "tpu"], ("tpu",)),
    "explain-with-a-segmentation-model": (["--explain"], ("explain",)),
}


def _predict_option(env: Env, options: list[str], names: tuple[str, ...]) -> Bad:
    return _predict(env, _phantom(env, env.tmp / "in" / "case.nii.gz"), *options, names=names)


for _id, (_options, _names) in PREDICT_OPTIONS.items():
    case("predict", _id)(lambda env, o=_options, n=_names: _predict_option(env, o, n))


@case("predict", "classifier-fast-option")
def _(env: Env) -> Bad:
    source = png(env.tmp / "in" / "a.png", shape=(32, 32))
    return _predict(env, source, "--fast", names=("fast",), model=env.fixture("untrained_classifier"))


@case("predict", "classifier-3d-volume-to-2d-model")
def _(env: Env) -> Bad:
    source = image3d(env.tmp / "in" / "a.nii.gz")
    return _predict(env, env.tmp / "in", names=(str(source),), model=env.fixture("untrained_classifier"))


def _broken_package(env: Env, breaker, *options: str, names: tuple[str, ...] = ()) -> Bad:  # type: ignore[no-untyped-def]
    """A copy of the session's exported package, broken by ``breaker(path)``, predicted from one image; the error
    must name the package and ``names``."""
    package = Path(shutil.copy(env.fixture("untrained_segmentation_package"), env.tmp / "model.vpkg"))
    breaker(package)
    source = _phantom(env, env.tmp / "in" / "case.nii.gz")
    return _predict(env, source, *options, names=(str(package), *names), model=package)


def _rewrite_member(package: Path, member: str, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite ``package`` (a zip) with ``member``'s bytes replaced by ``change(bytes)``."""
    with zipfile.ZipFile(package) as original:
        members = {info.filename: original.read(info.filename) for info in original.infolist()}
    members[member] = change(members[member])
    with zipfile.ZipFile(package, "w") as rewritten:
        for name, data in members.items():
            rewritten.writestr(name, data)


def _newer_format(data: bytes) -> bytes:
    manifest = json.loads(data)
    manifest["format_version"] += 1
    return json.dumps(manifest).encode()


@case("predict", "package-member-changed")
def _(env: Env) -> Bad:
    change = lambda p: _rewrite_member(p, "models/fold_0.onnx", lambda b: b[:-8] + bytes(8))  # noqa: E731
    return _broken_package(env, change, names=("models/fold_0.onnx",))


@case("predict", "package-truncated")
def _(env: Env) -> Bad:
    return _broken_package(env, truncated)


@case("predict", "package-of-a-newer-format")
def _(env: Env) -> Bad:
    return _broken_package(env, lambda p: _rewrite_member(p, "manifest.json", _newer_format), names=("format version",))


@case("predict", "package-device-option-on-onnxruntime")
def _(env: Env) -> Bad:
    package = shutil.copy(env.fixture("untrained_segmentation_package"), env.tmp / "model.vpkg")
    source = _phantom(env, env.tmp / "in" / "case.nii.gz")
    return _predict(env, source, "--device", "cuda:0", names=("device",), model=Path(package))


@pytest.mark.parametrize("setup", **table("predict"))
def test_predict(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# evaluate PRED REF: predictions and references are only read; nothing half-written


def _evaluate(
    env: Env, *options: str, names: tuple[str, ...], pred: Path | None = None, ref: Path | None = None
) -> Bad:
    if pred is None:
        pred = env.tmp / "pred"
        label3d(pred / "a.nii.gz", 0)
    if ref is None:
        ref = env.tmp / "ref"
        label3d(ref / "a.nii.gz", 1)
    args = ["evaluate", str(pred), str(ref), "-w", str(env.tmp / "ws"), *options]
    return Bad(args, names, (pred, ref), (pred / "metrics.csv", pred / "summary.json"))


def _bad_prediction(env: Env, builder) -> Bad:  # type: ignore[no-untyped-def]
    pred = env.tmp / "pred"
    target = builder(pred / "a.nii.gz")
    return _evaluate(env, names=(str(target),), pred=pred)


def _classification_csv(env: Env, text: str | None) -> Bad:
    import vesalius
    from vesalius.data.synthetic import write_classification_dataset

    ws = env.tmp / "ws"
    vesalius.import_dataset(write_classification_dataset(env.tmp / "src", 8, seed=2), "cls", workspace=ws)
    csv = env.tmp / "out" / "predictions.csv"
    if text is not None:
        csv.parent.mkdir()
        csv.write_text(text)
    args = ["evaluate", str(csv), "cls", "-w", str(ws)]
    return Bad(args, (str(csv),), (csv.parent, ws / "datasets"), (csv.parent / "summary.json",))


@case("evaluate", "predictions-missing")
def _(env: Env) -> Bad:
    return _evaluate(env, names=(str(env.tmp / "nope"),), pred=env.tmp / "nope")


@case("evaluate", "references-missing")
def _(env: Env) -> Bad:
    return _evaluate(env, names=(str(env.tmp / "nope"),), ref=env.tmp / "nope")


@case("evaluate", "predictions-empty-folder")
def _(env: Env) -> Bad:
    return _evaluate(env, names=(str(env.tmp / "pred"),), pred=folder(env.tmp / "pred"))


@case("evaluate", "references-empty-folder")
def _(env: Env) -> Bad:
    return _evaluate(env, names=(str(env.tmp / "ref"),), ref=folder(env.tmp / "ref"))


@case("evaluate", "no-matching-case-names")
def _(env: Env) -> Bad:
    ref = env.tmp / "ref"
    label3d(ref / "b.nii.gz")
    return _evaluate(env, names=(str(env.tmp / "pred"), str(ref)), ref=ref)


@case("evaluate", "prediction-truncated")
def _(env: Env) -> Bad:
    return _bad_prediction(env, lambda p: truncated(label3d(p)))


@case("evaluate", "prediction-garbage-bytes")
def _(env: Env) -> Bad:
    return _bad_prediction(env, garbage)


@case("evaluate", "prediction-empty-file")
def _(env: Env) -> Bad:
    return _bad_prediction(env, empty)


@case("evaluate", "prediction-is-a-directory")
def _(env: Env) -> Bad:
    return _bad_prediction(env, folder)


@case("evaluate", "prediction-float-with-nan")
def _(env: Env) -> Bad:
    def build(path: Path) -> Path:
        array = label_volume(0).array.astype(np.float32)
        array[0, 0, 0, 0] = np.nan
        write_image(label_volume(0).with_array(array), path)
        return path

    return _bad_prediction(env, build)


@case("evaluate", "prediction-negative-label-values")
def _(env: Env) -> Bad:
    def build(path: Path) -> Path:
        array = label_volume(0).array.astype(np.int16)
        array[0, :2] = -1
        write_image(label_volume(0).with_array(array), path)
        return path

    return _bad_prediction(env, build)


@case("evaluate", "prediction-shape-differs")
def _(env: Env) -> Bad:
    return _bad_prediction(env, lambda p: (write_image(label_volume(0, shape=(6, 7, 4)), p), p)[1])


@case("evaluate", "prediction-spacing-differs")
def _(env: Env) -> Bad:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    return _bad_prediction(env, lambda p: (write_image(label_volume(0, geometry=geometry), p), p)[1])


@case("evaluate", "tolerance-mm-negative")
def _(env: Env) -> Bad:
    return _evaluate(env, "--tolerance-mm", "-1", names=("--tolerance-mm",))


@case("evaluate", "labels-unknown-data-set")
def _(env: Env) -> Bad:
    return _evaluate(env, "--labels", "ghost", names=("ghost",))


@case("evaluate", "labels-json-invalid")
def _(env: Env) -> Bad:
    labels = env.tmp / "dataset.json"
    labels.write_text('{"labels": ')
    bad = _evaluate(env, "--labels", str(labels), names=(str(labels),))
    return Bad(bad.args, bad.names, (*bad.inputs, labels), bad.absent)


@case("evaluate", "output-is-an-existing-file")
def _(env: Env) -> Bad:
    existing = env.tmp / "metrics.txt"
    existing.write_text("keep me\n")
    bad = _evaluate(env, "-o", str(existing), names=(str(existing),))
    return Bad(bad.args, bad.names, (*bad.inputs, existing), bad.absent)


@case("evaluate", "output-parent-is-a-file")
def _(env: Env) -> Bad:
    blocker = env.tmp / "blocker.txt"
    blocker.write_text("a file\n")
    bad = _evaluate(env, "-o", str(blocker / "metrics"), names=(str(blocker),))
    return Bad(bad.args, bad.names, (*bad.inputs, blocker), bad.absent)


@case("evaluate", "csv-unknown-data-set")
def _(env: Env) -> Bad:
    csv = env.tmp / "out" / "predictions.csv"
    csv.parent.mkdir()
    csv.write_text("case_id,file,predicted,p_absent,p_present\nc0,c0.nii.gz,absent,0.9,0.1\n")
    return Bad(["evaluate", str(csv), "ghost", "-w", str(env.tmp / "ws")], ("ghost",), (csv.parent,))


@case("evaluate", "csv-empty-file")
def _(env: Env) -> Bad:
    return _classification_csv(env, "")


@case("evaluate", "csv-without-probability-columns")
def _(env: Env) -> Bad:
    return _classification_csv(env, "case_id,file\ncase_000,case_000.nii.gz\n")


@case("evaluate", "csv-missing")
def _(env: Env) -> Bad:
    return _classification_csv(env, None)


@pytest.mark.parametrize("setup", **table("evaluate"))
def test_evaluate(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# measure SEG: the table goes only where asked, in a format Vesalius writes


def _measure(env: Env, seg: Path, *options: str, names: tuple[str, ...], inputs: tuple[Path, ...] = ()) -> Bad:
    return Bad(["measure", str(seg), *options], names, (seg, *inputs))


def _bad_seg(env: Env, builder, name: str = "seg.nii.gz") -> Bad:  # type: ignore[no-untyped-def]
    seg = builder(env.tmp / name)
    return _measure(env, seg, names=(str(seg),))


def _measure_output(env: Env, output: Path, names: tuple[str, ...]) -> Bad:
    seg = label3d(env.tmp / "seg.nii.gz")
    bad = _measure(env, seg, "-o", str(output), names=names)
    return Bad(bad.args, bad.names, bad.inputs, () if output.exists() else (output,))


@case("measure", "seg-missing")
def _(env: Env) -> Bad:
    return _measure(env, env.tmp / "nope.nii.gz", names=(str(env.tmp / "nope.nii.gz"),))


@case("measure", "seg-empty-file")
def _(env: Env) -> Bad:
    return _bad_seg(env, empty)


@case("measure", "seg-truncated")
def _(env: Env) -> Bad:
    return _bad_seg(env, lambda p: truncated(label3d(p)))


@case("measure", "seg-garbage-bytes")
def _(env: Env) -> Bad:
    return _bad_seg(env, garbage)


@case("measure", "seg-empty-folder")
def _(env: Env) -> Bad:
    return _bad_seg(env, folder, "seg_dicom")


@case("measure", "seg-float-with-nan")
def _(env: Env) -> Bad:
    return _bad_seg(env, with_nan)


@case("measure", "seg-zero-spacing-nrrd")
def _(env: Env) -> Bad:
    return _bad_seg(env, lambda p: nrrd(p, ZERO_SPACING), "seg.nrrd")


@case("measure", "seg-negative-spacing-nrrd")
def _(env: Env) -> Bad:
    return _bad_seg(env, lambda p: nrrd(p, NEGATIVE_SPACING), "seg.nrrd")


@case("measure", "seg-header-claims-1e9-voxels")
def _(env: Env) -> Bad:
    return _bad_seg(env, lambda p: nrrd(p, HUGE_HEADER), "seg.nrrd")


@case("measure", "output-xlsx")
def _(env: Env) -> Bad:
    return _measure_output(env, env.tmp / "table.xlsx", ("table.xlsx",))


@case("measure", "output-is-a-directory")
def _(env: Env) -> Bad:
    out = folder(env.tmp / "table.csv")
    return _measure_output(env, out, (str(out),))


@case("measure", "output-parent-is-a-file")
def _(env: Env) -> Bad:
    blocker = env.tmp / "blocker.txt"
    blocker.write_text("a file\n")
    bad = _measure_output(env, blocker / "table.csv", (str(blocker),))
    return Bad(bad.args, bad.names, (*bad.inputs, blocker), bad.absent)


@case("measure", "output-is-the-seg")
def _(env: Env) -> Bad:
    seg = label3d(env.tmp / "seg.nii.gz")
    return Bad(["measure", str(seg), "-o", str(seg)], (str(seg),), (seg,))


@case("measure", "connectivity-unknown")
def _(env: Env) -> Bad:
    seg = label3d(env.tmp / "seg.nii.gz")
    return _measure(env, seg, "--connectivity", "diagonal", names=("diagonal",))


@case("measure", "image-missing")
def _(env: Env) -> Bad:
    seg = label3d(env.tmp / "seg.nii.gz")
    return _measure(env, seg, "--image", str(env.tmp / "nope.nii.gz"), names=(str(env.tmp / "nope.nii.gz"),))


@case("measure", "image-shape-differs")
def _(env: Env) -> Bad:
    seg = label3d(env.tmp / "seg.nii.gz")
    image = env.tmp / "ct.nii.gz"
    write_image(volume(0, shape=(6, 7, 4)), image)
    return _measure(env, seg, "--image", str(image), names=(str(image),), inputs=(image,))


@pytest.mark.parametrize("setup", **table("measure"))
def test_measure(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# overlay IMAGE SEG -o PNG: a picture is written only when everything is right, never over an input


def _overlay(
    env: Env, *options: str, names: tuple[str, ...], image: Path | None = None, seg: Path | None = None
) -> Bad:
    image = image or image3d(env.tmp / "ct.nii.gz")
    seg = seg or label3d(env.tmp / "seg.nii.gz")
    output = env.tmp / "overlay.png"
    args = ["overlay", str(image), str(seg), "-o", str(output), *options]
    return Bad(args, names, (image, seg), (output,))


def _overlay_to(env: Env, output: Path, names: tuple[str, ...], extra: tuple[Path, ...] = ()) -> Bad:
    bad = _overlay(env, names=names)
    args = [*bad.args[:-1], str(output)]
    return Bad(args, names, (*bad.inputs, *extra), () if output.exists() else (output,))


OVERLAY_OPTIONS = {
    "window-foo": (["--window", "foo"], ("foo",)),
    "window-negative-width": (["--window", "40,-400"], ("--window",)),
    "percentiles-a-b": (["--percentiles", "a,b"], ("--percentiles",)),
    "percentiles-reversed": (["--percentiles", "99,1"], ("--percentiles",)),
    "percentiles-above-100": (["--percentiles", "1,150"], ("--percentiles",)),
    "slice-out-of-range": (["--slice", "99"], ("--slice",)),
    "label-not-in-the-segmentation": (["--label", "7"], ("--label",)),
    "alpha-above-1": (["--alpha", "2"], ("--alpha",)),
    "size-zero": (["--size", "0"], ("--size",)),
    "montage-negative": (["--montage", "-2"], ("--montage",)),
}

for _id, (_options, _names) in OVERLAY_OPTIONS.items():
    case("overlay", _id)(lambda env, o=_options, n=_names: _overlay(env, *o, names=n))


@case("overlay", "image-missing")
def _(env: Env) -> Bad:
    return _overlay(env, names=(str(env.tmp / "nope.nii.gz"),), image=env.tmp / "nope.nii.gz")


@case("overlay", "seg-missing")
def _(env: Env) -> Bad:
    return _overlay(env, names=(str(env.tmp / "nope.nii.gz"),), seg=env.tmp / "nope.nii.gz")


@case("overlay", "image-truncated")
def _(env: Env) -> Bad:
    image = truncated(image3d(env.tmp / "ct.nii.gz"))
    return _overlay(env, names=(str(image),), image=image)


@case("overlay", "seg-garbage-bytes")
def _(env: Env) -> Bad:
    seg = garbage(env.tmp / "seg.nii.gz")
    return _overlay(env, names=(str(seg),), seg=seg)


@case("overlay", "seg-shape-differs")
def _(env: Env) -> Bad:
    seg = env.tmp / "seg.nii.gz"
    write_image(label_volume(0, shape=(6, 7, 4)), seg)
    return _overlay(env, names=(str(seg),), seg=seg)


@case("overlay", "reference-shape-differs")
def _(env: Env) -> Bad:
    ref = env.tmp / "ref.nii.gz"
    write_image(label_volume(0, shape=(5, 7, 5)), ref)
    bad = _overlay(env, "--reference", str(ref), names=(str(ref),))
    return Bad(bad.args, bad.names, (*bad.inputs, ref), bad.absent)


@case("overlay", "output-is-a-directory")
def _(env: Env) -> Bad:
    out = folder(env.tmp / "picture.png")
    return _overlay_to(env, out, (str(out),))


@case("overlay", "output-not-png")
def _(env: Env) -> Bad:
    return _overlay_to(env, env.tmp / "picture.txt", ("picture.txt",))


@case("overlay", "output-parent-is-a-file")
def _(env: Env) -> Bad:
    blocker = env.tmp / "blocker.txt"
    blocker.write_text("a file\n")
    return _overlay_to(env, blocker / "picture.png", (str(blocker),), (blocker,))


@case("overlay", "output-is-the-image")
def _(env: Env) -> Bad:
    image, seg = png(env.tmp / "photo.png"), png(env.tmp / "mask.png", mask=True)
    return Bad(["overlay", str(image), str(seg), "-o", str(image)], (str(image),), (image, seg))


@pytest.mark.parametrize("setup", **table("overlay"))
def test_overlay(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# report SOURCE: a run or evaluation folder is only read


def _run_copy(env: Env) -> Path:
    """A copy of the workspace of ``fake_run`` (small), and the copied run folder in it."""
    run = env.fixture("fake_run")
    ws = shutil.copytree(run.parents[3], env.tmp / "ws")
    return ws / run.relative_to(run.parents[3])


def _evaluation(env: Env) -> Path:
    import vesalius

    pred, ref = env.tmp / "pred", env.tmp / "ref"
    label3d(pred / "a.nii.gz", 0)
    label3d(ref / "a.nii.gz", 1)
    vesalius.evaluate(pred, ref)
    return pred


def _report(source: Path, *options: str, names: tuple[str, ...], output: Path | None = None) -> Bad:
    args = ["report", str(source), *options, *(["-o", str(output)] if output else [])]
    absent = (source / "report.html",) if output is None else (() if output.exists() else (output,))
    return Bad(args, names, (source,) if output is None or not output.exists() else (source, output), absent)


@case("report", "source-missing")
def _(env: Env) -> Bad:
    return _report(env.tmp / "nope", names=(str(env.tmp / "nope"),))


@case("report", "source-empty-folder")
def _(env: Env) -> Bad:
    return _report(folder(env.tmp / "empty"), names=(str(env.tmp / "empty"),))


@case("report", "source-is-a-file")
def _(env: Env) -> Bad:
    return _report(garbage(env.tmp / "run.bin"), names=(str(env.tmp / "run.bin"),))


@case("report", "run-model-json-invalid")
def _(env: Env) -> Bad:
    run = _run_copy(env)
    (run / "model.json").write_text("{")
    return _report(run, names=(str(run / "model.json"),))


@case("report", "run-training-json-array")
def _(env: Env) -> Bad:
    run = _run_copy(env)
    (run / "training.json").write_text("[]")
    return _report(run, names=(str(run / "training.json"),))


@case("report", "output-is-a-directory")
def _(env: Env) -> Bad:
    out = folder(env.tmp / "report.html")
    return _report(_run_copy(env), names=(str(out),), output=out)


@case("report", "output-parent-is-a-file")
def _(env: Env) -> Bad:
    blocker = env.tmp / "blocker.txt"
    blocker.write_text("a file\n")
    bad = _report(_evaluation(env), names=(str(blocker),), output=blocker / "report.html")
    return Bad(bad.args, bad.names, (*bad.inputs, blocker), bad.absent)


@case("report", "evaluation-metrics-csv-garbage")
def _(env: Env) -> Bad:
    pred = _evaluation(env)
    garbage(pred / "metrics.csv")
    return _report(pred, names=(str(pred / "metrics.csv"),))


@case("report", "evaluation-summary-json-invalid")
def _(env: Env) -> Bad:
    pred = _evaluation(env)
    (pred / "summary.json").write_text('{"metrics": ')
    return _report(pred, names=(str(pred / "summary.json"),))


@case("report", "images-folder-missing")
def _(env: Env) -> Bad:
    pred = _evaluation(env)
    return _report(pred, "--images", str(env.tmp / "nope"), names=(str(env.tmp / "nope"),))


@pytest.mark.parametrize("setup", **table("report"))
def test_report(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# view: argument errors that fail before serving (a case that would serve fails instead of blocking)


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import uvicorn

    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail("the viewer started serving instead of refusing the arguments")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)
    yield


@case("view", "port-70000")
def _(env: Env) -> Bad:
    image = image3d(env.tmp / "ct.nii.gz")
    return Bad(["view", str(image), "--port", "70000"], ("70000",), (image,))


@case("view", "port-negative")
def _(env: Env) -> Bad:
    image = image3d(env.tmp / "ct.nii.gz")
    return Bad(["view", str(image), "--port", "-1"], ("--port",), (image,))


@case("view", "path-missing")
def _(env: Env) -> Bad:
    return Bad(["view", str(env.tmp / "nope.nii.gz"), "--port", "0"], (str(env.tmp / "nope.nii.gz"),), ())


@case("view", "empty-folder")
def _(env: Env) -> Bad:
    empty_dir = folder(env.tmp / "scans")
    return Bad(["view", str(empty_dir), "--port", "0"], (str(empty_dir),), (empty_dir,))


@case("view", "seg-with-a-workspace")
def _(env: Env) -> Bad:
    from tests.reliability.corpus import imported

    ws = imported(env)
    seg = label3d(env.tmp / "seg.nii.gz")
    return Bad(["view", str(ws), "--seg", str(seg), "--port", "0"], ("--seg",), (ws, seg))


@case("view", "seg-missing")
def _(env: Env) -> Bad:
    image = image3d(env.tmp / "ct.nii.gz")
    seg = env.tmp / "nope.nii.gz"
    return Bad(["view", str(image), "--seg", str(seg), "--port", "0"], (str(seg),), (image,))


@case("view", "ref-missing")
def _(env: Env) -> Bad:
    image = image3d(env.tmp / "ct.nii.gz")
    ref = env.tmp / "nope.nii.gz"
    return Bad(["view", str(image), "--ref", str(ref), "--port", "0"], (str(ref),), (image,))


@pytest.mark.parametrize("setup", **table("view"))
def test_view(setup, env: Env, capsys: pytest.CaptureFixture[str], no_serving: None) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)
