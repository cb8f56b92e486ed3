"""The quota counters in Postgres: keyed by origin hashes (never an address), byte quotas, the prune of finished
days, and migration 0004 dropping the address rows of before."""

import asyncio
from datetime import date, timedelta

from sqlalchemy import text

import migrations
from services.ingest.store import PostgresQuotaCounters, create_quota_pool
from shared.db import create_engine
from tests.ingest.bodies import INSTALL, bulk_body, icon_item
from tests.ingest.conftest import CLIENT_ADDRESS, running_ingest
from tests.utils.images import make_png

LIMITS = {"install": 10, "ip": 10, "install_bytes": 1000, "ip_bytes": 1000}


async def rows_as_text(engine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(text("SELECT t::text FROM rate_limit_counters t"))).scalars())


async def test_counters_hold_keyed_hashes_never_the_clients_address(ingest_settings, engine):
    clients = ["198.51.100.23", "2001:db8:77:1::5", "2001:db8:77:1::6"]  # the last two: one /64
    settings = ingest_settings | {"trusted_proxies": "203.0.113.0/24", "origin_secret": "s" * 32}
    async with running_ingest(**settings) as ingest:
        for n, client in enumerate(clients):
            response = await ingest.client.post(
                "/contribute/bulk-crops",
                json=bulk_body([icon_item(n)]),
                headers=[("X-Forwarded-For", "192.0.2.1"), ("X-Forwarded-For", f"{client}:4711")],
            )
            assert response.status_code == 200
        expected = {ingest.runtime.origin("203.0.113.1", [client]) for client in clients}
    rows = await rows_as_text(engine)
    assert len(rows) == 2 + 2 * 2  # install: count and bytes; two origins: count and bytes
    for row in rows:
        for written in (*clients, "2001:db8:77:1::", "192.0.2.1", CLIENT_ADDRESS):
            assert written not in row
    async with engine.connect() as connection:
        counted = (
            await connection.execute(
                text("SELECT subject, count FROM rate_limit_counters WHERE scope = 'ip'")
            )
        ).all()
    assert {subject for subject, _ in counted} == expected
    assert sorted(count for _, count in counted) == [1, 2]


async def test_prune_deletes_the_counters_of_past_days_only(database_url):
    today = date(2026, 12, 1)
    pool = await create_quota_pool(database_url, 2)
    try:
        counters = PostgresQuotaCounters(pool)
        days = [today - timedelta(days=2), today - timedelta(days=1), today, today + timedelta(days=1)]
        for day in days:
            amounts = {("install", INSTALL, day): 1, ("ip_bytes", "origin-key", day): 500}
            assert await counters.take(amounts, LIMITS) == set(amounts)
        assert await counters.prune(today) == 4
        left = await pool.fetch("SELECT scope, day FROM rate_limit_counters ORDER BY day, scope")
        assert [(row["scope"], row["day"]) for row in left] == [
            ("install", today),
            ("ip_bytes", today),
            ("install", today + timedelta(days=1)),
            ("ip_bytes", today + timedelta(days=1)),
        ]
        assert await counters.prune(today) == 0
    finally:
        await pool.close()


async def test_byte_counters_hold_more_than_32_bits_and_keep_their_limit(database_url):
    day, big = date(2026, 12, 1), 3_000_000_000
    limits = LIMITS | {"install_bytes": 2 * big}
    pool = await create_quota_pool(database_url, 2)
    try:
        counters = PostgresQuotaCounters(pool)
        key = ("install_bytes", INSTALL, day)
        assert await counters.take({key: big}, limits) == {key}
        assert await counters.take({key: big}, limits) == {key}
        assert await counters.take({key: 1}, limits) == set()
        assert await pool.fetchval("SELECT count FROM rate_limit_counters") == 2 * big
    finally:
        await pool.close()


async def test_the_byte_quota_is_429_on_the_shared_counters(ingest_settings, engine):
    size = len(make_png(64, 64, 1))
    async with running_ingest(**ingest_settings | {"install_daily_bytes": size}) as ingest:
        post = ingest.client.post
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(1)]))).status_code == 200
        refused = await post("/contribute/bulk-crops", json=bulk_body([icon_item(2)]))
    assert refused.status_code == 429
    assert (refused.json()["scope"], refused.json()["limit"]) == ("install_bytes", size)
    async with engine.connect() as connection:
        counted = dict(
            (
                await connection.execute(
                    text("SELECT scope, count FROM rate_limit_counters WHERE subject = :i"), {"i": INSTALL}
                )
            ).all()
        )
    assert counted == {"install": 1, "install_bytes": size}


async def test_migration_0004_drops_the_rows_that_held_addresses(empty_database_url):
    await asyncio.to_thread(migrations.upgrade, empty_database_url, "0003")
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO rate_limit_counters (scope, subject, day, count) VALUES "
                    "('ip', '198.51.100.23', '2026-12-01', 5), ('install', 'install-0001', '2026-12-01', 3)"
                )
            )
        await asyncio.to_thread(migrations.upgrade, empty_database_url, "0004")
        assert await rows_as_text(engine) == ["(install,install-0001,2026-12-01,3)"]
    finally:
        await engine.dispose()
