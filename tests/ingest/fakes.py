"""In-memory stand-ins for ingest's adapters, with the protocols of the real ones (``bootstrap`` takes them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.ingest.ratelimit import Charge, Key, Quota, QuotaExceeded
from shared.broker import BrokerUnavailable
from shared.events import Event


class FakePublisher:
    """``shared.broker.EventPublisher`` that keeps what it confirmed; closed, it refuses as the real one does."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.connected = True

    async def publish(self, event: Event) -> None:
        if not self.connected:
            raise BrokerUnavailable("publisher is not connected to RabbitMQ")
        self.published.append(event)

    async def close(self) -> None:
        self.connected = False

    def of_type(self, event_type: str) -> list[Event]:
        return [event for event in self.published if event.event_type == event_type]


class FakeQuotaCounters:
    """``ratelimit.QuotaCounters`` over a Counter, for ``GroupedRateLimiter`` in memory; records its prunes."""

    def __init__(self) -> None:
        self.counts: Counter[Key] = Counter()
        self.pruned: list[date] = []

    async def take(self, amounts: dict[Key, int], limits: Mapping[str, int]) -> set[Key]:
        taken = {key for key, amount in amounts.items() if self.counts[key] + amount <= limits[key[0]]}
        for key in taken:
            self.counts[key] += amounts[key]
        return taken

    async def give_back(self, amounts: dict[Key, int]) -> None:
        for key, amount in amounts.items():
            self.counts[key] = max(self.counts[key] - amount, 0)

    async def prune(self, before: date) -> int:
        self.pruned.append(before)
        old = [key for key in self.counts if key[2] < before]
        for key in old:
            del self.counts[key]
        return len(old)


class FakeRateLimiter:
    """``ratelimit.RateLimiter`` over a dict: every counter of a charge or none, as the Postgres one."""

    def __init__(self, quota: Quota) -> None:
        self.limits = quota.limits()
        self.counts: Counter[Key] = Counter()
        self.down = False

    async def consume(self, charge: Charge) -> None:
        if self.down:
            raise ConnectionRefusedError("fake database is down")
        amounts = charge.amounts()
        for key, amount in amounts.items():
            if self.counts[key] + amount > self.limits[key[0]]:
                raise QuotaExceeded(key[0], self.limits[key[0]])
        self.counts.update(amounts)

    async def refund(self, charge: Charge) -> None:
        for key, amount in charge.amounts().items():
            self.counts[key] = max(self.counts[key] - amount, 0)

    def count(self, scope: str, subject: str) -> int:
        return sum(n for (s, subj, _), n in self.counts.items() if (s, subj) == (scope, subject))


@dataclass
class FakeRelease:
    version: str
    trained_at: str
    n_classes: int = 12
    n_samples: int = 340
    n_users: int = 17
    metrics: dict[str, Any] = field(default_factory=lambda: {"val_acc": 0.91})


@dataclass
class FakeReadStore:
    """``readmodels.ReadStore`` over plain values: the current release, accepted labels per kind."""

    release: FakeRelease | None = None
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    merge_counts: tuple[int, int] = (0, 0)
    down: bool = False
    reads: int = 0

    def _read(self) -> None:
        if self.down:
            raise ConnectionRefusedError("fake database is down")
        self.reads += 1

    async def latest_release(self) -> FakeRelease | None:
        self._read()
        return self.release

    async def accepted_labels(self, kind: str) -> dict[str, str]:
        self._read()
        return dict(self.labels.get(kind, {}))

    async def knowledge_merge_counts(self) -> tuple[int, int]:
        self._read()
        return self.merge_counts
