import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from shared.events import TrainingRequested
from shared.outbox import OutboxRelay, enqueue, outbox
from tests.utils.broker import queue_depth, wait_for_messages


def request() -> TrainingRequested:
    return TrainingRequested(snapshot_id=uuid.uuid4(), reason="threshold", new_labels=10, total_labels=10)


async def pending(engine) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )


async def test_an_event_leaves_only_if_its_transaction_commits(engine, publisher, topology, amqp_channel):
    relay = OutboxRelay(engine, publisher, topology.events_exchange)
    committed = request()
    with pytest.raises(RuntimeError):
        async with engine.begin() as connection:
            await enqueue(connection, request())
            raise RuntimeError("crash before commit")
    async with engine.begin() as connection:
        await enqueue(connection, committed)
        await enqueue(connection, committed)
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0
    [message] = await wait_for_messages(amqp_channel, topology.queue("trainer"), 1)
    assert message.message_id == committed.message_id
    assert message.body == committed.to_json()
    assert await pending(engine) == 0


async def test_events_stay_pending_while_the_broker_refuses_them(engine, publisher, topology):
    relay = OutboxRelay(engine, publisher, topology.events_exchange)
    async with engine.begin() as connection:
        await enqueue(connection, request())
    await publisher.close()
    with pytest.raises(Exception, match="not connected"):
        await relay.relay_once()
    assert await pending(engine) == 1


async def test_concurrent_relays_send_each_event_once(engine, publisher, topology, amqp_channel):
    events = [request() for _ in range(250)]
    async with engine.begin() as connection:
        for event in events:
            await enqueue(connection, event)
    relays = [OutboxRelay(engine, publisher, topology.events_exchange, batch_size=20) for _ in range(3)]

    async def drain(relay):
        while await relay.relay_once():
            pass

    await asyncio.gather(*(drain(relay) for relay in relays))
    # every publish was confirmed before its relay returned, so the queue already holds all that was sent
    assert await queue_depth(amqp_channel, topology.queue("trainer")) == len(events)
    received = await wait_for_messages(amqp_channel, topology.queue("trainer"), len(events))
    assert sorted(m.message_id for m in received) == sorted(e.message_id for e in events)


async def test_the_running_relay_picks_up_new_events(engine, publisher, topology, amqp_channel):
    relay = OutboxRelay(engine, publisher, topology.events_exchange, poll_seconds=5)
    task = asyncio.create_task(relay.run())
    try:
        event = request()
        async with engine.begin() as connection:
            await enqueue(connection, event)
        relay.wake()
        [message] = await wait_for_messages(amqp_channel, topology.queue("trainer"), 1, timeout=3)
        assert message.message_id == event.message_id
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
