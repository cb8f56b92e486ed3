"""Operators' view of the dead-letter queues against the real broker: looking at them never loses a message, and
a replayed message starts with a fresh delivery budget."""

import asyncio
import logging
import uuid

import aio_pika
import pytest

from shared.broker import DEAD_LETTER_REASON
from shared.dead_letters import list_dead_letters, replay_dead_letters
from shared.events import IconCropContributed
from shared.topology import Topology, declare_topology, delete_topology
from tests.utils.broker import queue_depth, wait_for_messages
from tests.utils.images import make_png


def icon_event(label: str) -> IconCropContributed:
    return IconCropContributed(
        install_id="i", crop_sha256="ab" * 32, png=make_png(), slot="Deflector", label=label
    )


async def dead_letter(publisher, event: IconCropContributed, **headers) -> None:
    await publisher.dead_letter(
        "voting",
        event.to_json(),
        message_id=event.message_id,
        headers={"schema_version": event.schema_version, **headers},
        reason="handler failed on all 10 deliveries: RuntimeError('boom')",
        routing_key=event.event_type,
    )


async def test_looking_at_a_dead_letter_queue_25_times_loses_nothing(
    broker_url, topology, publisher, amqp_channel
):
    events = [icon_event(label) for label in "abc"]
    for event in events:
        await dead_letter(publisher, event)
    for _ in range(25):  # RabbitMQ 4.0-4.2 count each look as a delivery; 20 is their default limit
        letters = await list_dead_letters(amqp_channel, topology, "voting", limit=10)
        assert sorted(letter.message_id for letter in letters) == sorted(e.message_id for e in events)
    async with asyncio.timeout(10):  # the returns of the last look are applied asynchronously
        while await queue_depth(amqp_channel, topology.dead_letter_queue("voting")) != 3:
            await asyncio.sleep(0.05)
    # the broker holds the queue with a delivery limit no one reaches: declaring it so again is equivalent
    # (RabbitMQ refuses a declaration whose arguments differ), so no broker default applies to it
    connection = await aio_pika.connect(broker_url)
    async with connection:
        await (await connection.channel()).declare_queue(
            topology.dead_letter_queue("voting"),
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 2**31 - 1},
        )


async def test_a_replayed_message_has_a_fresh_delivery_budget_and_no_dead_letter_headers(
    topology, publisher, amqp_channel
):
    event = icon_event("a")
    await dead_letter(publisher, event, **{"x-delivery-count": 9, "x-acquired-count": 9})
    await list_dead_letters(amqp_channel, topology, "voting", limit=10)  # a look counts on the DLQ as well
    async with asyncio.timeout(10):
        while await queue_depth(amqp_channel, topology.dead_letter_queue("voting")) != 1:
            await asyncio.sleep(0.05)
    # a classic queue beside the consumer queue sees the headers exactly as the replay sent them (a quorum
    # queue would write its own x-delivery-count over them on RabbitMQ 3)
    tap = await amqp_channel.declare_queue(f"{topology.namespace}.tap", exclusive=True)
    await tap.bind(topology.events_exchange, routing_key=event.event_type)

    assert await replay_dead_letters(amqp_channel, publisher, topology, "voting", limit=10) == [
        event.message_id
    ]

    [replayed] = await wait_for_messages(amqp_channel, tap.name, 1)
    assert replayed.message_id == event.message_id and replayed.body == event.to_json()
    headers = replayed.headers or {}
    assert headers.get("schema_version") == event.schema_version
    for stale in ("x-delivery-count", "x-acquired-count", DEAD_LETTER_REASON, "x-warp-original-routing-key"):
        assert stale not in headers
    assert await queue_depth(amqp_channel, topology.dead_letter_queue("voting")) == 0
    [delivered] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    assert int((delivered.headers or {}).get("x-delivery-count") or 0) == 0


@pytest.mark.parametrize("limit", [1, 2])
async def test_listing_shows_at_most_the_limit_and_the_reason(topology, publisher, amqp_channel, limit):
    for label in "ab":
        await dead_letter(publisher, icon_event(label))
    letters = await list_dead_letters(amqp_channel, topology, "voting", limit=limit)
    assert len(letters) == limit
    assert letters[0].reason == "handler failed on all 10 deliveries: RuntimeError('boom')"
    assert letters[0].routing_key == "contribution.icon_crop" and letters[0].deaths == 0


async def test_a_dead_letter_queue_of_an_earlier_version_is_kept_with_its_messages(broker_url, caplog):
    topology = Topology(namespace=f"t{uuid.uuid4().hex[:12]}", delivery_limit=2)
    earlier = topology.dead_letter_queue("voting")
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(earlier, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="kept"), routing_key=earlier
        )
        try:
            with caplog.at_level(logging.WARNING, logger="shared.topology"):
                await declare_topology(channel, topology)
            [warning] = caplog.records
            assert warning.getMessage().startswith(f"dead-letter queue {earlier} was declared by an earlier")
            assert await queue_depth(channel, earlier) == 1  # the same channel still works
            assert await queue_depth(channel, topology.dead_letter_queue("trainer")) == 0
        finally:
            await delete_topology(await connection.channel(), topology)
