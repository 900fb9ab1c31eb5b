"""The bad-input corpus, data side: ``import``, ``verify``, ``datasets``, ``plan``, ``preprocess``, ``train``.

Every case builds one bad input in ``tmp_path`` and expects a refusal: exit code 2, one ``error:`` line on stderr
naming the file or option with a remedy, no traceback, no internal error, every input file byte for byte as it
was, and nothing written where the refusal should come first. The results side (``predict`` ... ``view``) is in
``test_bad_inputs_results.py``; the machinery in ``corpus.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_classes
from tests.helpers import synthetic_npz
from tests.reliability import test_bad_inputs_results
from tests.reliability.corpus import (
    HUGE_HEADER,
    NEGATIVE_SPACING,
    TABLES,
    ZERO_SPACING,
    Bad,
    Env,
    assert_refused,
    case,
    edit_json,
    empty,
    folder,
    garbage,
    imported,
    msd,
    nrrd,
    planned_copy,
    png,
    table,
    truncated,
)
from vesalius.io import write_image

# ---------------------------------------------------------------------------------------------------------------
# import SRC NAME: the source is only read; a refused import leaves no data set behind


def _import(env: Env, source: Path, *options: str, name: str = "x", names: tuple[str, ...] = ()) -> Bad:
    ws = env.tmp / "ws"
    args = ["import", str(source), name, "-w", str(ws), *options]
    return Bad(args, names or (str(source),), (source,), (ws / "datasets" / name,))


def _msd_json(env: Env, text: str) -> Bad:
    src = msd(env)
    (src / "dataset.json").write_text(text)
    return _import(env, src, names=(str(src / "dataset.json"),))


def _msd_edit(env: Env, edit) -> Bad:  # type: ignore[no-untyped-def]
    src = msd(env)
    edit_json(src / "dataset.json", edit)
    return _import(env, src, names=(str(src / "dataset.json"),))


def _msd_broken_case(env: Env, breaker) -> Bad:  # type: ignore[no-untyped-def]
    src = msd(env)
    target = src / "imagesTr" / "case_01.nii.gz"
    breaker(target)
    return _import(env, src, names=(str(target),))


def _pairs_nrrd(env: Env, fields: list[str]) -> Bad:
    src = env.tmp / "src"
    for i in range(2):
        write_image(volume_for_pairs(i), src / "images" / f"good{i}.nrrd")
        write_image(volume_for_pairs(i, label=True), src / "labels" / f"good{i}.nrrd")
    bad = nrrd(src / "images" / "bad.nrrd", fields)
    nrrd(src / "labels" / "bad.nrrd", fields)
    return _import(env, src, "--layout", "pairs", names=(str(bad),))


def volume_for_pairs(seed: int, label: bool = False):  # type: ignore[no-untyped-def]
    from tests.conftest import label_volume, volume

    return label_volume(seed, (0, 1)) if label else volume(seed)


def _csv(env: Env, text: str) -> Bad:
    src = env.tmp / "src"
    for name in ("a", "b", "c"):
        png(src / "pics" / f"{name}.png", seed=ord(name))
    csv = src / "labels.csv"
    csv.write_text(text)
    return _import(env, csv, names=(str(csv),))


@case("import", "missing-source")
def _(env: Env) -> Bad:
    return _import(env, env.tmp / "no_such_folder")


@case("import", "empty-source-folder")
def _(env: Env) -> Bad:
    return _import(env, folder(env.tmp / "empty"))


@case("import", "source-is-a-text-file")
def _(env: Env) -> Bad:
    notes = env.tmp / "notes.txt"
    notes.write_text("not a data set\n")
    return _import(env, notes)


@case("import", "npz-empty-file")
def _(env: Env) -> Bad:
    return _import(env, empty(env.tmp / "set.npz"))


@case("import", "npz-garbage-bytes")
def _(env: Env) -> Bad:
    return _import(env, garbage(env.tmp / "set.npz"))


@case("import", "npz-truncated")
def _(env: Env) -> Bad:
    return _import(env, truncated(synthetic_npz(env.tmp / "set.npz", {"train": 6, "val": 2})))


@case("import", "npz-without-image-arrays")
def _(env: Env) -> Bad:
    path = env.tmp / "set.npz"
    np.savez(path, foo=np.zeros(3), bar=np.ones(2))
    return _import(env, path)


@case("import", "msd-dataset-json-invalid")
def _(env: Env) -> Bad:
    return _msd_json(env, '{"name": "Tiny", "labels": {')


@case("import", "msd-dataset-json-empty")
def _(env: Env) -> Bad:
    return _msd_json(env, "")


@case("import", "msd-dataset-json-array")
def _(env: Env) -> Bad:
    return _msd_json(env, "[]")


@case("import", "msd-labels-a-list")
def _(env: Env) -> Bad:
    return _msd_edit(env, lambda d: d | {"labels": ["background", "liver", "tumour"]})


@case("import", "msd-training-a-string")
def _(env: Env) -> Bad:
    return _msd_edit(env, lambda d: d | {"training": "imagesTr"})


@case("import", "msd-entry-without-label")
def _(env: Env) -> Bad:
    return _msd_edit(env, lambda d: d | {"training": [{"image": e["image"]} for e in d["training"]]})


@case("import", "msd-entry-image-missing")
def _(env: Env) -> Bad:
    src = msd(env)
    edit_json(
        src / "dataset.json",
        lambda d: (
            d
            | {"training": [*d["training"], {"image": "./imagesTr/ghost.nii.gz", "label": "./labelsTr/case_00.nii.gz"}]}
        ),
    )
    return _import(env, src, names=("ghost.nii.gz",))


@case("import", "msd-image-truncated")
def _(env: Env) -> Bad:
    return _msd_broken_case(env, truncated)


@case("import", "msd-image-garbage-bytes")
def _(env: Env) -> Bad:
    return _msd_broken_case(env, garbage)


@case("import", "msd-image-empty-file")
def _(env: Env) -> Bad:
    return _msd_broken_case(env, empty)


@case("import", "msd-label-is-a-directory")
def _(env: Env) -> Bad:
    src = msd(env)
    label = src / "labelsTr" / "case_01.nii.gz"
    label.unlink()
    label.mkdir()
    return _import(env, src, names=(str(label),))


@case("import", "pairs-zero-spacing-nrrd")
def _(env: Env) -> Bad:
    return _pairs_nrrd(env, ZERO_SPACING)


@case("import", "pairs-negative-spacing-nrrd")
def _(env: Env) -> Bad:
    return _pairs_nrrd(env, NEGATIVE_SPACING)


@case("import", "pairs-header-claims-1e9-voxels")
def _(env: Env) -> Bad:
    return _pairs_nrrd(env, HUGE_HEADER)


@case("import", "pairs-labels-folder-missing")
def _(env: Env) -> Bad:
    src = env.tmp / "src"
    png(src / "images" / "a.png")
    png(src / "masks" / "a.png", mask=True)
    return _import(env, src, "--layout", "pairs", "--labels", "nowhere", names=("nowhere",))


@case("import", "csv-empty-file")
def _(env: Env) -> Bad:
    return _csv(env, "")


@case("import", "csv-without-image-column")
def _(env: Env) -> Bad:
    return _csv(env, "picture,label\npics/a.png,nevus\npics/b.png,melanoma\npics/c.png,nevus\n")


@case("import", "csv-case-id-escapes-upwards")
def _(env: Env) -> Bad:
    return _csv(env, "image,label,case_id\npics/a.png,nevus,../../x\npics/b.png,melanoma,b\npics/c.png,nevus,c\n")


@case("import", "csv-case-id-with-subfolders")
def _(env: Env) -> Bad:
    return _csv(env, "image,label,case_id\npics/a.png,nevus,sub/dir/x\npics/b.png,melanoma,b\npics/c.png,nevus,c\n")


@case("import", "name-with-slash")
def _(env: Env) -> Bad:
    return _import(env, msd(env), name="a/b", names=("a/b",))


@case("import", "name-dotdot")
def _(env: Env) -> Bad:
    return _import(env, msd(env), name="..", names=("'..'",))


@case("import", "workspace-inside-the-source")
def _(env: Env) -> Bad:
    src = msd(env)
    bad = Bad(["import", str(src), "x", "-w", str(src / "ws")], (str(src / "ws"),), (src,), (src / "ws",))
    return bad


@case("import", "workspace-is-a-file")
def _(env: Env) -> Bad:
    src = msd(env)
    ws = env.tmp / "ws.txt"
    ws.write_text("a file\n")
    return Bad(["import", str(src), "x", "-w", str(ws)], (str(ws),), (src, ws))


@case("import", "label-threshold-negative")
def _(env: Env) -> Bad:
    src = env.tmp / "src"
    png(src / "images" / "a.png")
    png(src / "masks" / "a.png", mask=True)
    return _import(env, src, "--label-threshold", "-5", names=("--label-threshold",))


@case("import", "modality-count-mismatch")
def _(env: Env) -> Bad:
    return _import(env, msd(env), "--modality", "CT,MR,PET", names=("--modality",))


@case("import", "targets-unknown")
def _(env: Env) -> Bad:
    return _import(env, write_classes(env.tmp / "src"), "--targets", "foo", names=("foo",))


@case("import", "layout-msd-on-class-folders")
def _(env: Env) -> Bad:
    return _import(env, write_classes(env.tmp / "src"), "--layout", "msd")


@pytest.mark.parametrize("setup", **table("import"))
def test_import(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# verify NAME and datasets: the workspace's data sets are only read


def _verify_broken(env: Env, breaker) -> Bad:  # type: ignore[no-untyped-def]
    ws = imported(env)
    meta = ws / "datasets" / "tiny" / "dataset.json"
    breaker(meta)
    return Bad(["verify", "tiny", "-w", str(ws)], (str(meta),), (ws / "datasets",))


@case("verify", "unknown-data-set")
def _(env: Env) -> Bad:
    ws = imported(env)
    return Bad(["verify", "ghost", "-w", str(ws)], (str(ws / "datasets" / "ghost"),), (ws,))


@case("verify", "dataset-json-invalid")
def _(env: Env) -> Bad:
    return _verify_broken(env, lambda p: p.write_text('{"cases": ['))


@case("verify", "dataset-json-empty")
def _(env: Env) -> Bad:
    return _verify_broken(env, empty)


@case("verify", "dataset-json-array")
def _(env: Env) -> Bad:
    return _verify_broken(env, lambda p: p.write_text("[]"))


@case("verify", "dataset-json-labels-a-list")
def _(env: Env) -> Bad:
    return _verify_broken(env, lambda p: edit_json(p, lambda d: d | {"labels": ["background", "liver"]}))


@case("verify", "dataset-json-cases-a-string")
def _(env: Env) -> Bad:
    return _verify_broken(env, lambda p: edit_json(p, lambda d: d | {"cases": "imagesTr"}))


@case("verify", "dataset-json-case-without-case-id")
def _(env: Env) -> Bad:
    strip = lambda d: d | {"cases": [{k: v for k, v in c.items() if k != "case_id"} for c in d["cases"]]}  # noqa: E731
    return _verify_broken(env, lambda p: edit_json(p, strip))


@case("verify", "dataset-json-missing")
def _(env: Env) -> Bad:
    bad = _verify_broken(env, lambda p: p.unlink())
    return Bad(bad.args, (str(env.tmp / "ws" / "datasets" / "tiny"), "dataset.json"), bad.inputs)


@case("verify", "dataset-folder-is-a-file")
def _(env: Env) -> Bad:
    ws = imported(env)
    ghost = ws / "datasets" / "ghost"
    ghost.write_text("a file\n")
    return Bad(["verify", "ghost", "-w", str(ws)], (str(ghost),), (ws,))


@case("verify", "workspace-is-a-file")
def _(env: Env) -> Bad:
    ws = env.tmp / "ws.txt"
    ws.write_text("a file\n")
    return Bad(["verify", "tiny", "-w", str(ws)], (str(ws),), (ws,))


@case("verify", "name-dotdot")
def _(env: Env) -> Bad:
    ws = imported(env)
    return Bad(["verify", "..", "-w", str(ws)], ("'..'",), (ws,))


@case("verify", "name-with-slash")
def _(env: Env) -> Bad:
    ws = imported(env)
    return Bad(["verify", "tiny/../tiny", "-w", str(ws)], ("tiny/../tiny",), (ws,))


@pytest.mark.parametrize("setup", **table("verify"))
def test_verify(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


def _datasets_one_broken(env: Env, text: str) -> Bad:
    import vesalius

    ws = imported(env, "good")
    vesalius.import_dataset(env.tmp / "src", "bad", workspace=ws)
    meta = ws / "datasets" / "bad" / "dataset.json"
    meta.write_text(text)
    return Bad(["datasets", "-w", str(ws)], (str(meta),), (ws,), listed=("good",))


@case("datasets", "workspace-is-a-file")
def _(env: Env) -> Bad:
    ws = env.tmp / "ws.txt"
    ws.write_text("a file\n")
    return Bad(["datasets", "-w", str(ws)], (str(ws),), (ws,))


@case("datasets", "one-dataset-json-invalid-among-good")
def _(env: Env) -> Bad:
    return _datasets_one_broken(env, "{")


@case("datasets", "one-dataset-json-array-among-good")
def _(env: Env) -> Bad:
    return _datasets_one_broken(env, "[1, 2]")


@case("datasets", "one-dataset-json-without-fields-among-good")
def _(env: Env) -> Bad:
    return _datasets_one_broken(env, "{}")


@pytest.mark.parametrize("setup", **table("datasets"))
def test_datasets(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# plan NAME: refused options write no plan


def _plan(env: Env, *options: str, names: tuple[str, ...], ws: Path | None = None, name: str = "tiny") -> Bad:
    ws = ws or imported(env)
    return Bad(["plan", name, "-w", str(ws), *options], names, (ws / "datasets",), (ws / "preprocessed",))


def _plan_broken(env: Env, breaker, relative: str) -> Bad:  # type: ignore[no-untyped-def]
    ws = imported(env)
    target = ws / "datasets" / "tiny" / relative
    breaker(target)
    return _plan(env, names=(str(target),), ws=ws)


@case("plan", "unknown-data-set")
def _(env: Env) -> Bad:
    return _plan(env, names=("ghost",), name="ghost")


@case("plan", "time-budget-negative")
def _(env: Env) -> Bad:
    return _plan(env, "--time-budget", "-5m", names=("-5m",))


@case("plan", "time-budget-abc")
def _(env: Env) -> Bad:
    return _plan(env, "--time-budget", "abc", names=("abc",))


@case("plan", "time-budget-zero")
def _(env: Env) -> Bad:
    return _plan(env, "--time-budget", "0s", names=("0s",))


@case("plan", "time-budget-nan")
def _(env: Env) -> Bad:
    return _plan(env, "--time-budget", "nan", names=("nan",))


@case("plan", "memory-gb-negative")
def _(env: Env) -> Bad:
    return _plan(env, "--memory-gb", "-1", names=("--memory-gb",))


@case("plan", "memory-gb-zero")
def _(env: Env) -> Bad:
    return _plan(env, "--memory-gb", "0", names=("--memory-gb",))


@case("plan", "device-tpu")
def _(env: Env) -> Bad:
    return _plan(env, "--device", "tpu", names=("tpu",))


@case("plan", "dataset-json-invalid")
def _(env: Env) -> Bad:
    return _plan_broken(env, lambda p: p.write_text("{"), "dataset.json")


@case("plan", "dataset-json-labels-a-list")
def _(env: Env) -> Bad:
    return _plan_broken(env, lambda p: edit_json(p, lambda d: d | {"labels": ["a", "b"]}), "dataset.json")


@case("plan", "case-image-truncated")
def _(env: Env) -> Bad:
    return _plan_broken(env, truncated, "imagesTr/case_01_0000.nii.gz")


@case("plan", "case-image-garbage-bytes")
def _(env: Env) -> Bad:
    return _plan_broken(env, garbage, "imagesTr/case_01_0000.nii.gz")


@case("plan", "case-label-missing")
def _(env: Env) -> Bad:
    return _plan_broken(env, lambda p: p.unlink(), "labelsTr/case_01.nii.gz")


@case("plan", "one-by-one-pixel-images")
def _(env: Env) -> Bad:
    """A 1x1 image imported and planned: whichever step refuses it, it says so clearly."""
    import vesalius
    from vesalius.errors import VesaliusError

    src, ws = env.tmp / "src", env.tmp / "ws"
    for i in range(3):
        png(src / "images" / f"dot{i}.png", seed=i, shape=(1, 1))
        png(src / "masks" / f"dot{i}.png", seed=i, shape=(1, 1), mask=True)
    try:
        vesalius.import_dataset(src, "dots", workspace=ws)
    except VesaliusError:  # refused at import already: then the import must be the clear refusal
        return _import(env, src, name="dots")
    return Bad(["plan", "dots", "-w", str(ws)], ("dots",), (src, ws / "datasets"), (ws / "preprocessed",))


@case("plan", "name-dotdot")
def _(env: Env) -> Bad:
    return _plan(env, names=("'..'",), name="..")


@pytest.mark.parametrize("setup", **table("plan"))
def test_plan(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# preprocess NAME: plan.json edited by hand is refused in one line naming it, and never rewritten


def _preprocess(env: Env, *options: str, names: tuple[str, ...], ws: Path | None = None, name: str = "ph") -> Bad:
    ws = ws or planned_copy(env)
    return Bad(["preprocess", name, "-w", str(ws), *options], names, _plan_inputs(ws))


def _plan_inputs(ws: Path) -> tuple[Path, ...]:
    """The inputs of preprocess and train: the data set and its plan files (not the cache they write)."""
    return (ws / "datasets", *(ws / "preprocessed" / "ph" / f for f in ("plan.json", "fingerprint.json")))


def _plan_edited(env: Env, command: str, edit) -> Bad:  # type: ignore[no-untyped-def]
    ws = planned_copy(env)
    path = ws / "preprocessed" / "ph" / "plan.json"
    edit(path)
    if command == "preprocess":
        shutil.rmtree(ws / "preprocessed" / "ph" / "3d")
        return _preprocess(env, names=(str(path),), ws=ws)
    return _train(env, names=(str(path),), ws=ws)


def _set_patch(value: object):  # type: ignore[no-untyped-def]
    def edit(path: Path) -> None:
        plan = json.loads(path.read_text())
        plan["configurations"]["3d"]["patch_size"] = value
        path.write_text(json.dumps(plan))

    return edit


def _add_key(path: Path) -> None:
    plan = json.loads(path.read_text())
    plan["configurations"]["3d"]["patch_sise"] = [32, 32, 32]
    path.write_text(json.dumps(plan))


@case("preprocess", "config-4d")
def _(env: Env) -> Bad:
    return _preprocess(env, "--config", "4d", names=("4d",))


@case("preprocess", "workers-negative")
def _(env: Env) -> Bad:
    return _preprocess(env, "--workers", "-1", names=("--workers",))


@case("preprocess", "unknown-data-set")
def _(env: Env) -> Bad:
    return _preprocess(env, names=("ghost",), name="ghost")


@case("preprocess", "plan-json-invalid")
def _(env: Env) -> Bad:
    return _plan_edited(env, "preprocess", lambda p: p.write_text('{"configurations": {'))


@case("preprocess", "plan-json-array")
def _(env: Env) -> Bad:
    return _plan_edited(env, "preprocess", lambda p: p.write_text("[]"))


@case("preprocess", "plan-json-misspelt-key")
def _(env: Env) -> Bad:
    return _plan_edited(env, "preprocess", _add_key)


@case("preprocess", "plan-json-negative-patch")
def _(env: Env) -> Bad:
    return _plan_edited(env, "preprocess", _set_patch([-32, 32, 32]))


@case("preprocess", "plan-json-patch-a-string")
def _(env: Env) -> Bad:
    return _plan_edited(env, "preprocess", _set_patch("32x32x32"))


@case("preprocess", "plan-json-spacing-zero")
def _(env: Env) -> Bad:
    def edit(path: Path) -> None:
        plan = json.loads(path.read_text())
        plan["configurations"]["3d"]["spacing"] = [0.0, 1.0, 1.0]
        path.write_text(json.dumps(plan))

    return _plan_edited(env, "preprocess", edit)


@case("preprocess", "case-image-garbage-bytes")
def _(env: Env) -> Bad:
    ws = planned_copy(env)
    shutil.rmtree(ws / "preprocessed" / "ph" / "3d")
    image = garbage(ws / "datasets" / "ph" / "imagesTr" / "phantom_003_0000.nii.gz")
    return _preprocess(env, "--workers", "1", names=(str(image),), ws=ws)


@pytest.mark.parametrize("setup", **table("preprocess"))
def test_preprocess(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------
# train NAME: every bad option is refused before training starts (no run folder)


def _train(env: Env, *options: str, names: tuple[str, ...], ws: Path | None = None, name: str = "ph") -> Bad:
    ws = ws or planned_copy(env)
    args = ["train", name, "-w", str(ws), "--epochs", "1", "--iters-per-epoch", "1", *options]
    return Bad(args, names, _plan_inputs(ws), (ws / "runs",))


TRAIN_OPTIONS = {
    "lr-negative": (["--lr", "-1"], ("--lr",)),
    "lr-zero": (["--lr", "0"], ("--lr",)),
    "lr-nan": (["--lr", "nan"], ("--lr",)),
    "epochs-zero": (["--epochs", "0"], ("--epochs",)),
    "epochs-negative": (["--epochs", "-3"], ("--epochs",)),
    "iters-per-epoch-zero": (["--iters-per-epoch", "0"], ("--iters-per-epoch",)),
    "batch-size-zero": (["--batch-size", "0"], ("--batch-size",)),
    "time-budget-negative": (["--time-budget", "-5m"], ("-5m",)),
    "time-budget-abc": (["--time-budget", "abc"], ("abc",)),
    "fold-9": (["--fold", "9"], ("fold", "9")),
    "fold-abc": (["--fold", "abc"], ("fold", "abc")),
    "precision-int8": (["--precision", "int8"], ("int8",)),
    "optimizer-unknown": (["--optimizer", "adam2"], ("adam2",)),
    "schedule-unknown": (["--schedule", "linear"], ("linear",)),
    "config-4d": (["--config", "4d"], ("4d",)),
    "device-tpu": (["--device", "tpu"], ("tpu",)),
    "task-unknown": (["--task", "detection"], ("detection",)),
    "network-on-a-segmentation-set": (["--network", "resnet18"], ("network",)),
    "early-stopping-on-a-segmentation-set": (["--early-stopping", "3"], ("early",)),
    "resume-without-a-run": (["--resume"], ("--resume",)),
}

for _id, (_options, _names) in TRAIN_OPTIONS.items():
    case("train", _id)(lambda env, o=_options, n=_names: _train(env, *o, names=n))


@case("train", "plan-json-invalid")
def _(env: Env) -> Bad:
    return _plan_edited(env, "train", lambda p: p.write_text("{"))


@case("train", "plan-json-misspelt-key")
def _(env: Env) -> Bad:
    return _plan_edited(env, "train", _add_key)


@case("train", "unknown-data-set")
def _(env: Env) -> Bad:
    return _train(env, names=("ghost",), name="ghost")


@case("train", "pretrained-file-missing")
def _(env: Env) -> Bad:
    return _classification_train(env, "--pretrained", str(env.tmp / "nope.pt"), names=(str(env.tmp / "nope.pt"),))


@case("train", "pretrained-garbage-bytes")
def _(env: Env) -> Bad:
    weights = garbage(env.tmp / "weights.pt")
    return _classification_train(env, "--pretrained", str(weights), names=(str(weights),))


@case("train", "balance-unknown")
def _(env: Env) -> Bad:
    return _classification_train(env, "--balance", "oversample", names=("oversample",))


@case("train", "early-stopping-negative")
def _(env: Env) -> Bad:
    return _classification_train(env, "--early-stopping", "-2", names=("--early-stopping",))


def _classification_train(env: Env, *options: str, names: tuple[str, ...]) -> Bad:
    import vesalius
    from vesalius.data.synthetic import write_classification_dataset

    ws = env.tmp / "ws"
    vesalius.import_dataset(write_classification_dataset(env.tmp / "src", 20, seed=1), "cls", workspace=ws)
    args = ["train", "cls", "-w", str(ws), "--epochs", "1", *options]
    return Bad(args, names, (ws / "datasets", env.tmp / "src"), (ws / "runs",))


@pytest.mark.parametrize("setup", **table("train"))
def test_train(setup, env: Env, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert_refused(setup(env), capsys)


# ---------------------------------------------------------------------------------------------------------------


def test_the_corpus_keeps_its_size() -> None:
    """At least 70 kinds of bad input across the twelve commands: the corpus cannot silently shrink."""
    assert test_bad_inputs_results.TABLES is TABLES
    commands = {"import", "verify", "datasets", "plan", "preprocess", "train"}
    commands |= {"predict", "evaluate", "measure", "overlay", "report", "view"}
    assert set(TABLES) == commands
    sizes = {command: len(cases) for command, cases in TABLES.items()}
    assert sum(sizes.values()) >= 70, sizes
    assert all(n >= 3 for n in sizes.values()), sizes
