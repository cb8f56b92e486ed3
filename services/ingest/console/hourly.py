"""Contributions per hour for the overview, without counting the whole window on every page: an hour that has
ended (``SETTLE_HOURS`` back, so a transaction that began in it has committed) keeps its counts in memory; only
the hours since are counted again, at most every ``RECENT_TTL_SECONDS``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

SETTLE_HOURS = 2
RECENT_TTL_SECONDS = 30.0

Load = Callable[[datetime, datetime | None], Awaitable[list[Any]]]


class HourCount(NamedTuple):
    hour: datetime
    item_kind: str
    n: int


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


class HourlyCounts:
    def __init__(self, load: Load, window: timedelta) -> None:
        self._load = load
        self._window = window
        self._settled: dict[tuple[datetime, str], int] = {}
        self._settled_until: datetime | None = None
        self._recent: list[HourCount] = []
        self._recent_at: datetime | None = None
        self._lock = asyncio.Lock()

    async def get(self, now: datetime) -> list[HourCount]:
        """The counts per (hour, kind) of the window ending ``now``."""
        start = _hour(now) - self._window
        settle = _hour(now) - timedelta(hours=SETTLE_HOURS)
        async with self._lock:
            if self._settled_until is None or self._settled_until < start:
                self._settled, self._settled_until = {}, start
            if self._settled_until < settle:
                for row in await self._load(self._settled_until, settle):
                    self._settled[row.hour, row.item_kind] = row.n
                self._settled_until = settle
                self._recent_at = None
            self._settled = {key: n for key, n in self._settled.items() if key[0] >= start}
            if self._recent_at is None or (now - self._recent_at).total_seconds() >= RECENT_TTL_SECONDS:
                loaded = await self._load(self._settled_until, None)
                self._recent = [HourCount(row.hour, row.item_kind, row.n) for row in loaded]
                self._recent_at = now
            settled = [HourCount(hour, kind, n) for (hour, kind), n in self._settled.items()]
        return settled + self._recent
