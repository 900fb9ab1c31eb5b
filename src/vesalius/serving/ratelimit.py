"""Requests per API key: a token bucket per key name, so one client cannot take the whole service.

Each key name has a bucket of ``burst`` tokens that refills at ``per_minute / 60`` tokens a second; a request
takes one token, and when none is left it is refused with the time until the next token (``429`` with a
``Retry-After`` header: :func:`retry_after` turns the wait into the header's whole seconds). A burst lets a
client send a handful of images at once after a quiet spell without raising its sustained rate.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

from vesalius.errors import VesaliusError

__all__ = ["RateLimiter", "parse_rate", "retry_after"]

_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(s|sec|second|m|min|minute|h|hr|hour)\s*$", re.IGNORECASE)
_PER_MINUTE = {"s": 60.0, "m": 1.0, "h": 1 / 60}
_UNLIMITED = ("0", "off", "none", "unlimited")
_MAX_BUCKETS = 10_000  # beyond this many names, buckets that have refilled completely are forgotten


def parse_rate(text: str) -> float:
    """Requests per minute in ``"600/min"``, ``"10/s"`` or ``"1000/h"``; ``"0"`` or ``"off"`` gives ``0.0``: no
    limit (as for :class:`RateLimiter`).

    Raises:
        VesaliusError: anything else, e.g. ``"fast"``, ``"-5/min"`` or ``"10/day"``.
    """
    if text.strip().lower() in _UNLIMITED:
        return 0.0
    match = _RATE.match(text)
    per_minute = float(match.group(1)) * _PER_MINUTE[match.group(2)[0].lower()] if match else math.nan
    if not math.isfinite(per_minute):
        raise VesaliusError(
            f"cannot read the rate '{text}'", remedy="write it like 600/min, 10/s or 1000/h, or 0 for no limit"
        )
    return per_minute


def retry_after(wait_s: float) -> int:
    """A wait from :meth:`RateLimiter.check` as the whole seconds of a ``Retry-After`` header: rounded up, at
    least 1 (a client that retries after it is then sure to find a token)."""
    return max(1, math.ceil(wait_s))


class RateLimiter:
    """A token bucket per name; safe to share between threads.

    Args:
        per_minute: the sustained rate; ``0`` or less means no limit.
        burst: the bucket's size, the most requests accepted at once after a quiet spell (``None``: a tenth of a
            minute's worth, at least 10).
        clock: seconds from a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self, per_minute: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst is not None and burst < 1:
            raise VesaliusError(f"the burst {burst} must be at least 1", remedy="give 1 or more, or leave it out")
        self.per_minute = float(per_minute)
        self.burst = float(burst if burst is not None else max(10, math.ceil(self.per_minute / 10)))
        self._per_second = self.per_minute / 60.0
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when they were counted)

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def check(self, name: str) -> float:
        """Take a token for ``name``: ``0.0`` when the request may go ahead, else the seconds until a token is
        free (nothing is taken then; see :func:`retry_after` for the header)."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens = self._tokens(name, now)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / self._per_second

    def _tokens(self, name: str, now: float) -> float:
        """The tokens ``name`` holds at ``now`` (call with the lock held)."""
        if name not in self._buckets and len(self._buckets) >= _MAX_BUCKETS:
            self._buckets = {n: b for n, b in self._buckets.items() if self._refill(b, now) < self.burst}
        bucket = self._buckets.get(name)
        return self.burst if bucket is None else self._refill(bucket, now)

    def _refill(self, bucket: tuple[float, float], now: float) -> float:
        tokens, then = bucket
        return min(self.burst, tokens + max(0.0, now - then) * self._per_second)
