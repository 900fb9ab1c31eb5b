"""The audit log: one JSON object per line for every request that touches a model, a job or the registry.

Fields: ``time`` (UTC, ISO 8601), ``key`` (the API key's name, never the key), ``role``, ``action`` (e.g.
``predict``, ``result``, ``promote``), ``status`` (the HTTP status answered), ``outcome`` (``ok``, ``refused`` or
``error``), and where they apply ``model``, ``version``, ``package_sha256``, ``job`` and ``input_sha256`` (of the
uploaded bytes: which image was sent, without keeping the image). Lines are appended under a lock with one
``write`` each, so concurrent requests never interleave within a line; a reader may rotate the file away at any
time (the next line opens it again).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]


class AuditLog:
    """Appends audit records to ``path`` (JSON lines)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, *, action: str, status: int, key: str | None, role: str | None, **details: Any) -> None:
        """Append one record; ``details`` whose value is ``None`` are left out."""
        outcome = "ok" if status < 400 else ("error" if status >= 500 else "refused")
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "key": key,
            "role": role,
            "action": action,
            "status": status,
            "outcome": outcome,
            **{k: v for k, v in details.items() if v is not None},
        }
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
