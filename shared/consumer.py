"""Wiring a service's event handlers to its queue, with the acknowledgement rules every consumer owes:

- ack only after the handler returned (handlers commit their own transaction before returning);
- a message that can never be processed (not JSON, unknown event type or schema version, invalid fields, or a
  handler raising ``Unprocessable``) goes to the dead-letter queue at once, with the reason in a header;
- an outage (database or broker unreachable) is waited out in place, with backoff, without spending the
  message's deliveries: a Postgres restart must not send good messages to the dead-letter queue;
- any other failure is retried through the queue with backoff; on its last allowed delivery the message is
  dead-lettered with the error (the quorum queue's own delivery limit stays as the backstop, should the
  consumer die mid-way). Retries use ``basic.reject`` with requeue, which every RabbitMQ version counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiormq
from faststream import AckPolicy
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from shared.broker import BrokerUnavailable, EventPublisher
from shared.events import Event, UndecodableEvent, decode_event
from shared.topology import Topology

log = logging.getLogger(__name__)

EventHandler = Callable[[Event], Awaitable[None]]
OUTAGE_PATIENCE_SECONDS = 20 * 60  # below RabbitMQ's 30-minute consumer timeout


class Unprocessable(Exception):
    """Raised by a handler when retrying cannot help: the message goes to the dead-letter queue at once, with
    this exception's text as the reason."""


def is_outage(error: BaseException) -> bool:
    """A dependency is unreachable, not the message at fault."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(
        error,
        OperationalError | InterfaceError | ConnectionError | OSError | TimeoutError | BrokerUnavailable,
    ) or isinstance(error, aiormq.exceptions.AMQPConnectionError)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff before a failed message goes back to the queue, so a short outage does not burn its deliveries."""

    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, previous_deliveries: int) -> float:
        return min(self.max_seconds, self.base_seconds * 2**previous_deliveries)


DEFAULT_RETRY = RetryPolicy()


async def call_riding_out_outages(handler: Callable[[], Awaitable[None]], retry: RetryPolicy) -> None:
    """Call ``handler``; while it fails because a dependency is down, wait and call it again (up to
    ``OUTAGE_PATIENCE_SECONDS``). Other errors propagate at once."""
    started, attempt = time.monotonic(), 0
    while True:
        try:
            await handler()
            return
        except Exception as error:
            if not is_outage(error) or time.monotonic() - started > OUTAGE_PATIENCE_SECONDS:
                raise
            log.warning("dependency unavailable (%r); retrying in place", error)
            await asyncio.sleep(max(retry.delay(attempt), 0.05))
            attempt += 1


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

        async def dead_letter(reason: str) -> None:
            log.warning("dead-lettering message", extra={"message_id": message_id, "reason": reason})
            try:
                await publisher.dead_letter(
                    role,
                    message.body,
                    message_id=message_id,
                    headers=headers,
                    reason=reason,
                    routing_key=message.raw_message.routing_key or "",
                )
            except Exception:
                log.exception(
                    "could not dead-letter; the message goes back to the queue",
                    extra={"message_id": message_id},
                )
                await message.nack(requeue=True)
                return
            await message.ack()

        try:
            event = decode_event(message.body, accepted)
        except UndecodableEvent as problem:
            await dead_letter(str(problem))
            return
        try:
            await call_riding_out_outages(lambda: by_type[event.event_type](event), retry)
        except Unprocessable as error:
            await dead_letter(str(error))
            return
        except Exception as error:
            deliveries = int(headers.get("x-delivery-count") or 0) + 1
            if deliveries >= topology.delivery_limit:
                await dead_letter(f"handler failed on all {deliveries} deliveries: {error!r}")
                return
            log.exception(
                "handler failed; message will be redelivered",
                extra={"message_id": message_id, "event_type": event.event_type, "delivery": deliveries},
            )
            await asyncio.sleep(retry.delay(deliveries - 1))
            await message.raw_message.reject(requeue=True)
            return
        await message.ack()
