"""A value the database refuses costs only its own message: dead-lettered at once with the reason while the rest
of its batch becomes votes, with no pause of the consumer."""

import asyncio
import json

from sqlalchemy import text

from shared.broker import DEAD_LETTER_REASON
from shared.consumer import RetryPolicy
from tests.utils.broker import queue_depth, wait_for_messages
from tests.voting.conftest import consuming, crop_vote


async def test_a_nul_in_one_contribution_dead_letters_it_at_once_and_the_other_49_become_votes(
    voting_settings, topology, publisher, service, engine, amqp_channel
):
    good = [crop_vote(f"install-{i}", i, "Phaser") for i in range(49)]
    # built directly, bypassing ingest (which refuses it): Postgres stores no U+0000 in text or jsonb
    poison = crop_vote("install-nul", 99, "Phaser")
    body = json.loads(poison.to_json())
    body["slot"] = "Fore\x00Weapon"
    calls_with_poison: list[int] = []
    sleeps: list[float] = []

    async def handle(events):
        if any(event.message_id == poison.message_id for event in events):
            calls_with_poison.append(len(events))
        await service.handle(events)

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with consuming(
        voting_settings,
        topology,
        publisher,
        handle,
        retry=RetryPolicy(base_seconds=1, max_seconds=30),
        sleep=record_sleep,
    ) as [consumer]:
        await asyncio.gather(
            *(publisher.publish(event) for event in good[:25]),
            publisher.publish_raw(
                topology.events_exchange,
                poison.event_type,
                json.dumps(body).encode(),
                message_id=poison.message_id,
                headers={"schema_version": poison.schema_version},
            ),
            *(publisher.publish(event) for event in good[25:]),
        )
        [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)
        async with asyncio.timeout(20):
            while consumer.processed < 49:
                await asyncio.sleep(0.05)
        assert await queue_depth(amqp_channel, topology.queue("voting")) == 0
    async with engine.connect() as connection:
        votes = (await connection.execute(text("SELECT count(*) FROM votes"))).scalar()
    assert votes == 49
    assert dead.message_id == poison.message_id
    reason = dead.headers[DEAD_LETTER_REASON]
    assert reason == (
        "the database refused a value (SQLSTATE 22P05, UntranslatableCharacterError): "
        "unsupported Unicode escape sequence\nDETAIL:  \\u0000 cannot be converted to text."
    )
    # one delivery: tried within its batch, then alone, and dead-lettered; never requeued, no backoff slept
    assert len(calls_with_poison) == 2 and calls_with_poison[-1] == 1
    assert sleeps == []
