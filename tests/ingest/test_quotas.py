"""Daily quotas in memory: the byte quotas beside the count quotas, and the prune of finished days.
(The Postgres counters: ``test_quotas_integration.py``.)"""

from datetime import date, timedelta

import pytest

from services.ingest.ratelimit import Charge, GroupedRateLimiter, Quota, QuotaExceeded
from tests.ingest.bodies import INSTALL, bulk_body, icon_item
from tests.ingest.conftest import CLIENT_ADDRESS, memory_ingest
from tests.ingest.fakes import FakeQuotaCounters
from tests.utils.images import make_png

DAY = date(2026, 12, 1)
QUOTA = Quota(per_install=10, per_ip=20, install_bytes=1000, ip_bytes=1500)


def charge(install: str = "install-a", origin: str = "origin-1", n: int = 1, size: int = 100, day=DAY):
    return Charge(install, origin, n, size, day)


async def test_a_charge_takes_contributions_and_image_bytes_per_install_and_origin():
    counters = FakeQuotaCounters()
    limiter = GroupedRateLimiter(counters, QUOTA)
    await limiter.consume(charge(n=2, size=300))
    await limiter.close()
    assert dict(counters.counts) == {
        ("install", "install-a", DAY): 2,
        ("ip", "origin-1", DAY): 2,
        ("install_bytes", "install-a", DAY): 300,
        ("ip_bytes", "origin-1", DAY): 300,
    }
    await limiter.refund(charge(n=2, size=300))
    assert set(counters.counts.values()) == {0}


async def test_a_charge_without_images_touches_no_byte_counter():
    counters = FakeQuotaCounters()
    limiter = GroupedRateLimiter(counters, QUOTA)
    await limiter.consume(charge(size=0))
    await limiter.close()
    assert {scope for scope, _, _ in counters.counts} == {"install", "ip"}


@pytest.mark.parametrize(
    ("charges", "scope", "limit"),
    [
        ([charge(size=600), charge(size=600)], "install_bytes", 1000),
        ([charge(size=900), charge("install-b", size=900)], "ip_bytes", 1500),
        ([charge(size=1001)], "install_bytes", 1000),  # more than the whole quota: refused before asking
        ([charge(n=10, size=1), charge(size=1)], "install", 10),
    ],
)
async def test_the_quota_spent_first_is_named_and_nothing_is_taken(charges, scope, limit):
    counters = FakeQuotaCounters()
    limiter = GroupedRateLimiter(counters, QUOTA)
    *admitted, refused = charges
    for accepted in admitted:
        await limiter.consume(accepted)
    before = dict(counters.counts)
    with pytest.raises(QuotaExceeded) as exceeded:
        await limiter.consume(refused)
    assert (exceeded.value.scope, exceeded.value.limit) == (scope, limit)
    assert {key: n for key, n in counters.counts.items() if n} == {k: n for k, n in before.items() if n}
    await limiter.close()


async def test_the_first_charge_of_a_day_prunes_the_days_before_it_once():
    counters = FakeQuotaCounters()
    limiter = GroupedRateLimiter(counters, QUOTA)
    yesterday, today = DAY - timedelta(days=1), DAY
    await limiter.consume(charge(day=yesterday))
    await limiter.close()
    assert counters.pruned == [yesterday]
    await limiter.consume(charge(day=today))
    await limiter.consume(charge(day=today))
    await limiter.close()
    assert counters.pruned == [yesterday, today]
    assert {day for _, _, day in counters.counts} == {today}
    await limiter.consume(charge(day=yesterday))  # a request that started before midnight prunes nothing
    await limiter.close()
    assert counters.pruned == [yesterday, today]


def crop_bytes(seed: int) -> int:
    return len(make_png(64, 64, seed))


async def test_the_byte_quota_is_429_naming_it_and_its_limit():
    limit = crop_bytes(1) + crop_bytes(2) + crop_bytes(3) - 1  # room for two crops, not three
    async with memory_ingest(install_daily_bytes=limit) as memory:
        post = memory.client.post
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(1)]))).status_code == 200
        spent = await post("/contribute/bulk-crops", json=bulk_body([icon_item(2), icon_item(3)]))
        assert spent.status_code == 429
        assert spent.json() == {
            "detail": f"daily limit of {limit} bytes of images per install reached",
            "scope": "install_bytes",
            "limit": limit,
        }
        assert int(spent.headers["Retry-After"]) > 0
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(2)]))).status_code == 200
        assert memory.limiter.count("install_bytes", INSTALL) == crop_bytes(1) + crop_bytes(2)
        origin = memory.runtime.origin(CLIENT_ADDRESS, [])
        assert memory.limiter.count("ip_bytes", origin) == crop_bytes(1) + crop_bytes(2)
    assert len(memory.publisher.published) == 2


async def test_the_origin_byte_quota_covers_every_install_behind_it():
    async with memory_ingest(ip_daily_bytes=crop_bytes(1) + crop_bytes(2) - 1) as memory:
        first = bulk_body([icon_item(1)], install_id="install-0001")
        second = bulk_body([icon_item(2)], install_id="install-0002")
        assert (await memory.client.post("/contribute/bulk-crops", json=first)).status_code == 200
        refused = await memory.client.post("/contribute/bulk-crops", json=second)
        assert refused.status_code == 429 and refused.json()["scope"] == "ip_bytes"
        assert "bytes of images per client origin" in refused.json()["detail"]
