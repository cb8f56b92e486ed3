"""Per-install and per-IP daily quotas in Postgres, shared by every ingest process and surviving restarts.

Requests are grouped: while one statement is in flight, the requests arriving meanwhile wait for the next, and
each group takes its quota in a single autocommitted statement (one round trip and one commit for many
requests). The conditional upsert holds the row lock, so concurrent processes can never both take the last
unit; keys are locked in sorted order, so two processes cannot deadlock. When a group's total does not fit a
counter, the requests touching that counter are given back their units and retried one by one, so exactly
the requests that fit are admitted. The statements themselves are in ``services.ingest.store``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

Key = tuple[str, str, date]  # (scope, subject, day) of a quota counter


class QuotaExceeded(Exception):
    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"daily limit of {limit} contributions per {scope} reached")
        self.scope = scope
        self.limit = limit


@dataclass(frozen=True)
class Quota:
    per_install: int
    per_ip: int

    def limit(self, scope: str) -> int:
        return self.per_install if scope == "install" else self.per_ip


class QuotaCounters(Protocol):
    async def take(self, units_by_key: dict[Key, int], per_install: int, per_ip: int) -> set[Key]: ...

    async def give_back(self, units_by_key: dict[Key, int]) -> None: ...


class RateLimiter(Protocol):
    async def consume(self, install_id: str, client_ip: str, units: int, day: date) -> None: ...

    async def refund(self, install_id: str, client_ip: str, units: int, day: date) -> None: ...


@dataclass
class _Claim:
    install_id: str
    client_ip: str
    units: int
    day: date
    outcome: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def keys(self) -> tuple[Key, Key]:
        return ("install", self.install_id, self.day), ("ip", self.client_ip, self.day)


def _settle(claim: _Claim, error: Exception | None) -> None:
    """A request cancelled while waiting (client gone, shutdown) keeps its units: it was counted, the
    safe direction; the rest of its group is unaffected."""
    if claim.outcome.done():
        return
    if error is None:
        claim.outcome.set_result(None)
    else:
        claim.outcome.set_exception(error)


class GroupedRateLimiter:
    def __init__(self, counters: QuotaCounters, quota: Quota) -> None:
        self._counters = counters
        self._quota = quota
        self._waiting: list[_Claim] = []
        self._flushing = False
        self._flush_task: asyncio.Task | None = None

    async def consume(self, install_id: str, client_ip: str, units: int, day: date) -> None:
        """Take ``units`` from both quotas, or from neither and raise ``QuotaExceeded``."""
        for scope in ("install", "ip"):
            if units > self._quota.limit(scope):
                raise QuotaExceeded(scope, self._quota.limit(scope))
        claim = _Claim(install_id, client_ip, units, day)
        self._waiting.append(claim)
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.create_task(self._flush())
        await claim.outcome

    async def refund(self, install_id: str, client_ip: str, units: int, day: date) -> None:
        await self._give_back({key: units for key in _Claim(install_id, client_ip, units, day).keys()})

    async def _flush(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    await self._take_for(group)
                except Exception as error:
                    for claim in group:
                        if not claim.outcome.done():
                            claim.outcome.set_exception(error)
        finally:
            self._flushing = False

    async def _take_for(self, group: list[_Claim]) -> None:
        wanted: dict[Key, int] = defaultdict(int)
        for claim in group:
            for key in claim.keys():
                wanted[key] += claim.units
        taken = await self._take(wanted)
        retry = [claim for claim in group if not all(key in taken for key in claim.keys())]
        if retry:
            excess: dict[Key, int] = defaultdict(int)
            for claim in retry:
                for key in claim.keys():
                    if key in taken:
                        excess[key] += claim.units
            if excess:
                await self._give_back(excess)
        for claim in group:
            if claim not in retry:
                _settle(claim, None)
        for claim in retry:
            single = dict.fromkeys(claim.keys(), claim.units)
            got = await self._take(single)
            if len(got) == 2:
                _settle(claim, None)
                continue
            if got:
                await self._give_back({key: claim.units for key in got})
            scope = next(key[0] for key in claim.keys() if key not in got)
            _settle(claim, QuotaExceeded(scope, self._quota.limit(scope)))

    async def _take(self, units_by_key: dict[Key, int]) -> set[Key]:
        return await self._counters.take(units_by_key, self._quota.per_install, self._quota.per_ip)

    async def _give_back(self, units_by_key: dict[Key, int]) -> None:
        await self._counters.give_back(units_by_key)
