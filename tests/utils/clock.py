"""The one hand-moved clock of the tests: a wall clock (``clock()``) and a monotonic one (``clock.monotonic()``)
that move together, only when told (``advance``), so nothing sleeps to move time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.start = start
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return (self.now - self.start).total_seconds()

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)

    def step(self, **delta: float) -> None:
        """Move the wall clock only (an NTP correction): the monotonic clock does not see it."""
        self.now += timedelta(**delta)
        self.start += timedelta(**delta)
