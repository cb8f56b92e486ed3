"""Daily quotas per install and per client origin, of contributions and of image bytes, in Postgres: shared by
every ingest process and surviving restarts.

An origin is the keyed hash of the client's network (``services.ingest.domain.origin_key``), never its address.
A request takes from four counters at once (contributions and image bytes, per install and per origin; a
request without images only from the first two), or from none. Counters of a finished day are deleted: the
first request of a new UTC day in each process starts the prune of every earlier day, in the background.

Requests are grouped: while one statement is in flight, the requests arriving meanwhile wait for the next, and
each group takes its quota in a single autocommitted statement (one round trip and one commit for many
requests). The conditional upsert holds the row lock, so concurrent processes can never both take the last
unit; keys are locked in sorted order, so two processes cannot deadlock. When a group's total does not fit a
counter, the requests touching that counter are given back their units and retried one by one, so exactly
the requests that fit are admitted. The statements themselves are in ``services.ingest.store``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

log = logging.getLogger(__name__)

Key = tuple[str, str, date]  # (scope, subject, day) of a quota counter
# scope -> (what it counts, whose): the scopes of ``rate_limit_counters`` and of a 429's ``scope``
SCOPES = {
    "install": ("contributions", "install"),
    "ip": ("contributions", "client origin"),
    "install_bytes": ("bytes of images", "install"),
    "ip_bytes": ("bytes of images", "client origin"),
}


class QuotaExceeded(Exception):
    def __init__(self, scope: str, limit: int) -> None:
        counted, whose = SCOPES[scope]
        super().__init__(f"daily limit of {limit} {counted} per {whose} reached")
        self.scope = scope
        self.limit = limit


@dataclass(frozen=True)
class Quota:
    per_install: int
    per_ip: int
    install_bytes: int
    ip_bytes: int

    def limits(self) -> dict[str, int]:
        return {
            "install": self.per_install,
            "ip": self.per_ip,
            "install_bytes": self.install_bytes,
            "ip_bytes": self.ip_bytes,
        }


@dataclass(frozen=True)
class Charge:
    """What one request takes: its accepted contributions and their image bytes, from its install and origin."""

    install_id: str
    origin: str
    contributions: int
    image_bytes: int
    day: date

    def amounts(self) -> dict[Key, int]:
        amounts = {
            ("install", self.install_id, self.day): self.contributions,
            ("ip", self.origin, self.day): self.contributions,
        }
        if self.image_bytes:
            amounts[("install_bytes", self.install_id, self.day)] = self.image_bytes
            amounts[("ip_bytes", self.origin, self.day)] = self.image_bytes
        return amounts


class QuotaCounters(Protocol):
    async def take(self, amounts: dict[Key, int], limits: Mapping[str, int]) -> set[Key]: ...

    async def give_back(self, amounts: dict[Key, int]) -> None: ...

    async def prune(self, before: date) -> int: ...


class RateLimiter(Protocol):
    async def consume(self, charge: Charge) -> None: ...

    async def refund(self, charge: Charge) -> None: ...


@dataclass
class _Claim:
    amounts: dict[Key, int]
    outcome: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


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
        self._limits = quota.limits()
        self._waiting: list[_Claim] = []
        self._flushing = False
        self._flush_task: asyncio.Task | None = None
        self._pruned_before: date | None = None
        self._prune_task: asyncio.Task | None = None

    async def consume(self, charge: Charge) -> None:
        """Take the charge from every counter it touches, or from none and raise ``QuotaExceeded``."""
        amounts = charge.amounts()
        for (scope, _, _), amount in amounts.items():
            if amount > self._limits[scope]:
                raise QuotaExceeded(scope, self._limits[scope])
        self._prune_days_before(charge.day)
        claim = _Claim(amounts)
        self._waiting.append(claim)
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.create_task(self._flush())
        await claim.outcome

    async def refund(self, charge: Charge) -> None:
        await self._counters.give_back(charge.amounts())

    async def close(self) -> None:
        """Wait for a prune in progress (it needs the connection pool its owner is about to close)."""
        if self._prune_task is not None:
            await asyncio.gather(self._prune_task, return_exceptions=True)

    def _prune_days_before(self, day: date) -> None:
        if self._pruned_before is not None and day <= self._pruned_before:
            return
        if self._prune_task is not None and not self._prune_task.done():
            return
        self._pruned_before = day
        self._prune_task = asyncio.create_task(self._prune(day))

    async def _prune(self, before: date) -> None:
        try:
            deleted = await self._counters.prune(before)
        except Exception as error:
            self._pruned_before = None  # the next request tries again
            log.warning("could not prune quota counters", extra={"reason": repr(error)})
        else:
            log.info("pruned %d quota counters of days before %s", deleted, before)

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
            for key, amount in claim.amounts.items():
                wanted[key] += amount
        taken = await self._take(wanted)
        retry = [claim for claim in group if not all(key in taken for key in claim.amounts)]
        if retry:
            excess: dict[Key, int] = defaultdict(int)
            for claim in retry:
                for key, amount in claim.amounts.items():
                    if key in taken:
                        excess[key] += amount
            if excess:
                await self._counters.give_back(excess)
        for claim in group:
            if claim not in retry:
                _settle(claim, None)
        for claim in retry:
            got = await self._take(claim.amounts)
            if len(got) == len(claim.amounts):
                _settle(claim, None)
                continue
            if got:
                await self._counters.give_back({key: claim.amounts[key] for key in got})
            scope = next(key[0] for key in claim.amounts if key not in got)
            _settle(claim, QuotaExceeded(scope, self._limits[scope]))

    async def _take(self, amounts: dict[Key, int]) -> set[Key]:
        return await self._counters.take(amounts, self._limits)
