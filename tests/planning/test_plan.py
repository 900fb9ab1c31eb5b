"""The typed plan: a JSON round trip, and a one-line error naming the key of a hand-edited plan's wrong value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import segmentation_plan
from vesalius.cli import main
from vesalius.errors import VesaliusError
from vesalius.io.schema import SchemaError, from_json
from vesalius.planning.plan import ClassificationPlan, Plan, load_any_plan

CONFIGURATIONS = {"3d": {"patch_size": [16, 16, 8], "strides": [[1, 1, 1], [2, 2, 1]], "kernels": [[3, 3, 3]] * 2,
                         "features": [8, 16], "mirror_axes": [0, 1]}}  # fmt: skip


def _plan_json() -> dict:
    return segmentation_plan(CONFIGURATIONS, normalization=({"scheme": "ct", "clip": [-100, 200], "mean": 30,
                                                             "std": 50},)).to_json()  # fmt: skip


def test_a_plan_survives_a_json_round_trip(tmp_path: Path) -> None:
    plan = Plan.from_json(_plan_json())
    assert Plan.load(plan.save(tmp_path / "plan.json")) == plan
    assert isinstance(load_any_plan(tmp_path / "plan.json"), Plan)
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["labels"] == {"0": "background", "1": "a"} and saved["vesalius_plan"] == 1
    assert "low" not in saved["normalization"][0]  # fields left unset are left out of the file
    assert plan.configuration("3d").patch_divisors == (2, 2, 1)


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (lambda p: p["configurations"]["3d"].update(patch_size=[16, "x", 8]), "configurations.3d.patch_size[1]",
         "expected an integer"),
        (lambda p: p["configurations"]["3d"].update(pach_size=[16, 16, 8]), "configurations.3d.pach_size",
         "unknown key"),
        (lambda p: p["configurations"]["3d"].pop("batch_size"), "configurations.3d.batch_size", "missing"),
        (lambda p: p["configurations"]["3d"].update(strides=[[1, 1], [2, 2, 1]]), "configurations.3d.strides",
         "3 values"),
        (lambda p: p["configurations"]["3d"].update(mirror_axes=[3]), "configurations.3d.mirror_axes", "0-2"),
        (lambda p: p["configurations"]["3d"].update(stem="wide"), "configurations.3d.stem", "one of"),
        (lambda p: p["normalization"][0].pop("std"), "normalization[0].std", "needs it"),
        (lambda p: p.update(labels=["background", "a"]), "labels", "expected an object"),
        (lambda p: p.update(channels=["MRI", "CT"]), "normalization", "one entry per channel"),
        (lambda p: p["budget"].update(time_budget_s=-5), "budget.time_budget_s", "positive"),
        (lambda p: p.update(vesalius_plan=99), "vesalius_plan", "newer"),
    ],
)  # fmt: skip
def test_a_wrong_key_or_value_is_named(edit, key: str, problem: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = _plan_json()
    edit(data)
    with pytest.raises(SchemaError) as caught:
        Plan.from_json(data)
    assert caught.value.key == key and problem in caught.value.detail
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(VesaliusError) as error:
        Plan.load(path)
    line = error.value.one_line()
    assert "\n" not in line and str(path) in line and key in line


def test_a_hand_edited_plan_stops_the_command_with_one_line(planned: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(planned, ws, ignore=shutil.ignore_patterns("runs"))
    path = ws / "preprocessed" / "ph" / "plan.json"
    data = json.loads(path.read_text())
    data["configurations"]["3d"]["batch_size"] = "ten"
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["preprocess", "ph", "-w", str(ws)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "configurations.3d.batch_size: expected an integer" in err
    assert str(path) in err.replace("\n", "")


def test_the_plan_of_a_classification_set_is_typed_too(tmp_path: Path) -> None:
    from tests.helpers import trained_classification, write_package

    package = write_package(tmp_path / "run", trained_classification({0: "no", 1: "yes"}), {"train": [], "val": []})
    plan = package.plan
    assert isinstance(plan, ClassificationPlan) and plan.class_names == ["no", "yes"]
    data = plan.to_json()
    data["network"]["name"] = "vgg"
    with pytest.raises(SchemaError, match=r"network\.name"):
        from_json(ClassificationPlan, data)
