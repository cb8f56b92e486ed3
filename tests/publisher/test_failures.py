"""A permanent Hub error: the release is recorded as failed and the event dead-lettered with the reason."""

import asyncio

from faststream.rabbit import RabbitBroker
from sqlalchemy import text

from services.publisher.handlers import ReleaseService
from services.publisher.hub import PermanentPublishError
from shared.broker import DEAD_LETTER_REASON
from shared.consumer import RetryPolicy, subscribe_events
from shared.events import ModelTrained
from tests.publisher.conftest import trained_event
from tests.utils.broker import queue_depth, wait_for_messages


class RefusingHub:
    """Stands in for a Hub that rejects the token."""

    def __init__(self) -> None:
        self.attempts = 0

    def publish(self, version, files, *, tag=True):
        self.attempts += 1
        raise PermanentPublishError("Hub refused the token (401)")

    def read(self, revision, path):
        raise PermanentPublishError("Hub refused the token (401)")


async def test_a_permanent_error_is_recorded_and_dead_lettered_at_once(
    engine, broker_url, topology, publisher, amqp_channel
):
    hub = RefusingHub()
    service = ReleaseService(engine, hub)
    broker = RabbitBroker(broker_url, logger=None)
    subscribe_events(
        broker,
        topology,
        "publisher",
        {ModelTrained: service.on_model_trained},
        publisher,
        prefetch=1,
        retry=RetryPolicy(0, 0),
    )
    event = await trained_event(engine)
    await broker.start()
    try:
        await publisher.publish(event)
        [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("publisher"), 1)
    finally:
        await broker.stop()
    assert dead.message_id == event.message_id
    assert "failed permanently: Hub refused the token (401)" in dead.headers[DEAD_LETTER_REASON]
    assert hub.attempts == 1  # not retried: retrying cannot help
    async with engine.connect() as connection:
        row = (await connection.execute(text("SELECT status, error FROM model_versions"))).one()
        logged = await connection.scalar(text("SELECT count(*) FROM publication_log WHERE event = 'failed'"))
    assert row.status == "failed" and "401" in row.error and logged == 1
    await asyncio.sleep(0.1)
    assert await queue_depth(amqp_channel, topology.queue("publisher")) == 0
