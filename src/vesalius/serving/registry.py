"""The model registry of ``vesalius serve``: named models, numbered versions, and aliases that point at them.

After MLflow's registry: ``vesalius models add PKG --name NAME`` stores an exported package (:mod:`vesalius.runtime
.package`) as the next version of NAME (``v1``, ``v2``, ...); an alias (``production``, ``staging``) points at one
version and is moved by ``promote``, and moved back by ``rollback``. The service asks :meth:`Registry.resolve` which
version answers a request, so promoting or rolling back takes effect at the next request, without a restart.

Layout (under ``<workspace>/serving/registry/``)::

    registry.json     the truth: every model, its versions (number, SHA-256, task, labels, metrics, ...), its aliases
                      and each alias's history
    NAME/vN.vpkg      version N of NAME: always one zip file (a folder package is zipped, member by member, as it is)
    .lock             writers hold an exclusive ``flock`` on it

Safety: writers (``add``, ``promote``, ``rollback``, from the CLI or the running service, in any number of
processes or threads) take the lock, so two of them never give out the same version number or lose an update.
``registry.json`` is replaced atomically, so readers (``resolve``, ``models``) never lock and never see half a file.
A package is copied under a temporary name, checked (every member's SHA-256, as :class:`~vesalius.runtime.package
.Package` checks it) and only then renamed to ``vN.vpkg``, before ``registry.json`` names it: a killed ``add``
leaves no half file under a version's name and no entry without its file (at worst an unlisted ``vN.vpkg``, whose
number is then skipped, never reused). A stored file that went missing or changed is reported by
:meth:`Registry.verify`. The lock is :func:`vesalius.io.locking.folder_lock` (POSIX ``flock``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vesalius.errors import VesaliusError
from vesalius.io.atomic import atomic_path, write_json_atomic
from vesalius.io.locking import folder_lock
from vesalius.runtime.contract import ClassificationContract
from vesalius.runtime.package import MANIFEST, STORED_SUFFIXES, SUFFIX, Package

__all__ = ["DEFAULT_ALIAS", "ModelVersion", "NotInRegistry", "RegisteredModel", "Registry", "parse_version"]

#: The alias that :meth:`Registry.resolve` follows when no version is asked for.
DEFAULT_ALIAS = "production"
FORMAT = "vesalius-model-registry"
FORMAT_VERSION = 1
INDEX = "registry.json"
CARD = "model_card.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_VERSION = re.compile(r"^v?([1-9][0-9]*)$")
_STORED = re.compile(r"^v([1-9][0-9]*)\.vpkg$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zipped folder packages carry no time, so the same folder zips to the same bytes
_CHUNK = 1 << 20


class NotInRegistry(VesaliusError):
    """An unknown model, version or alias (the service answers 404); the message names those that exist."""


@dataclass(frozen=True)
class ModelVersion:
    """One stored version of a registered model.

    Attributes:
        name: the model's name; ``version``: ``vN``; ``number``: N.
        sha256: of the stored package file's bytes; ``size_bytes``: its size; ``path``: where it is stored.
        task: ``segmentation`` or ``classification``.
        labels: segmentation: label value -> name (0 the background); classification: class names in output order.
        metrics: the model card's validation figures (segmentation: ``dice`` per class and ``mean_dice``;
            classification: ``accuracy``, ``auc``, ... averaged over folds), or ``None`` when it has none.
        created: when it was added (UTC, ISO 8601); ``source``: the package it was copied from.
    """

    name: str
    version: str
    number: int
    sha256: str
    path: Path
    task: str
    created: str
    metrics: dict[str, Any] | None
    labels: dict[int, str] | list[str]
    size_bytes: int
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (label values become strings)."""
        labels = self.labels if isinstance(self.labels, list) else {str(k): v for k, v in self.labels.items()}
        return {
            "name": self.name,
            "version": self.version,
            "number": self.number,
            "sha256": self.sha256,
            "path": str(self.path),
            "task": self.task,
            "created": self.created,
            "metrics": self.metrics,
            "labels": labels,
            "size_bytes": self.size_bytes,
            "source": self.source,
        }


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model: its versions (oldest first), its aliases (alias -> ``vN``) and their history (each
    alias's promotions and rollbacks, oldest first: ``{"action", "version", "at", "actor"}``)."""

    name: str
    versions: tuple[ModelVersion, ...]
    aliases: dict[str, str]
    alias_history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def latest(self) -> ModelVersion:
        return self.versions[-1]

    def aliases_of(self, version: str) -> list[str]:
        """The aliases that point at ``version`` (``vN``), sorted."""
        return sorted(a for a, v in self.aliases.items() if v == version)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [v.to_json() for v in self.versions],
            "aliases": dict(self.aliases),
            "alias_history": self.alias_history,
        }


