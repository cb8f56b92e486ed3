"""The overview's hourly counts: settled hours counted once, recent ones again after their TTL."""

from datetime import UTC, datetime, timedelta

from services.ingest.console.hourly import RECENT_TTL_SECONDS, SETTLE_HOURS, HourCount, HourlyCounts

NOW = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


class Contributions:
    """A table of contributions per hour, and the ranges asked of it."""

    def __init__(self) -> None:
        self.per_hour: dict[datetime, int] = {}
        self.asked: list[tuple[datetime, datetime | None]] = []

    async def load(self, since: datetime, until: datetime | None) -> list[HourCount]:
        self.asked.append((since, until))
        return [
            HourCount(hour, "icon", n)
            for hour, n in sorted(self.per_hour.items())
            if hour >= since and (until is None or hour < until)
        ]


async def test_settled_hours_are_counted_once_and_recent_ones_again_after_their_ttl():
    table = Contributions()
    hour = NOW.replace(minute=0)
    table.per_hour = {hour - timedelta(hours=h): 10 + h for h in range(6)}
    counts = HourlyCounts(table.load, timedelta(days=1))
    first = await counts.get(NOW)
    assert sorted((c.hour, c.n) for c in first) == sorted((h, n) for h, n in table.per_hour.items())
    assert len(table.asked) == 2  # the settled part, then the recent hours
    table.per_hour[hour] += 5  # arrives in the current hour
    table.per_hour[hour - timedelta(hours=5)] += 100  # a settled hour is not counted again
    assert {c.hour: c.n for c in await counts.get(NOW + timedelta(seconds=1))}[hour] == 10  # within the TTL
    later = {c.hour: c.n for c in await counts.get(NOW + timedelta(seconds=RECENT_TTL_SECONDS))}
    assert later[hour] == 15 and later[hour - timedelta(hours=5)] == 15
    assert len(table.asked) == 3 and table.asked[-1] == (hour - timedelta(hours=SETTLE_HOURS), None)


async def test_hours_leave_the_window_and_a_new_settled_hour_is_counted_once():
    table = Contributions()
    hour = NOW.replace(minute=0)
    table.per_hour = {hour - timedelta(hours=h): 1 for h in range(30)}
    counts = HourlyCounts(table.load, timedelta(hours=24))
    await counts.get(NOW)
    next_hour = await counts.get(NOW + timedelta(hours=1))
    assert min(c.hour for c in next_hour) == hour + timedelta(hours=1) - timedelta(hours=24)
    assert table.asked[2] == (hour - timedelta(hours=SETTLE_HOURS), hour + timedelta(hours=1 - SETTLE_HOURS))
