"""What a worker lets in before spending on a request: pure rules over plain values and an injected clock.

- ``RejectBudget``: rejected attempts cost their origin (client address, as ``client_ip`` resolves it). Each
  origin holds a token bucket of ``capacity`` rejects refilled over ``window_seconds``; once empty, the origin's
  contribution requests are answered 429 before their body is read.
- ``BytesInFlight``: the request bytes a worker holds stay under a cap; a request that would pass it (by its
  declared length, or as its body arrives) is answered 503 with ``Retry-After`` instead of being buffered.

Both live in the memory of one worker: a worker's budget is its own, and what it bounds is its own memory.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


class Overloaded(RuntimeError):
    """The worker is at a bound (``resource``); nothing was taken, the client should retry after a moment."""

    def __init__(self, resource: str, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.resource = resource
        self.retry_after = retry_after


class BudgetSpent(Exception):
    """The origin's reject budget is spent: 429 until ``retry_after`` seconds have passed."""

    def __init__(self, retry_after: int, capacity: int, window_seconds: float) -> None:
        super().__init__(
            f"too many rejected attempts from this address: the budget is {capacity} rejected images or "
            f"requests per {window_seconds:g} seconds"
        )
        self.retry_after = retry_after
        self.limit = capacity


@dataclass
class _Bucket:
    tokens: float
    at: float


class RejectBudget:
    """Token buckets of rejected attempts per origin. At most ``max_origins`` are remembered: past that, the
    origin charged least recently is forgotten (it gets a full budget back, which costs an attacker a fresh
    address per forgotten one). Charged from the image-check threads too, hence the lock."""

    def __init__(
        self, capacity: int, window_seconds: float, clock: Callable[[], float], max_origins: int = 100_000
    ) -> None:
        self.capacity = capacity
        self.window_seconds = window_seconds
        self._rate = capacity / window_seconds
        self._clock = clock
        self._max_origins = max_origins
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _tokens(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + (now - bucket.at) * self._rate)

    def retry_after(self, origin: str) -> int | None:
        """None while the origin may send; else the whole seconds until one more reject is allowed."""
        with self._lock:
            bucket = self._buckets.get(origin)
        if bucket is None:
            return None
        tokens = self._tokens(bucket, self._clock())
        if tokens >= 1:
            return None
        return max(1, math.ceil((1 - tokens) / self._rate))

    def ensure_left(self, origin: str) -> None:
        """Raise ``BudgetSpent`` when the origin may send no more."""
        wait = self.retry_after(origin)
        if wait is not None:
            raise BudgetSpent(wait, self.capacity, self.window_seconds)

    def charge(self, origin: str, rejects: int = 1) -> None:
        if rejects <= 0:
            return
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(origin, None)
            tokens = self.capacity if bucket is None else self._tokens(bucket, now)
            self._buckets[origin] = _Bucket(max(tokens - rejects, -self.capacity), now)
            while len(self._buckets) > self._max_origins:
                self._buckets.popitem(last=False)


class BytesInFlight:
    """Request bytes held by one worker, against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise ``Overloaded`` (holding nothing more) when over the limit."""
        self.ensure_room(size)
        self.held += size

    def ensure_room(self, size: int) -> None:
        """Raise ``Overloaded`` when ``size`` more bytes would pass the limit."""
        if self.held + size > self.limit:
            raise Overloaded(
                "bytes_in_flight",
                f"ingest is holding {self.held} bytes of requests; the limit per worker is {self.limit}: "
                "retry shortly",
            )

    def give_back(self, size: int) -> None:
        self.held -= size
