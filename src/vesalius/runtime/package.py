"""The exported model package (``NAME.vpkg``): one zip file, or the same members in a folder.

Members::

    manifest.json          format name and version, and the SHA-256 and size of every other member
    vesalius.json          the contract (:mod:`vesalius.runtime.contract`)
    models/fold_K.onnx     the network of each fold as ONNX
    models/fold_K.pt2      ... as a torch.export program
    window_weights.npy     segmentation: the sliding window's weighting
    fingerprint.json       the training data set's fingerprint (for drift monitoring), when recorded
    reference_outputs.json the validation cases' predicted volumes (mL) or class probabilities (the reference of
                           output drift), when the runs were validated
    MODEL_CARD.md, model_card.json   the model card
    folds/fold_K/model.json   each fold's trained configuration (for the torch backend and the record)

Every member is checked against the manifest's SHA-256 when the package is opened: a changed, truncated or
missing member, or one the manifest does not list, is refused in one line that names it. A package of a newer
format version is refused with the remedy (upgrade). Writing is atomic (a temporary file or folder in the same
folder, then a rename), so a killed export never leaves a half package under the final name.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path, write_folder_atomic
from vesalius.runtime.contract import Contract, contract_from_json

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Package", "is_package", "write_package"]

#: The manifest's format name and the version of the layout this Vesalius writes and reads.
FORMAT = "vesalius-model-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONTRACT = "vesalius.json"
SUFFIX = ".vpkg"
#: Members written without compression (dense binary data).
STORED_SUFFIXES = (".onnx", ".pt2", ".npy")
_CHUNK = 1 << 20


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is an exported package: a ``.vpkg`` file, or a folder with a manifest."""
    path = Path(path)
    return (path.is_file() and path.suffix == SUFFIX) or (path / MANIFEST).is_file()


class Package:
    """An exported package opened for reading, every member checked (see the module docstring).

    Args:
        path: the ``.vpkg`` file or the package folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise VesaliusError("model package not found", self.path, "give a .vpkg file or an exported folder")
        self._zip: zipfile.ZipFile | None = None
        self._checked: dict[str, bytes] = {}  # members read (and hashed) on opening, served by read()
        if self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise VesaliusError(
                    f"not a readable package ({e}; truncated or not a .vpkg?)",
                    self.path,
                    "copy or export the package again",
                ) from None
        self.manifest = self._read_manifest()
        self._check_members()
        self.contract: Contract = contract_from_json(self.json(CONTRACT), f"{self.path}:{CONTRACT}")

    def __repr__(self) -> str:
        return f"Package({str(self.path)!r})"

    def close(self) -> None:
        self._checked.clear()
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- members -----------------------------------------------------------------------------------------------------
    @property
    def members(self) -> list[str]:
        """The members the manifest lists, in its order."""
        return list(self.manifest["members"])

    def read(self, member: str) -> bytes:
        """The bytes of ``member`` (checked against its SHA-256 when the package was opened)."""
        if member not in self.manifest["members"]:
            raise VesaliusError(f"no member '{member}' in the package", self.path, "export the model again")
        return self._checked[member] if member in self._checked else self._raw(member)

    def json(self, member: str) -> Any:
        """The parsed JSON of ``member``."""
        try:
            return json.loads(self.read(member).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise VesaliusError(f"member '{member}' is not valid JSON ({e})", self.path, "export it again") from None

    def _raw(self, member: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(member)
            return (self.path / member).read_bytes()
        except (KeyError, FileNotFoundError):
            raise VesaliusError(
                f"member '{member}' is missing", self.path, "copy or export the package again"
            ) from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise VesaliusError(
                f"member '{member}' is unreadable ({e})", self.path, "copy or export the package again"
            ) from None

    def _read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self._raw(MANIFEST).decode("utf-8"))
        except VesaliusError:
            raise VesaliusError(
                "not a Vesalius model package (no manifest.json)", self.path, "export the model with 'vesalius export'"
            ) from None
        except (UnicodeDecodeError, ValueError) as e:
            raise VesaliusError(f"unreadable manifest.json ({e})", self.path, "export the model again") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise VesaliusError("not a Vesalius model package (unknown manifest)", self.path, "export the model again")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise VesaliusError(f"invalid format_version {version!r}", self.path, "export the model again")
        if version > FORMAT_VERSION:
            raise VesaliusError(
                f"a package of format version {version}; this Vesalius reads up to {FORMAT_VERSION}",
                self.path,
                "upgrade Vesalius (pip install -U vesalius) or export the model with this version",
            )
        members = manifest.get("members")
        if not isinstance(members, dict) or CONTRACT not in members:
            raise VesaliusError("the manifest lists no contract (vesalius.json)", self.path, "export the model again")
        return manifest

    def _stored(self) -> set[str]:
        if self._zip is not None:
            return {i.filename for i in self._zip.infolist() if not i.is_dir()}
        return {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()}

    def _check_members(self) -> None:
        listed = self.manifest["members"]
        unlisted = sorted(self._stored() - set(listed) - {MANIFEST})
        if unlisted:
            raise VesaliusError(
                f"member '{unlisted[0]}' is not in the manifest (added after export?)",
                self.path,
                "remove it, or export the model again",
            )
        for member, expected in listed.items():
            data = self._raw(member)
            self._checked[member] = data
            if not isinstance(expected, dict) or _sha256(data) != expected.get("sha256"):
                raise VesaliusError(
                    f"member '{member}' does not match its SHA-256 (changed, truncated or corrupt)",
                    self.path,
                    "copy or export the package again",
                )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(members: Mapping[str, bytes], info: Mapping[str, Any]) -> bytes:
    listed = {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in members.items()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **info, "members": listed}
    return json.dumps(manifest, indent=2).encode("utf-8")


def write_package(
    members: Mapping[str, bytes], output: str | Path, *, as_folder: bool = False, info: Mapping[str, Any] = ()
) -> Path:
    """Write ``members`` (name -> bytes; must include ``vesalius.json``) with their manifest to ``output``.

    ``as_folder``: a folder of the members instead of a zip. ``info``: extra manifest entries (e.g. ``created``).
    The output is replaced atomically if it exists.
    """
    if CONTRACT not in members:
        raise ValueError("a package needs its contract (vesalius.json)")
    output = Path(output)
    manifest = _manifest(members, dict(info))
    if as_folder:
        return write_folder_atomic(output, {MANIFEST: manifest, **members})
    with atomic_path(output, SUFFIX) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, manifest)
        for name, data in members.items():
            # network weights hardly compress, and inflating them would double the start-up: stored as they are
            stored = name.endswith(STORED_SUFFIXES)
            archive.writestr(name, data, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    return output


def contract_of(path: str | Path) -> Contract:
    """The contract of the package at ``path`` (checked as :class:`Package` checks it)."""
    with Package(path) as package:
        return package.contract
