"""The model registry: versions numbered without gaps or clashes, aliases that promote and roll back, packages
checked on the way in, and no half version after a crash or a race."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vesalius.errors import VesaliusError
from vesalius.runtime.package import MANIFEST, Package, write_package
from vesalius.serving import registry as registry_module
from vesalius.serving.commands_models import models_app
from vesalius.serving.registry import NotInRegistry, Registry, _metrics, parse_version

SEGMENTATION_CARD = {
    "validation": {
        "metric": "Dice",
        "cases": 4,
        "per_class": {"organ": {"mean": 0.9, "ci95": [0.8, 1.0]}, "lesion": {"mean": 0.7, "ci95": [0.5, 0.9]}},
    }
}


def _export(trained, folder: Path, output: Path) -> Path:  # type: ignore[no-untyped-def]
    from tests.helpers import write_package as write_run
    from vesalius.deploy.export import export_model
    from vesalius.inference.model import build_trained_network

    run = write_run(folder / "fold_0", trained, {"train": [], "val": []})
    run.save_checkpoint("final", {"model": build_trained_network(trained).state_dict()})
    return export_model(run.root, output)


def _variant(package: Path, output: Path, card: dict | None = None, *, as_folder: bool = False) -> Path:
    """``package`` written again with ``card`` merged into its model card: other bytes, the same network."""
    with Package(package) as source:
        members = {m: source.read(m) for m in source.members}
        members["model_card.json"] = json.dumps({**source.json("model_card.json"), **(card or {})}).encode()
    return write_package(members, output, as_folder=as_folder)


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained tiny models exported once: ``seg`` (3D U-Net, no validation), ``seg_validated`` (its card with
    Dice figures), ``seg_folder`` (a third variant, as a folder) and ``cls`` (a 2D classifier)."""
    from tests.helpers import trained_classification, trained_segmentation

    root = tmp_path_factory.mktemp("packages")
    trained = trained_segmentation(
        patch_size=[8, 8, 8], spacing=[1.0, 1.0, 2.0], strides=[[1, 1, 1], [2, 2, 2]], kernels=[[3, 3, 3]] * 2,
        features=[4, 8],
    )  # fmt: skip
    seg = _export(trained, root / "seg_run", root / "seg.vpkg")
    classifier = trained_classification({0: "absent", 1: "present"}, side=32)
    return {
        "seg": seg,
        "seg_validated": _variant(seg, root / "seg_validated.vpkg", SEGMENTATION_CARD),
        "seg_folder": _variant(seg, root / "seg_folder", {"intended_use": "a folder"}, as_folder=True),
        "cls": _export(classifier, root / "cls_run", root / "cls.vpkg"),
    }


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "serving" / "registry")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(error: pytest.ExceptionInfo[VesaliusError]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_add_numbers_versions_and_records_the_package(registry, packages):
    assert registry.stamp() == (0, 0)
    assert registry.models() == []
    first = registry.add(packages["seg"], "hippocampus")
    second = registry.add(packages["seg_validated"], "hippocampus")
    assert (first.version, first.number, second.version, second.number) == ("v1", 1, "v2", 2)
    assert first.path == registry.root / "hippocampus" / "v1.vpkg"
    assert first.sha256 == _sha256(first.path) == _sha256(packages["seg"])
    assert second.sha256 == _sha256(second.path) != first.sha256
    assert first.size_bytes == first.path.stat().st_size
    assert first.task == "segmentation"
    assert first.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert first.metrics is None
    assert second.metrics is not None
    assert second.metrics["dice"] == {"organ": 0.9, "lesion": 0.7}
    assert second.metrics["mean_dice"] == pytest.approx(0.8)
    assert first.source == str(packages["seg"])
    assert first.created.endswith("+00:00")
    assert registry.stamp() != (0, 0)
    model = registry.get("hippocampus")
    assert model.versions == (first, second)
    assert model.aliases == {}
    assert [m.name for m in registry.models()] == ["hippocampus"]
    assert json.loads(json.dumps(first.to_json()))["labels"] == {"0": "background", "1": "organ", "2": "lesion"}


def test_a_classifier_and_a_folder_package(registry, packages):
    classifier = registry.add(packages["cls"], "chest")
    assert (classifier.task, classifier.labels) == ("classification", ["absent", "present"])
    folder = registry.add(packages["seg_folder"], "hippocampus")
    assert folder.path.is_file() and folder.path.suffix == ".vpkg"
    with Package(folder.path) as stored, Package(packages["seg_folder"]) as source:
        assert stored.members == source.members
    with zipfile.ZipFile(folder.path) as archive:
        assert archive.read(MANIFEST) == (packages["seg_folder"] / MANIFEST).read_bytes()
    with pytest.raises(VesaliusError, match="already hippocampus v1"):  # the same folder zips to the same bytes
        registry.add(packages["seg_folder"], "hippocampus")


def test_the_same_package_twice_is_refused_naming_the_version(registry, packages):
    registry.add(packages["seg"], "hippocampus")
    with pytest.raises(VesaliusError) as error:
        registry.add(packages["seg"], "hippocampus")
    assert "already hippocampus v1" in _one_line(error)
    assert "promote hippocampus v1" in str(error.value)
    assert len(registry.get("hippocampus").versions) == 1
    assert sorted(p.name for p in (registry.root / "hippocampus").iterdir()) == ["v1.vpkg"]
    assert registry.add(packages["seg"], "other").version == "v1"  # another name may hold it


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../up", "a b", "x" * 65])
def test_invalid_names_are_refused(registry, packages, name):
    with pytest.raises(VesaliusError, match="invalid model name") as error:
        registry.add(packages["seg"], name)
    _one_line(error)
    assert not registry.root.exists()


def test_a_damaged_package_is_refused_and_leaves_nothing(registry, packages, tmp_path):
    registry.add(packages["seg"], "hippocampus")
    before = registry.index.read_bytes()
    damaged = tmp_path / "damaged.vpkg"
    data = packages["seg_validated"].read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    for bad in (damaged, tmp_path / "missing.vpkg"):
        with pytest.raises(VesaliusError) as error:
            registry.add(bad, "hippocampus")
        assert _one_line(error).startswith(f"{bad}: ")
    assert registry.index.read_bytes() == before
    assert sorted(p.name for p in (registry.root / "hippocampus").iterdir()) == ["v1.vpkg"]


def test_promote_resolve_and_rollback(registry, packages):
    v1 = registry.add(packages["seg"], "hippocampus")
    v2 = registry.add(packages["seg_validated"], "hippocampus")
    v3 = registry.add(packages["seg_folder"], "hippocampus")
    assert registry.resolve("hippocampus") == v3  # no production alias: the latest
    assert registry.resolve("hippocampus", "v1") == registry.resolve("hippocampus", "1") == v1
    assert registry.promote("hippocampus", "1", actor="ana") == v1
    assert registry.resolve("hippocampus") == v1
    registry.promote("hippocampus", "v2")
    registry.promote("hippocampus", "v2")  # already there: no change, no history
    registry.promote("hippocampus", "v3", alias="staging")
    assert registry.resolve("hippocampus") == v2
    assert registry.resolve("hippocampus", "staging") == v3
    model = registry.get("hippocampus")
    assert model.aliases == {"production": "v2", "staging": "v3"}
    assert model.aliases_of("v3") == ["staging"]
    history = [(e["action"], e["version"], e["actor"]) for e in model.alias_history["production"]]
    assert history == [("promote", "v1", "ana"), ("promote", "v2", None)]
    registry.promote("hippocampus", "v3")
    assert registry.rollback("hippocampus") == v2
    assert registry.rollback("hippocampus") == v1  # successive rollbacks go further back
    assert registry.resolve("hippocampus") == v1
    with pytest.raises(VesaliusError, match="pointed only at v1: nothing to roll back to") as error:
        registry.rollback("hippocampus")
    _one_line(error)
    with pytest.raises(VesaliusError, match="pointed only at v3"):
        registry.rollback("hippocampus", alias="staging")
    actions = [e["action"] for e in registry.get("hippocampus").alias_history["production"]]
    assert actions == ["promote", "promote", "promote", "rollback", "rollback"]


def test_unknown_names_versions_and_aliases_say_what_exists(registry, packages):
    with pytest.raises(NotInRegistry, match="no model 'hippocampus' in the registry \\(no models\\)"):
        registry.resolve("hippocampus")
    registry.add(packages["seg"], "hippocampus")
    registry.promote("hippocampus", "v1")
    cases = {
        ("nope", None): "no model 'nope' in the registry (models: hippocampus)",
        ("hippocampus", "v7"): "hippocampus has no version 'v7' (versions: v1)",
        ("hippocampus", "canary"): "hippocampus has no alias or version 'canary' (aliases: production; versions: v1)",
    }
    for (name, ref), message in cases.items():
        with pytest.raises(NotInRegistry) as error:  # the service answers 404
            registry.resolve(name, ref)
        assert message in _one_line(error)
    with pytest.raises(NotInRegistry, match="no version 'v9'"):
        registry.promote("hippocampus", "v9")
    with pytest.raises(NotInRegistry, match="no version 'production'"):
        registry.promote("hippocampus", "production", alias="staging")
    with pytest.raises(NotInRegistry, match="has no alias 'staging' \\(aliases: production\\)"):
        registry.rollback("hippocampus", alias="staging")
    for alias in ("Production", "v2", "2x" * 20, ""):
        with pytest.raises(VesaliusError, match="invalid alias"):
            registry.promote("hippocampus", "v1", alias=alias)


def test_parse_version():
    assert [parse_version(r) for r in ("v3", "3", "v12", "v0", "production", "3.1")] == [3, 3, 12, None, None, None]


def test_metrics_from_the_model_card():
    assert _metrics(None) is None
    assert _metrics({"validation": None}) is None
    classification = {"validation": {"folds": {"fold_0": {"accuracy": 0.8, "auc": 0.9}, "fold_1": {"accuracy": 0.6}}}}
    metrics = _metrics(classification)
    assert metrics is not None
    assert metrics["accuracy"] == pytest.approx(0.7)
    assert (metrics["auc"], metrics["folds"], metrics["f1_macro"]) == (0.9, 2, None)


def test_concurrent_adds_get_distinct_versions(registry, packages):
    results: list[str] = []
    barrier = threading.Barrier(2)

    def add(package: Path) -> None:
        barrier.wait()
        results.append(Registry(registry.root).add(package, "hippocampus").version)

    threads = [threading.Thread(target=add, args=(packages[k],)) for k in ("seg", "seg_validated")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["v1", "v2"]
    versions = registry.get("hippocampus").versions
    assert {v.sha256 for v in versions} == {_sha256(packages["seg"]), _sha256(packages["seg_validated"])}
    assert registry.verify("hippocampus") == []


def test_a_crash_while_copying_leaves_no_file_and_no_entry(registry, packages, monkeypatch):
    registry.add(packages["seg"], "hippocampus")
    before = registry.index.read_bytes()

    def half_copy(source: Path, target: Path) -> None:
        target.write_bytes(source.read_bytes()[:1000])
        raise OSError("killed")

    monkeypatch.setattr(registry_module, "_store", half_copy)
    with pytest.raises(OSError, match="killed"):
        registry.add(packages["seg_validated"], "hippocampus")
    assert registry.index.read_bytes() == before
    assert sorted(p.name for p in (registry.root / "hippocampus").iterdir()) == ["v1.vpkg"]


def test_leftovers_of_a_killed_add_are_cleared_and_never_reused(registry, packages):
    registry.add(packages["seg"], "hippocampus")
    folder = registry.root / "hippocampus"
    (folder / ".tmp-killed.vpkg").write_bytes(b"half")  # killed while copying
    shutil.copyfile(packages["cls"], folder / "v2.vpkg")  # killed after the rename, before registry.json
    added = registry.add(packages["seg_validated"], "hippocampus")
    assert added.version == "v3"
    assert sorted(p.name for p in folder.iterdir()) == ["v1.vpkg", "v2.vpkg", "v3.vpkg"]
    assert [v.version for v in registry.get("hippocampus").versions] == ["v1", "v3"]


def test_verify_reports_missing_and_changed_files(registry, packages):
    v1 = registry.add(packages["seg"], "hippocampus")
    v2 = registry.add(packages["seg_validated"], "hippocampus")
    assert registry.verify("hippocampus") == []
    v1.path.unlink()
    v2.path.write_bytes(v2.path.read_bytes() + b"x")
    problems = registry.verify("hippocampus")
    assert len(problems) == 2
    assert "v1" in problems[0] and "missing" in problems[0]
    assert "v2" in problems[1] and "SHA-256" in problems[1]


def test_a_damaged_registry_file_is_one_line(registry):
    registry.root.mkdir(parents=True)
    registry.index.write_text("{not json")
    with pytest.raises(VesaliusError, match="unreadable registry") as error:
        registry.models()
    _one_line(error)


def test_cli_add_list_promote_rollback(tmp_path, packages):
    runner = CliRunner()
    ws = ["-w", str(tmp_path / "ws")]

    def run(*args: str) -> str:
        result = runner.invoke(models_app, [*args, *ws], env={"COLUMNS": "200"})  # a wide table, not wrapped
        assert result.exit_code == 0, result.output
        return result.output

    sha = _sha256(packages["seg"])
    text = run("add", str(packages["seg"]), "--name", "hippocampus")
    assert text.strip() == (
        f"hippocampus v1 (sha256 {sha[:8]}…) added; promote it with: vesalius models promote hippocampus v1"
    )
    run("add", str(packages["seg_validated"]), "--name", "hippocampus")
    assert run("promote", "hippocampus", "v1").strip() == "hippocampus production -> v1"
    assert run("promote", "hippocampus", "2").strip() == "hippocampus production -> v2 (was v1)"
    assert run("promote", "hippocampus", "v2", "--alias", "staging").strip() == "hippocampus staging -> v2"
    listed = json.loads(run("list", "--json"))
    assert [m["name"] for m in listed] == ["hippocampus"]
    assert listed[0]["aliases"] == {"production": "v2", "staging": "v2"}
    assert [v["sha256"] for v in listed[0]["versions"]] == [sha, _sha256(packages["seg_validated"])]
    assert json.loads(run("list", "hippocampus", "--json"))[0]["name"] == "hippocampus"
    table = run("list")
    assert "hippocampus" in table and "v2" in table and "Dice 0.800" in table
    assert run("rollback", "hippocampus").strip() == "hippocampus production -> v1 (was v2)"
    registry = Registry(tmp_path / "ws" / "serving" / "registry")
    assert registry.resolve("hippocampus").version == "v1"
    result = runner.invoke(models_app, ["rollback", "hippocampus", *ws])
    assert result.exit_code != 0
    assert isinstance(result.exception, VesaliusError)
    assert "nothing to roll back to" in str(result.exception)


def test_cli_list_of_an_empty_registry_and_the_default_workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("VESALIUS_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(models_app, ["list"])
    assert result.exit_code == 0
    assert "no model registered" in result.output
    assert json.loads(CliRunner().invoke(models_app, ["list", "--json"]).output) == []


def test_the_registry_does_not_import_torch():
    code = (
        "import sys, vesalius.serving.registry, vesalius.serving.commands_models; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
