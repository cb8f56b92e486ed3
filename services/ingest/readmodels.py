"""What clients poll, built from the records voting and the publisher own (read-only), with a short cache.

An internal error never becomes an empty or "no model" answer: a recent good answer is served instead, and
without one the caller gets ``ReadModelUnavailable`` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from services.ingest.domain import KNOWN_SCREEN_TYPES, TEXT_SLOTS

log = logging.getLogger(__name__)
T = TypeVar("T")

VIRTUAL_LABELS = ("__empty__", "__inactive__")
# WIRE_CONTRACT §1: /model/version keys besides `available`; screen_* only when a screen model exists.
_VERSION_METRIC_KEYS = ("val_acc", "screen_trained_at", "screen_val_acc", "screen_n_samples")


class ReadModelUnavailable(RuntimeError):
    pass


class CachedRead(Generic[T]):
    """Serve ``load()``'s answer for ``ttl`` seconds; on failure serve the last good answer up to ``stale_for``."""

    def __init__(
        self,
        load: Callable[[], Awaitable[T]],
        ttl: float,
        stale_for: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._stale_for = stale_for
        self._clock = clock
        self._value: T | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        if self._clock() - self._loaded_at < self._ttl and self._value is not None:
            return self._value
        async with self._lock:
            now = self._clock()
            if now - self._loaded_at < self._ttl and self._value is not None:
                return self._value
            try:
                self._value = await self._load()
                self._loaded_at = now
            except Exception as error:
                if self._value is not None and now - self._loaded_at < self._stale_for:
                    log.warning("read model refresh failed; serving the last good answer: %r", error)
                    return self._value
                raise ReadModelUnavailable(str(error)) from error
            return self._value


class ReadStore(Protocol):
    """Where the read models come from: ``services.ingest.store.PostgresReads``, or an in-memory fake."""

    async def latest_release(self) -> Release | None: ...

    async def accepted_labels(self, kind: str) -> dict[str, str]: ...

    async def knowledge_merge_counts(self) -> tuple[int, int]: ...


class Release(Protocol):
    version: str
    trained_at: str
    n_classes: int
    n_samples: int
    n_users: int
    metrics: dict[str, Any]


def model_version_answer(release: Release | None) -> dict[str, Any]:
    if release is None:
        return {"available": False}
    answer: dict[str, Any] = {
        "available": True,
        "version": release.version,
        "trained_at": release.trained_at,
        "n_classes": release.n_classes,
        "val_acc": float(release.metrics.get("val_acc", 0.0)),
        "n_samples": release.n_samples,
        "n_users": release.n_users,
    }
    answer.update({key: release.metrics[key] for key in _VERSION_METRIC_KEYS[1:] if key in release.metrics})
    return answer


def labels_answer(icon_labels: dict[str, str], screen_labels: dict[str, str]) -> dict[str, list[str]]:
    """The vocabulary: every accepted icon label, the known screen types and every accepted one. Sorted here,
    by code point, rather than by SQL ``ORDER BY``, whose order follows the database's collation."""
    return {
        "icon_labels": sorted(set(icon_labels.values())),
        "screen_types": sorted(set(KNOWN_SCREEN_TYPES) | set(screen_labels.values())),
        "text_slots": sorted(TEXT_SLOTS),
        "virtual_labels": list(VIRTUAL_LABELS),
    }


class ReadModels:
    def __init__(self, store: ReadStore, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.model_version = CachedRead(self._model_version, ttl, clock=clock)
        self.knowledge = CachedRead(lambda: store.accepted_labels("knowledge"), ttl, clock=clock)
        self.labels = CachedRead(self._labels, ttl, clock=clock)

    async def _model_version(self) -> dict[str, Any]:
        return model_version_answer(await self.store.latest_release())

    async def _labels(self) -> dict[str, list[str]]:
        return labels_answer(
            await self.store.accepted_labels("icon"), await self.store.accepted_labels("screen")
        )
