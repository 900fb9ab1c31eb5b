"""API keys of ``vesalius serve``: who may call the service, and with which role.

A key is a random token (``vsk_`` + 43 URL-safe characters, 256 bits from :func:`secrets.token_urlsafe`) shown
once, when it is made; ``keys.json`` keeps only its SHA-256, with the key's name, role and creation time, so the
file gives nobody a usable key. A plain, unsalted SHA-256 is enough here, unlike for passwords: salts and slow
hashes (bcrypt, Argon2) defend guessable secrets against dictionaries, but no dictionary and no amount of
guessing reaches a 256-bit random token, and a fast hash keeps the check of every request cheap.

Two roles: ``predict`` (send images, read results) and ``admin`` (everything ``predict`` may, and managing the
service). A running service notices when the file changes (its modification time, size or inode) and reloads
it, so ``vesalius serve keys add`` and ``remove`` take effect at the next request, without a restart.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vesalius.errors import VesaliusError
from vesalius.io.atomic import write_json_atomic

__all__ = ["KEY_PREFIX", "ROLES", "ApiKey", "KeyStore"]

ROLES = ("predict", "admin")
"""The roles, from the least to the most allowed."""
KEY_PREFIX = "vsk_"
"""Starts every key, so that a leaked key is recognisable (e.g. by secret scanners)."""
_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_MAX_TOKEN_CHARS = 256  # a real key has 47; anything much longer is not worth hashing


@dataclass(frozen=True)
class ApiKey:
    """A key as the service knows it (never the secret).

    Attributes:
        name: who holds it, e.g. ``"radiology-pacs"``: rate limits, the audit log and ``keys remove`` use it.
        role: ``"predict"`` or ``"admin"``.
        created: when it was made (ISO 8601, UTC).
    """

    name: str
    role: str
    created: str

    def allows(self, role_needed: str) -> bool:
        """Whether this key may do what ``role_needed`` may (an admin key may do everything)."""
        return ROLES.index(self.role) >= ROLES.index(_check_role(role_needed))


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise VesaliusError(f"unknown role '{role}'", remedy=f"use one of {', '.join(ROLES)}")
    return role


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class KeyStore:
    """The keys in ``path`` (``WORKSPACE/serving/keys.json``); a missing file holds no keys.

    Safe to share between threads. ``add`` and ``remove`` read the file afresh and replace it atomically, with
    mode 0600; two commands changing the file at the very same moment could lose one change (the service itself
    only reads it).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: builtins.list[tuple[ApiKey, str]] = []

    def add(self, name: str, role: str) -> str:
        """Make a key for ``name`` with ``role`` and return it: the only time it is seen, so hand it on at once."""
        if not _NAME.match(name):
            raise VesaliusError(
                f"invalid key name '{name}'",
                remedy="use letters, digits, '_', '.', '@' or '-' (at most 64, starting with a letter or digit)",
            )
        _check_role(role)
        with self._lock:
            entries = self._read()
            if any(entry.name == name for entry, _ in entries):
                raise VesaliusError(
                    f"a key named '{name}' exists already",
                    self.path,
                    "choose another name, or remove the old key first with 'vesalius serve keys remove NAME'",
                )
            token = KEY_PREFIX + secrets.token_urlsafe(32)
            created = datetime.now(UTC).isoformat(timespec="seconds")
            self._write([*entries, (ApiKey(name, role, created), _digest(token))])
        return token

    def remove(self, name: str) -> None:
        """Delete the key ``name``: the service refuses it from its next request."""
        with self._lock:
            entries = self._read()
            kept = [(entry, digest) for entry, digest in entries if entry.name != name]
            if len(kept) == len(entries):
                raise VesaliusError(
                    f"no key named '{name}'", self.path, "see the names with 'vesalius serve keys list'"
                )
            self._write(kept)

    def list(self) -> builtins.list[ApiKey]:
        """The keys, in the order they were made (names, roles, dates; no secrets)."""
        with self._lock:
            return [entry for entry, _ in self._current()]

    def authenticate(self, token: str | None) -> ApiKey | None:
        """The key ``token`` is, or ``None`` (no token, an unknown or removed key).

        Every stored hash is compared, in constant time (:func:`hmac.compare_digest`), so the time taken says
        nothing about how close a guess came nor which key matched.

        Raises:
            VesaliusError: the keys file is unreadable; no request is let in until it is fixed.
        """
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        digest = _digest(token)
        with self._lock:
            entries = self._current()
        found = None
        for entry, stored in entries:
            if hmac.compare_digest(digest, stored):
                found = entry
        return found

    def _current(self) -> builtins.list[tuple[ApiKey, str]]:
        """The keys, read again when the file has changed since the last read (call with the lock held)."""
        try:
            info = self.path.stat()
            stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:  # a missing file reads as no keys
            self._keys = self._read()
            self._stamp = stamp
        return self._keys

    def _read(self) -> builtins.list[tuple[ApiKey, str]]:
        remedy = "restore it from a backup, or delete it and add the keys again"
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VesaliusError(f"cannot read the API keys ({type(e).__name__})", self.path, remedy) from None
        try:
            if data.get("format") != _FORMAT:
                raise ValueError("format")
            entries = [
                (ApiKey(str(item["name"]), _check_role(item["role"]), str(item["created"])), str(item["sha256"]))
                for item in data["keys"]
            ]
            if not all(_SHA256.fullmatch(digest) for _, digest in entries):
                raise ValueError("sha256")
        except (AttributeError, KeyError, TypeError, ValueError, VesaliusError):
            raise VesaliusError("the API keys file is not in the expected form", self.path, remedy) from None
        return entries

    def _write(self, entries: builtins.list[tuple[ApiKey, str]]) -> None:
        keys = [{"name": k.name, "role": k.role, "created": k.created, "sha256": d} for k, d in entries]
        # hashes only, yet nobody else needs to read it: 0600 from the start, never readable by others in between
        write_json_atomic(self.path, {"format": _FORMAT, "keys": keys}, mode=0o600)
