"""The contribution endpoints on the real broker and quota store: what the in-memory fakes stand in for.

A 2xx or 503 answer comes after RabbitMQ confirmed (or could not take) every publish, and a confirmed message
is already in its queue, so the queue depth right after the answers is exact: no waiting for strays.
"""

import asyncio

from sqlalchemy import text

from shared.events import decode_event
from tests.ingest.bodies import INSTALL, bulk_body, icon_item, knowledge_body
from tests.ingest.conftest import UNREACHABLE_DB, running_ingest
from tests.utils.broker import queue_depth, wait_for_messages


async def counters(engine) -> dict:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT scope, subject, count FROM rate_limit_counters"))
        return {(row.scope, row.subject): row.count for row in rows}


async def voting_depth(amqp_channel, topology) -> int:
    return await queue_depth(amqp_channel, topology.queue("voting"))


async def test_a_contribution_reaches_the_queue_with_its_contribution_id(ingest, amqp_channel, topology):
    response = await ingest.client.post("/contribute", json=knowledge_body())
    assert response.status_code == 200
    assert await voting_depth(amqp_channel, topology) == 1
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    event = decode_event(message.body)
    assert message.message_id == event.message_id == response.json()["contribution_id"]
    assert message.routing_key == event.event_type == "contribution.knowledge"
    assert (event.install_id, event.item_name) == (INSTALL, "Phaser Array")


async def test_every_2xx_contribution_is_in_the_queue(ingest, amqp_channel, topology):
    async def post(i):
        return await ingest.client.post(
            "/contribute/bulk-crops", json=bulk_body([icon_item(i * 3 + k) for k in range(3)])
        )

    responses = await asyncio.gather(*(post(i) for i in range(20)))
    accepted = sum(r.json()["accepted"] for r in responses if r.status_code == 200)
    assert accepted == 60
    assert await voting_depth(amqp_channel, topology) == 60
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), accepted)
    assert len({m.message_id for m in messages}) == 60


async def test_the_daily_install_quota_is_429_and_rejects_spend_none(
    ingest_settings, amqp_channel, topology, engine
):
    async with running_ingest(**ingest_settings | {"install_daily_limit": 3}) as ingest:
        post = ingest.client.post
        assert (
            await post("/contribute/bulk-crops", json=bulk_body([icon_item(1), icon_item(2)]))
        ).status_code == 200
        assert (
            await post("/contribute/bulk-crops", json=bulk_body([icon_item(3, name="__x")]))
        ).status_code == 400
        too_many = await post("/contribute/bulk-crops", json=bulk_body([icon_item(4), icon_item(5)]))
        assert too_many.status_code == 429
        assert too_many.json()["scope"] == "install" and too_many.json()["limit"] == 3
        assert 0 < int(too_many.headers["Retry-After"]) <= 86401
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(6)]))).status_code == 200
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(7)]))).status_code == 429
        other_install = bulk_body([icon_item(8)], install_id="install-0002")
        assert (await post("/contribute/bulk-crops", json=other_install)).status_code == 200
    assert await voting_depth(amqp_channel, topology) == 4
    assert (await counters(engine))[("install", INSTALL)] == 3


async def test_the_daily_ip_quota_covers_every_install_behind_an_address(ingest_settings, engine):
    async with running_ingest(**ingest_settings | {"ip_daily_limit": 2}) as ingest:
        for n, expected in ((1, 200), (2, 200), (3, 429)):
            response = await ingest.client.post(
                "/contribute/bulk-crops", json=bulk_body([icon_item(n)], f"install-{n:04d}")
            )
            assert response.status_code == expected
        assert response.json()["scope"] == "ip"
    counted = await counters(engine)
    assert counted[("install", "install-0002")] == 1
    # the refused request took nothing from its install's quota either
    assert counted.get(("install", "install-0003"), 0) == 0


async def test_two_ingest_processes_share_the_quota_exactly(ingest_settings, engine):
    limit = 25
    settings = ingest_settings | {"install_daily_limit": limit}
    async with running_ingest(**settings) as first, running_ingest(**settings) as second:

        async def post(client, i):
            return (await client.post("/contribute/bulk-crops", json=bulk_body([icon_item(i)]))).status_code

        codes = await asyncio.gather(*(post((first, second)[i % 2].client, i) for i in range(60)))
    assert codes.count(200) == limit and codes.count(429) == 60 - limit
    assert (await counters(engine))[("install", INSTALL)] == limit


async def test_broker_outage_is_503_with_retry_after_and_quota_given_back(
    ingest, amqp_channel, topology, engine
):
    await ingest.runtime.publisher.close()
    response = await ingest.client.post("/contribute", json=knowledge_body())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "broker unavailable" in response.json()["detail"]
    assert await voting_depth(amqp_channel, topology) == 0
    assert (await counters(engine)).get(("install", INSTALL)) == 0  # taken, then given back


async def test_database_outage_is_503_and_publishes_nothing(ingest_settings, amqp_channel, topology):
    async with running_ingest(**ingest_settings | {"database_url": UNREACHABLE_DB}) as ingest:
        response = await ingest.client.post("/contribute", json=knowledge_body())
    assert response.status_code == 503
    assert "database unavailable" in response.json()["detail"]
    assert await voting_depth(amqp_channel, topology) == 0