def parse_version(ref: str) -> int | None:
    """The number of a version reference ``vN`` or ``N``; ``None`` when ``ref`` is not one (an alias)."""
    match = _VERSION.match(ref.strip())
    return int(match.group(1)) if match else None


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise VesaliusError(
            f"invalid model name '{name}'",
            remedy="use letters, digits, '_', '.' or '-' (at most 64, starting with a letter or digit)",
        )
    return name


def check_alias(alias: str) -> str:
    if not _ALIAS.match(alias) or parse_version(alias) is not None:
        raise VesaliusError(
            f"invalid alias '{alias}'",
            remedy="use lower-case letters, digits, '_' or '-' (at most 32, starting with a letter; not like 'v2')",
        )
    return alias


class Registry:
    """The model registry in the folder ``root`` (``<workspace>/serving/registry``); see the module docstring.

    Args:
        root: the registry's folder; created by the first :meth:`add`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.index = self.root / INDEX

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- reading (no lock: registry.json is replaced atomically) -----------------------------------------------------
    def stamp(self) -> tuple[int, int]:
        """``registry.json``'s modification time (ns) and size, ``(0, 0)`` when there is none: changes when it does."""
        try:
            stat = self.index.stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def models(self) -> list[RegisteredModel]:
        """Every registered model, by name."""
        data = self._load()
        return [self._model(name, data["models"][name]) for name in sorted(data["models"])]

    def get(self, name: str) -> RegisteredModel:
        """The registered model ``name``."""
        return self._model(name, self._entry(self._load(), name))

    def resolve(self, name: str, ref: str | None = None) -> ModelVersion:
        """The version of ``name`` that ``ref`` names: an alias, or a version (``v2`` or ``2``).

        ``None``: the ``production`` alias's version, or the latest version when the model has no such alias.
        """
        model = self.get(name)
        if ref is None:
            ref = DEFAULT_ALIAS if DEFAULT_ALIAS in model.aliases else model.latest.version
        return _find(model, ref)

    def verify(self, name: str) -> list[str]:
        """The problems of ``name``'s stored versions (a missing file, a changed SHA-256); empty when none."""
        problems = []
        for version in self.get(name).versions:
            if not version.path.is_file():
                problems.append(f"{name} {version.version}: {version.path} is missing")
            elif _file_sha256(version.path) != version.sha256:
                problems.append(f"{name} {version.version}: {version.path} does not match its SHA-256 (changed)")
        return problems

    # -- writing (under the lock) ------------------------------------------------------------------------------------
    def add(self, package: str | Path, name: str) -> ModelVersion:
        """Store the package ``package`` (``.vpkg`` file or folder) as the next version of ``name``.

        Refused in one line: an invalid name, a damaged package, a package already stored as a version of ``name``.
        """
        check_model_name(name)
        source = Path(package).absolute()
        folder = self.root / name
        with folder_lock(self.root):
            data = self._load()
            entry = data["models"].get(name) or {"versions": [], "aliases": {}, "alias_history": {}}
            for leftover in folder.glob(".tmp-*"):  # of an add that was killed (every add holds the lock)
                leftover.unlink()
            taken = [v["number"] for v in entry["versions"]]
            taken += [int(m.group(1)) for p in folder.glob("v*.vpkg") if (m := _STORED.match(p.name))]
            number = max(taken, default=0) + 1
            target = folder / f"v{number}{SUFFIX}"
            with atomic_path(target, SUFFIX) as tmp:
                try:
                    _store(source, tmp)
                    with Package(tmp) as stored:
                        contract = stored.contract
                        card = stored.json(CARD) if CARD in stored.members else None
                except VesaliusError as e:  # named after the source, not the temporary copy
                    raise VesaliusError(e.problem, source, e.remedy) from None
                sha256 = _file_sha256(tmp)
                for existing in entry["versions"]:
                    if existing["sha256"] == sha256:
                        raise VesaliusError(
                            f"this package is already {name} {existing['version']}",
                            source,
                            f"use {existing['version']} (vesalius models promote {name} {existing['version']})",
                        )
                size = tmp.stat().st_size
            classification = isinstance(contract, ClassificationContract)
            record = {
                "version": f"v{number}",
                "number": number,
                "file": f"{name}/{target.name}",
                "sha256": sha256,
                "size_bytes": size,
                "task": contract.task,
                "labels": contract.class_names if classification else {str(k): v for k, v in contract.labels.items()},
                "metrics": _metrics(card),
                "created": _now(),
                "source": str(source),
            }
            entry["versions"].append(record)
            data["models"][name] = entry
            self._save(data)
        return self._version(name, record)

    def promote(self, name: str, version: str, alias: str = DEFAULT_ALIAS, actor: str | None = None) -> ModelVersion:
        """Point ``alias`` of ``name`` at ``version`` (``v3`` or ``3``); nothing changes if it already points there."""
        check_alias(alias)
        with folder_lock(self.root):
            data = self._load()
            entry = self._entry(data, name)
            chosen = _find(self._model(name, entry), version, aliases=False)
            if entry["aliases"].get(alias) != chosen.version:
                self._move(data, entry, alias, chosen.version, "promote", actor)
        return chosen

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS, actor: str | None = None) -> ModelVersion:
        """Point ``alias`` of ``name`` back at the version it pointed at before its last promotion.

        Successive rollbacks go further back; refused when the alias has no earlier version.
        """
        check_alias(alias)
        with folder_lock(self.root):
            data = self._load()
            entry = self._entry(data, name)
            model = self._model(name, entry)
            if alias not in entry["aliases"]:
                raise NotInRegistry(f"{name} has no alias '{alias}' ({_listed('aliases', model.aliases)})")
            earlier = _pointed(entry["alias_history"].get(alias, []))[:-1]
            if not earlier:
                raise VesaliusError(
                    f"{name} '{alias}' has pointed only at {entry['aliases'][alias]}: nothing to roll back to",
                    remedy=f"promote another version: vesalius models promote {name} VERSION --alias {alias}",
                )
            chosen = _find(model, earlier[-1], aliases=False)
            self._move(data, entry, alias, chosen.version, "rollback", actor)
        return chosen

    # -- internals ---------------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.index.read_bytes())
        except FileNotFoundError:
            return {"format": FORMAT, "format_version": FORMAT_VERSION, "models": {}}
        except (UnicodeDecodeError, ValueError) as e:
            raise VesaliusError(f"unreadable registry ({e})", self.index, "restore it from a backup") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
            raise VesaliusError("not a Vesalius model registry", self.index, "restore it from a backup")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise VesaliusError(
                f"a registry of format version {data['format_version']}; this Vesalius reads up to {FORMAT_VERSION}",
                self.index,
                "upgrade Vesalius (pip install -U vesalius)",
            )
        return data

    def _save(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.index, data)

    def _entry(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        entry = data["models"].get(name)
        if entry is None:
            raise NotInRegistry(
                f"no model '{name}' in the registry ({_listed('models', data['models'])})",
                self.root,
                "add it with: vesalius models add PACKAGE --name NAME",
            )
        return entry

    def _move(
        self, data: dict[str, Any], entry: dict[str, Any], alias: str, version: str, action: str, actor: str | None
    ) -> None:
        entry["aliases"][alias] = version
        event = {"action": action, "version": version, "at": _now(), "actor": actor}
        entry["alias_history"].setdefault(alias, []).append(event)
        self._save(data)

    def _version(self, name: str, record: dict[str, Any]) -> ModelVersion:
        labels = record["labels"]
        return ModelVersion(
            name=name,
            version=record["version"],
            number=record["number"],
            sha256=record["sha256"],
            path=self.root / record["file"],
            task=record["task"],
            created=record["created"],
            metrics=record["metrics"],
            labels=labels if isinstance(labels, list) else {int(k): v for k, v in labels.items()},
            size_bytes=record["size_bytes"],
            source=record.get("source", ""),
        )

    def _model(self, name: str, entry: dict[str, Any]) -> RegisteredModel:
        return RegisteredModel(
            name=name,
            versions=tuple(self._version(name, r) for r in entry["versions"]),
            aliases=dict(entry["aliases"]),
            alias_history={a: list(h) for a, h in entry.get("alias_history", {}).items()},
        )


def _find(model: RegisteredModel, ref: str, *, aliases: bool = True) -> ModelVersion:
    """``model``'s version that ``ref`` names: a version, or with ``aliases`` also an alias."""
    versions = ", ".join(v.version for v in model.versions)
    number = parse_version(ref)
    if number is None and aliases and ref in model.aliases:
        number = parse_version(model.aliases[ref])
    elif number is None:
        known = f"{_listed('aliases', model.aliases)}; versions: {versions}" if aliases else f"versions: {versions}"
        raise NotInRegistry(f"{model.name} has no {'alias or ' if aliases else ''}version '{ref}' ({known})")
    for version in model.versions:
        if version.number == number:
            return version
    raise NotInRegistry(f"{model.name} has no version '{ref}' (versions: {versions})")


def _pointed(history: list[dict[str, Any]]) -> list[str]:
    """The versions an alias pointed at, current last: each promotion pushes its version, each rollback pops one."""
    stack: list[str] = []
    for event in history:
        if event["action"] == "rollback":
            del stack[-1:]
        else:
            stack.append(event["version"])
    return stack


def _listed(kind: str, names: Any) -> str:
    return f"{kind}: {', '.join(sorted(names))}" if names else f"no {kind}"


def _store(source: Path, target: Path) -> None:
    """Copy the package ``source`` to the file ``target``: a ``.vpkg`` as it is, a folder zipped member by member
    (no times, so the same folder always zips to the same bytes)."""
    if not source.is_dir():
        if not source.exists():
            raise VesaliusError("model package not found", source, "give a .vpkg file or an exported folder")
        shutil.copyfile(source, target)
        return
    with Package(source) as package, zipfile.ZipFile(target, "w") as archive:
        for member in [MANIFEST, *package.members]:
            info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if member.endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            archive.writestr(info, (source / MANIFEST).read_bytes() if member == MANIFEST else package.read(member))


def _metrics(card: Any) -> dict[str, Any] | None:
    """The model card's validation figures in brief (see :class:`ModelVersion`), ``None`` without any."""
    validation = card.get("validation") if isinstance(card, dict) else None
    if not isinstance(validation, dict):
        return None
    if isinstance(validation.get("per_class"), dict):  # segmentation
        dice = {k: v.get("mean") for k, v in validation["per_class"].items() if isinstance(v, dict)}
        means = [d for d in dice.values() if isinstance(d, int | float)]
        mean = sum(means) / len(means) if means else None
        return {"metric": "Dice", "cases": validation.get("cases"), "dice": dice, "mean_dice": mean}
    folds = [f for f in (validation.get("folds") or {}).values() if isinstance(f, dict)]
    if not folds:
        return None
    metrics: dict[str, Any] = {"metric": "accuracy and AUC", "folds": len(folds)}
    for key in ("accuracy", "auc", "balanced_accuracy", "f1_macro"):
        values = [f[key] for f in folds if isinstance(f.get(key), int | float)]
        metrics[key] = sum(values) / len(values) if values else None
    return metrics


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
