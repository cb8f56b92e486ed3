"""In-memory stand-ins for ingest's adapters, with the protocols of the real ones (``bootstrap`` takes them)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.ingest.ratelimit import Quota, QuotaExceeded
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


class FakeRateLimiter:
    """``ratelimit.RateLimiter`` over a dict: both quotas or neither, as the Postgres one."""

    def __init__(self, quota: Quota) -> None:
        self.quota = quota
        self.counts: Counter[tuple[str, str, date]] = Counter()
        self.down = False

    def _keys(self, install_id: str, client_ip: str, day: date) -> tuple[tuple[str, str, date], ...]:
        return ("install", install_id, day), ("ip", client_ip, day)

    async def consume(self, install_id: str, client_ip: str, units: int, day: date) -> None:
        if self.down:
            raise ConnectionRefusedError("fake database is down")
        for key in self._keys(install_id, client_ip, day):
            limit = self.quota.limit(key[0])
            if self.counts[key] + units > limit:
                raise QuotaExceeded(key[0], limit)
        for key in self._keys(install_id, client_ip, day):
            self.counts[key] += units

    async def refund(self, install_id: str, client_ip: str, units: int, day: date) -> None:
        for key in self._keys(install_id, client_ip, day):
            self.counts[key] = max(self.counts[key] - units, 0)

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
