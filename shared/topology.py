"""Broker topology, declared in one place: exchanges, consumer queues, their dead-letter queues and bindings.

Every name is prefixed with a namespace (``WARP_BROKER_NAMESPACE``), so deployments and tests can share a vhost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

log = logging.getLogger(__name__)

DEFAULT_DELIVERY_LIMIT = 10
# Listing a dead-letter queue returns each message it shows to the queue, and RabbitMQ 4.0 to 4.2 count every
# return as a delivery: a quorum queue declared without a limit gets one of 20 there and then drops the message.
# Not -1 ("unlimited" from 4.0 on): RabbitMQ 3.x drops a message on its first return under -1 (measured on
# 3.10). So an explicit limit that no one reaches.
DEAD_LETTER_DELIVERY_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ConsumerQueue:
    """A durable quorum queue with a dead-letter queue behind it."""

    role: str
    routing_keys: tuple[str, ...]
    single_active_consumer: bool = False


@dataclass(frozen=True)
class FeedQueue:
    """A bounded classic queue for events no worker consumes (progress, releases): the operators' activity feed.

    It exists so those events are routable (an unroutable publish is an error) and can be watched.
    """

    role: str
    routing_keys: tuple[str, ...]
    max_length: int = 100_000
    message_ttl_ms: int = 7 * 24 * 3600 * 1000


CONSUMER_QUEUES = (
    ConsumerQueue(
        "voting", ("contribution.*", "training.force_requested", "moderation.*", "model.predicted")
    ),
    ConsumerQueue("trainer", ("training.requested",), single_active_consumer=True),
    # the trainer's predictor: the published model's predictions voting asks for (a queue of its own, so a
    # training run never delays them, nor they a training request)
    ConsumerQueue("predictor", ("model.prediction_requested",)),
    # one active publisher (others stand by): releases are committed to the Hub one at a time, in queue order
    ConsumerQueue(
        "publisher",
        (
            "model.trained",
            "knowledge.publish_requested",
            "model.rollback_requested",
            "release.mode_requested",
            "release.approval_requested",
        ),
        single_active_consumer=True,
    ),
)
FEED_QUEUES = (FeedQueue("activity", ("training.progress", "model.published", "knowledge.published")),)


@dataclass(frozen=True)
class Topology:
    namespace: str = "warp"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    consumers: tuple[ConsumerQueue, ...] = CONSUMER_QUEUES
    feeds: tuple[FeedQueue, ...] = field(default=FEED_QUEUES)

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    def queue(self, role: str) -> str:
        return f"{self.namespace}.{role}"

    def dead_letter_queue(self, role: str) -> str:
        return f"{self.queue(role)}.dlq"

    def consumer(self, role: str) -> ConsumerQueue:
        for consumer in self.consumers:
            if consumer.role == role:
                return consumer
        raise KeyError(f"no consumer queue for role {role!r}; known: {[c.role for c in self.consumers]}")

    def queue_arguments(self, consumer: ConsumerQueue) -> dict[str, object]:
        arguments: dict[str, object] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.queue(consumer.role),
            # at-least-once dead-lettering: a message is removed only once the DLQ confirmed it.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if consumer.single_active_consumer:
            arguments["x-single-active-consumer"] = True
        return arguments

    @staticmethod
    def dead_letter_queue_arguments() -> dict[str, object]:
        return {"x-queue-type": "quorum", "x-delivery-limit": DEAD_LETTER_DELIVERY_LIMIT}

    def all_queue_names(self) -> list[str]:
        names = [self.queue(c.role) for c in self.consumers] + [
            self.dead_letter_queue(c.role) for c in self.consumers
        ]
        return names + [self.queue(f.role) for f in self.feeds]


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare everything; safe to run again and from every replica (declarations are idempotent)."""
    events = await channel.declare_exchange(topology.events_exchange, ExchangeType.TOPIC, durable=True)
    dead_letters = await channel.declare_exchange(
        topology.dead_letter_exchange, ExchangeType.DIRECT, durable=True
    )
    for consumer in topology.consumers:
        dlq = await _declare_dead_letter_queue(channel, topology, consumer.role)
        await dlq.bind(dead_letters, routing_key=topology.queue(consumer.role))
        queue = await channel.declare_queue(
            topology.queue(consumer.role), durable=True, arguments=topology.queue_arguments(consumer)
        )
        for routing_key in consumer.routing_keys:
            await queue.bind(events, routing_key=routing_key)
    for feed in topology.feeds:
        queue = await channel.declare_queue(
            topology.queue(feed.role),
            durable=True,
            arguments={
                "x-max-length": feed.max_length,
                "x-overflow": "drop-head",
                "x-message-ttl": feed.message_ttl_ms,
            },
        )
        for routing_key in feed.routing_keys:
            await queue.bind(events, routing_key=routing_key)


async def _declare_dead_letter_queue(
    channel: AbstractChannel, topology: Topology, role: str
) -> AbstractQueue:
    """A dead-letter queue declared by an earlier version, without a delivery limit, is kept as it is, with its
    messages (RabbitMQ cannot change a queue's arguments): it still takes dead letters, and the warning says
    how to renew it. The probe runs on a channel of its own, since a refused declaration closes the channel."""
    name, arguments = topology.dead_letter_queue(role), topology.dead_letter_queue_arguments()
    probe = await (await channel.get_underlay_channel()).connection.channel()
    try:
        await probe.queue_declare(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as error:
        log.warning(
            "dead-letter queue %s was declared by an earlier version, without a delivery limit: on RabbitMQ 4 "
            "each look at it counts as a delivery and the 20th drops the message; see docs/operations.md "
            "(dead-letter queues of earlier versions) to renew it (%s)",
            name,
            error,
        )
        return await channel.declare_queue(name, passive=True)
    finally:
        if not probe.is_closed:
            await probe.close()
    return await channel.declare_queue(name, durable=True, arguments=arguments)


async def delete_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Remove every queue and exchange of a namespace (tests and decommissioning)."""
    for name in topology.all_queue_names():
        await channel.queue_delete(name)
    await channel.exchange_delete(topology.events_exchange)
    await channel.exchange_delete(topology.dead_letter_exchange)


async def declare(url: str, topology: Topology) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        await declare_topology(await connection.channel(), topology)
