"""What clients poll, read from the records voting and the publisher own (read-only), with a short cache.

An internal error never becomes an empty or "no model" answer: a recent good answer is served instead, and
without one the caller gets ``ReadModelUnavailable`` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

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


class ReadModels:
    def __init__(self, engine: AsyncEngine, ttl: float) -> None:
        self._engine = engine
        self.model_version = CachedRead(self._model_version, ttl)
        self.knowledge = CachedRead(self._knowledge, ttl)
        self.labels = CachedRead(self._labels, ttl)

    async def _model_version(self) -> dict[str, Any]:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT version, trained_at, n_classes, n_samples, n_users, metrics FROM model_versions "
                        "WHERE status = 'published' ORDER BY trained_at DESC LIMIT 1"
                    )
                )
            ).first()
        if row is None:
            return {"available": False}
        answer: dict[str, Any] = {
            "available": True,
            "version": row.version,
            "trained_at": row.trained_at,
            "n_classes": row.n_classes,
            "val_acc": float(row.metrics.get("val_acc", 0.0)),
            "n_samples": row.n_samples,
            "n_users": row.n_users,
        }
        answer.update({key: row.metrics[key] for key in _VERSION_METRIC_KEYS[1:] if key in row.metrics})
        return answer

    async def _knowledge(self) -> dict[str, str]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT item_key, label FROM consensus "
                    "WHERE item_kind = 'knowledge' AND status = 'accepted' AND label IS NOT NULL ORDER BY item_key"
                )
            )
            return {row.item_key: row.label for row in rows}

    async def _labels(self) -> dict[str, list[str]]:
        async with self._engine.connect() as connection:
            icon_labels = (
                (
                    await connection.execute(
                        text(
                            "SELECT DISTINCT label FROM consensus "
                            "WHERE item_kind = 'icon' AND status = 'accepted' AND label IS NOT NULL ORDER BY label"
                        )
                    )
                )
                .scalars()
                .all()
            )
            screen_types = (
                (
                    await connection.execute(
                        text(
                            "SELECT DISTINCT label FROM consensus "
                            "WHERE item_kind = 'screen' AND status = 'accepted' AND label IS NOT NULL"
                        )
                    )
                )
                .scalars()
                .all()
            )
        return {
            "icon_labels": list(icon_labels),
            "screen_types": sorted(set(KNOWN_SCREEN_TYPES) | set(screen_types)),
            "text_slots": sorted(TEXT_SLOTS),
            "virtual_labels": list(VIRTUAL_LABELS),
        }

    async def knowledge_merge_counts(self) -> tuple[int, int]:
        """(entries changed since the last knowledge publication, size of the knowledge map) for /admin/merge."""
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT count(*) AS total, count(*) FILTER (WHERE updated_at > coalesce(("
                        "  SELECT max(at) FROM publication_log WHERE kind = 'knowledge' AND event = 'published'"
                        "), '-infinity')) AS merged "
                        "FROM consensus WHERE item_kind = 'knowledge' AND status = 'accepted'"
                    )
                )
            ).one()
        return row.merged, row.total
