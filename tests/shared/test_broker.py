import asyncio
import uuid

import aio_pika
import aiormq
import pytest
from aio_pika.abc import DeliveryMode

from shared.broker import (
    DEAD_LETTER_REASON,
    ORIGINAL_ROUTING_KEY,
    EventPublisher,
    TopologyMismatch,
    UnroutableMessage,
)
from shared.events import IconCropContributed, TrainingRequested
from shared.topology import Topology, declare_topology
from tests.utils.broker import queue_depth, wait_for_messages
from tests.utils.images import make_png


def icon_event() -> IconCropContributed:
    return IconCropContributed(
        install_id="install-1", crop_sha256="cd" * 32, png=make_png(), slot="Deflector", label="X"
    )


async def test_topology_declares_idempotently_with_the_promised_arguments(broker_url, topology, amqp_channel):
    await declare_topology(amqp_channel, topology)
    await declare_topology(amqp_channel, topology)
    for consumer in topology.consumers:
        assert await queue_depth(amqp_channel, topology.queue(consumer.role)) == 0
        assert await queue_depth(amqp_channel, topology.dead_letter_queue(consumer.role)) == 0
    # Redeclaring with any other argument is refused by the broker, which proves the arguments in force.
    changed = dict(topology.queue_arguments(topology.consumer("voting")), **{"x-delivery-limit": 99})
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await amqp_channel.declare_queue(topology.queue("voting"), durable=True, arguments=changed)


async def test_queues_are_durable_quorum_queues_with_dead_letter_targets(topology):
    for consumer in topology.consumers:
        arguments = topology.queue_arguments(consumer)
        assert arguments["x-queue-type"] == "quorum"
        assert arguments["x-dead-letter-exchange"] == topology.dead_letter_exchange
        assert arguments["x-delivery-limit"] == topology.delivery_limit
    for role in ("trainer", "publisher"):  # one at a time: long trainings, Hub commits in order
        assert topology.queue_arguments(topology.consumer(role))["x-single-active-consumer"] is True
    assert "x-single-active-consumer" not in topology.queue_arguments(topology.consumer("voting"))


async def test_events_are_routed_to_their_consumer_queue_persistent_and_identified(
    publisher, topology, amqp_channel
):
    event = icon_event()
    request = TrainingRequested(snapshot_id=uuid.uuid4(), reason="threshold", new_labels=10, total_labels=12)
    await publisher.publish(event)
    await publisher.publish(request)
    [contribution] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    [training] = await wait_for_messages(amqp_channel, topology.queue("trainer"), 1)
    assert contribution.delivery_mode == DeliveryMode.PERSISTENT
    assert contribution.message_id == event.message_id
    assert contribution.headers["schema_version"] == 1
    assert contribution.body == event.to_json()
    assert training.message_id == request.message_id


async def test_an_unroutable_publish_raises_instead_of_vanishing(publisher, topology):
    with pytest.raises(UnroutableMessage, match="nobody.listens"):
        await publisher.publish_raw(topology.events_exchange, "nobody.listens", b"{}", message_id="m-1")


async def test_many_publishes_in_flight_each_get_their_own_confirm(publisher, topology, amqp_channel):
    events = [icon_event() for _ in range(200)]
    await asyncio.gather(*(publisher.publish(event) for event in events))
    received = await wait_for_messages(amqp_channel, topology.queue("voting"), 200)
    assert {m.message_id for m in received} == {e.message_id for e in events}


async def test_dead_letter_keeps_the_body_and_says_why(publisher, topology, amqp_channel):
    await publisher.dead_letter(
        "voting",
        b'{"x": 1}',
        message_id="m-2",
        headers={"h": "v"},
        reason="because",
        routing_key="contribution.x",
    )
    [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)
    assert dead.body == b'{"x": 1}'
    assert dead.headers[DEAD_LETTER_REASON] == "because"
    assert dead.headers["h"] == "v"
    assert dead.headers[ORIGINAL_ROUTING_KEY] == "contribution.x"


async def test_the_trainer_queue_feeds_a_single_active_consumer(publisher, topology, broker_url):
    received: dict[str, int] = {"a": 0, "b": 0}
    all_received = asyncio.Event()
    connections = [await aio_pika.connect(broker_url) for _ in received]
    try:
        for name, connection in zip(received, connections, strict=True):
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            queue = await channel.get_queue(topology.queue("trainer"), ensure=False)

            async def on_message(message, name=name):
                received[name] += 1
                await message.ack()
                if sum(received.values()) == 6:
                    all_received.set()

            await queue.consume(on_message)
        for _ in range(6):
            await publisher.publish(
                TrainingRequested(snapshot_id=uuid.uuid4(), reason="admin", new_labels=0, total_labels=0)
            )
        await asyncio.wait_for(all_received.wait(), timeout=15)
        assert sorted(received.values()) == [0, 6]
    finally:
        for connection in connections:
            await connection.close()


async def test_publishing_without_a_connection_is_an_error(broker_url):
    publisher = EventPublisher(broker_url, Topology(namespace="unused"))
    with pytest.raises(Exception, match="not connected"):
        await publisher.publish(icon_event())


async def test_the_broker_dead_letters_a_message_requeued_past_the_delivery_limit(
    publisher, topology, amqp_channel
):
    """The backstop behind every consumer: even one that dies or nacks forever cannot loop a message."""
    event = icon_event()
    await publisher.publish(event)
    queue = await amqp_channel.get_queue(topology.queue("voting"), ensure=False)
    deliveries = 0
    async with asyncio.timeout(
        15
    ):  # a requeued message that never came back fails here, not at the suite's timeout
        while deliveries <= topology.delivery_limit:
            message = await queue.get(fail=False, no_ack=False)
            if message is None:
                await asyncio.sleep(0.05)  # basic.get does not wait: poll until the requeue lands
                continue
            deliveries += 1
            await message.nack(requeue=True)
    [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)
    assert dead.message_id == event.message_id
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert await queue_depth(amqp_channel, topology.queue("voting")) == 0


async def test_queues_declared_with_other_arguments_stop_the_service_with_a_clear_message(
    topology, broker_url
):
    changed = Topology(namespace=topology.namespace, delivery_limit=topology.delivery_limit + 3)
    publisher = EventPublisher(broker_url, changed)
    with pytest.raises(TopologyMismatch, match=f"namespace '{topology.namespace}'.*WARP_BROKER_NAMESPACE"):
        await asyncio.wait_for(publisher.connect_with_retry(delay=0.1), timeout=20)
