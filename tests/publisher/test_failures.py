"""A permanent Hub error, through the composition root and the real broker: the release is recorded as failed
and the event dead-lettered with the reason."""

from sqlalchemy import text

from services.publisher.bootstrap import bootstrap
from services.publisher.settings import PublisherSettings
from shared.broker import DEAD_LETTER_REASON
from tests.publisher.conftest import trained_event
from tests.publisher.fakes import FakeHub
from tests.utils.broker import wait_for_messages


async def test_a_permanent_error_is_recorded_and_dead_lettered_at_once(
    engine, database_url, broker_url, topology, publisher, amqp_channel
):
    settings = PublisherSettings(
        database_url=database_url,
        broker_url=broker_url,
        broker_namespace=topology.namespace,
        delivery_limit=topology.delivery_limit,
        health_port=0,
    )
    service = bootstrap(
        settings, engine=engine, hub=FakeHub(refuse="Hub refused the token (401)"), publisher=publisher
    )
    first = await trained_event(engine, trained_at="2026-05-01T10:00:00.000000+00:00Z")
    second = await trained_event(engine, trained_at="2026-05-02T10:00:00.000000+00:00Z")
    await service.broker.start()
    try:
        await publisher.publish(first)
        await publisher.publish(second)
        # Prefetch 1: the second is delivered only once the first was settled, and a first that had gone back
        # to the queue would have been delivered again before it (a quorum queue serves returns first).
        dead = await wait_for_messages(amqp_channel, topology.dead_letter_queue("publisher"), 2)
    finally:
        await service.broker.stop()
    assert [message.message_id for message in dead] == [first.message_id, second.message_id]
    for message in dead:
        assert "failed permanently: Hub refused the token (401)" in message.headers[DEAD_LETTER_REASON]
    assert service.hub.attempts == 2  # each tried once: retrying cannot help
    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT status, error FROM model_versions"))).all()
        logged = await connection.scalar(text("SELECT count(*) FROM publication_log WHERE event = 'failed'"))
    assert [row.status for row in rows] == ["failed", "failed"] and all("401" in row.error for row in rows)
    assert logged == 2
