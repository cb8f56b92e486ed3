"""The batch consumer's acknowledgement rules against the real broker."""

import asyncio
import contextlib
import logging

from shared.batch_consumer import BatchConsumer
from shared.broker import DEAD_LETTER_REASON
from shared.consumer import RetryPolicy
from shared.events import IconCropContributed
from tests.utils.broker import queue_depth, wait_for_messages
from tests.utils.images import make_png


def icon_event(label: str) -> IconCropContributed:
    return IconCropContributed(
        install_id="i", crop_sha256="ab" * 32, png=make_png(), slot="Deflector", label=label
    )


@contextlib.asynccontextmanager
async def consuming(broker_url, topology, publisher, handler):
    consumer = BatchConsumer(
        broker_url,
        topology,
        "voting",
        handler,
        publisher,
        accepted=frozenset({"contribution.icon_crop"}),
        max_batch=50,
        retry=RetryPolicy(0, 0),
    )
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_poison_message_in_a_batch_is_dead_lettered_with_its_error_and_the_rest_is_kept(
    broker_url, topology, publisher, amqp_channel, caplog
):
    stored: list[str] = []

    async def handler(events):
        if any(event.label == "poison" for event in events):
            raise ValueError("cannot store poison")
        stored.extend(event.label for event in events)

    caplog.set_level(logging.INFO, logger="shared")
    async with consuming(broker_url, topology, publisher, handler) as consumer:
        await asyncio.gather(
            *(publisher.publish(icon_event(label)) for label in ["a", "b", "poison", "c", "d"])
        )
        [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)
        async with asyncio.timeout(10):
            while consumer.processed < 4:  # counted once acknowledged
                await asyncio.sleep(0.05)
        assert await queue_depth(amqp_channel, topology.queue("voting")) == 0
    assert sorted(stored) == ["a", "b", "c", "d"] and consumer.processed == 4
    assert (
        "handler failed on all 2 deliveries: ValueError('cannot store poison')"
        in dead.headers[DEAD_LETTER_REASON]
    )
    # per delivery of the poison message (2): one WARNING for its failed batch, one ERROR with the traceback
    # for its own verdict
    failed_batches = [r for r in caplog.records if r.getMessage().startswith("batch of ")]
    verdicts = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.levelno for r in failed_batches] == [logging.WARNING] * 2
    assert all(r.exc_info is None for r in failed_batches)
    assert [r.getMessage() for r in verdicts] == [
        "handler failed; verdict: requeue",
        "handler failed; verdict: dead_letter",
    ]
    assert all(r.exc_info is not None for r in verdicts)


async def test_messages_are_acknowledged_only_after_the_handler_returns(
    broker_url, topology, publisher, amqp_channel
):
    release = asyncio.Event()
    seen: list[str] = []

    async def slow_handler(events):
        seen.extend(e.label for e in events)
        await release.wait()

    event = icon_event("a")
    async with consuming(broker_url, topology, publisher, slow_handler) as consumer:
        await publisher.publish(event)
        async with asyncio.timeout(10):
            while not seen:
                await asyncio.sleep(0.05)
        assert consumer.processed == 0
    # the consumer died mid-batch: the unacknowledged message is still there for the next one
    [again] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    assert again.message_id == event.message_id
