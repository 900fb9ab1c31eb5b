"""The package container without torch: members round-trip in a zip and in a folder, and every kind of damage (a
changed, missing or added file, no manifest, a newer format or contract version, not a zip) is refused in one line
that names the package and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vesalius.errors import VesaliusError
from vesalius.io.schema import to_json
from vesalius.planning.plan import Normalization
from vesalius.runtime.contract import Network, SegmentationContract, SlidingWindow
from vesalius.runtime.package import MANIFEST, Package, is_package, write_package


def _contract(**changes: object) -> bytes:
    contract = SegmentationContract(
        name="m",
        dataset="d",
        config="3d",
        channels=("CT",),
        spatial_dims=3,
        normalization=(Normalization("ct", clip=(-100.0, 200.0), mean=40.0, std=60.0),),
        spacing=(1.0, 1.0, 2.0),
        network=Network(("models/fold_0.onnx",), ("models/fold_0.pt2",), "image", "logits", (4, 4, 4), 18),
        window=SlidingWindow((32, 32, 16), 2, 0.5, 0.75, (0, 1, 2), "window_weights.npy", 0.125),
        labels={0: "background", 1: "tumour"},
    )
    data = to_json(contract)
    data.update(changes)
    return json.dumps(data).encode()


MEMBERS = {"vesalius.json": _contract(), "models/fold_0.onnx": b"onnx bytes", "notes/readme.txt": b"hello"}


@pytest.mark.parametrize("as_folder", [False, True])
def test_members_round_trip_and_the_contract_reads(tmp_path: Path, as_folder: bool) -> None:
    path = write_package(MEMBERS, tmp_path / ("m" if as_folder else "m.vpkg"), as_folder=as_folder)
    assert is_package(path)
    with Package(path) as package:
        assert package.read("notes/readme.txt") == b"hello"
        assert set(package.members) == set(MEMBERS)
        assert isinstance(package.contract, SegmentationContract)
        assert package.contract.normalization[0].clip == (-100.0, 200.0)
        assert package.contract.labels == {0: "background", 1: "tumour"}


def _refused(path: Path) -> str:
    with pytest.raises(VesaliusError) as caught:
        Package(path)
    message = caught.value.one_line()
    assert "\n" not in message and str(path) in message
    return message


def test_a_folder_package_with_a_changed_missing_or_added_file_is_refused(tmp_path: Path) -> None:
    folder = write_package(MEMBERS, tmp_path / "m", as_folder=True)
    (folder / "notes" / "readme.txt").write_bytes(b"hellO")
    assert "member 'notes/readme.txt' does not match its SHA-256" in _refused(folder)
    (folder / "notes" / "readme.txt").unlink()
    assert "member 'notes/readme.txt' is missing" in _refused(folder)
    folder = write_package(MEMBERS, tmp_path / "m", as_folder=True)  # replaces the damaged folder
    (folder / "models" / "extra.onnx").write_bytes(b"x")
    assert "member 'models/extra.onnx' is not in the manifest" in _refused(folder)


def test_no_manifest_a_newer_format_and_a_newer_contract_are_refused(tmp_path: Path) -> None:
    folder = write_package(MEMBERS, tmp_path / "m", as_folder=True)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["format_version"] = 2
    (folder / MANIFEST).write_text(json.dumps(manifest))
    message = _refused(folder)
    assert "format version 2; this Vesalius reads up to 1" in message and "Upgrade Vesalius" in message
    (folder / MANIFEST).unlink()
    assert "not a Vesalius model package (no manifest.json)" in _refused(folder)
    newer = write_package({**MEMBERS, "vesalius.json": _contract(schema_version=3)}, tmp_path / "n.vpkg")
    assert "schema version 3; this Vesalius reads up to 1" in _refused(newer)


def test_a_file_that_is_not_a_zip_and_a_missing_package_are_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.vpkg"
    fake.write_text("not a zip")
    assert "not a readable package" in _refused(fake)
    with pytest.raises(VesaliusError, match="model package not found"):
        Package(tmp_path / "absent.vpkg")


def test_a_contract_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    path = write_package({**MEMBERS, "vesalius.json": _contract(colour="red")}, tmp_path / "c.vpkg")
    assert "vesalius.json: colour" in _refused(path)
