"""Wiring a service's event handlers to its queue, with the acknowledgement rules every consumer owes:

- ack only after the handler returned (handlers commit their own transaction before returning);
- a message that can never be processed (not JSON, unknown event type or schema version, invalid fields) goes
  to the dead-letter queue at once, with the reason in a header;
- a handler that fails is retried with backoff; on its last allowed delivery it is dead-lettered with the error
  (the quorum queue's own delivery limit stays as the backstop, should the consumer die mid-way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from faststream import AckPolicy
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

from shared.broker import EventPublisher
from shared.events import Event, UndecodableEvent, decode_event
from shared.topology import Topology

log = logging.getLogger(__name__)

EventHandler = Callable[[Event], Awaitable[None]]


class Unprocessable(Exception):
    """Raised by a handler when retrying cannot help: the message goes to the dead-letter queue at once, with
    this exception's text as the reason."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff before a failed message goes back to the queue, so a short outage does not burn its deliveries."""

    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, previous_deliveries: int) -> float:
        return min(self.max_seconds, self.base_seconds * 2**previous_deliveries)


DEFAULT_RETRY = RetryPolicy()


def subscribe_events(
    broker: RabbitBroker,
    topology: Topology,
    role: str,
    handlers: Mapping[type[Event], EventHandler],
    publisher: EventPublisher,
    *,
    prefetch: int,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> None:
    by_type = {event_class.event_type: handler for event_class, handler in handlers.items()}
    accepted = frozenset(by_type)
    queue = RabbitQueue(topology.queue(role), queue_type=QueueType.QUORUM, declare=False)

    @broker.subscriber(queue, ack_policy=AckPolicy.MANUAL, channel=Channel(prefetch_count=prefetch))
    async def consume(message: RabbitMessage) -> None:
        headers = dict(message.headers or {})
        message_id = message.message_id or ""
        try:
            event = decode_event(message.body, accepted)
        except UndecodableEvent as problem:
            log.warning("dead-lettering message", extra={"message_id": message_id, "reason": str(problem)})
            try:
                await publisher.dead_letter(
                    role,
                    message.body,
                    message_id=message_id,
                    headers=headers,
                    reason=str(problem),
                    routing_key=message.raw_message.routing_key or "",
                )
            except Exception:
                log.exception(
                    "could not dead-letter message; it goes back to the queue",
                    extra={"message_id": message_id},
                )
                await message.nack(requeue=True)
                return
            await message.ack()
            return
        try:
            await by_type[event.event_type](event)
        except Exception as error:
            deliveries = int(headers.get("x-delivery-count") or 0) + 1
            if isinstance(error, Unprocessable) or deliveries >= topology.delivery_limit:
                reason = (
                    str(error)
                    if isinstance(error, Unprocessable)
                    else f"handler failed on all {deliveries} deliveries: {error!r}"
                )
                log.exception("dead-lettering message", extra={"message_id": message_id, "reason": reason})
                await publisher.dead_letter(
                    role,
                    message.body,
                    message_id=message_id,
                    headers=headers,
                    reason=reason,
                    routing_key=message.raw_message.routing_key or "",
                )
                await message.ack()
                return
            log.exception(
                "handler failed; message will be redelivered",
                extra={"message_id": message_id, "event_type": event.event_type, "delivery": deliveries},
            )
            await asyncio.sleep(retry.delay(deliveries - 1))
            await message.nack(requeue=True)
            return
        await message.ack()
