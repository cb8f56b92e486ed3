"""Wiring a service's event handlers to its queue, with the acknowledgement rules every consumer owes:

- ack only after the handler returned (handlers commit their own transaction before returning);
- a message that can never be processed (not JSON, unknown event type or schema version, invalid fields, a
  handler raising ``Unprocessable``, or a value the database refuses: a data error) goes to the dead-letter queue
  at once, with the reason in a header;
- an outage (database or broker unreachable) is waited out in place, with backoff, without spending the
  message's deliveries: a Postgres restart must not send good messages to the dead-letter queue;
- any other failure is retried through the queue with backoff; on its last allowed delivery the message is
  dead-lettered with the error (the quorum queue's own delivery limit stays as the backstop, should the
  consumer die mid-way). Retries use ``basic.reject`` with requeue, which every RabbitMQ version counts.

``judge_failure`` is that decision, written once for this FastStream subscriber and for ``shared.batch_consumer``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

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


# What the database refuses in a value itself, so the same message fails the same way on every delivery: class 22
# (data exception: U+0000 in text or jsonb, a value too long or out of range) and, of class 23, a NOT NULL or
# CHECK violation. Unique and foreign-key violations (23505, 23503) are left to retry: they can be races between
# consumers (a row another transaction is adding or deleting), which a redelivery resolves.
DATA_ERROR_CLASSES = ("22",)
DATA_ERROR_STATES = ("23502", "23514")


def data_error(error: BaseException) -> BaseException | None:
    """The database's own error when ``error`` is (or wraps: SQLAlchemy's ``orig``, a ``raise ... from``) a
    data error, else None."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        state = str(getattr(current, "sqlstate", None) or "")
        if state[:2] in DATA_ERROR_CLASSES or state in DATA_ERROR_STATES:
            return current
        pending += [getattr(current, "orig", None), current.__cause__]
    return None


def is_outage(error: BaseException) -> bool:
    """A dependency is unreachable, not the message at fault."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(
        error,
        OperationalError | InterfaceError | ConnectionError | OSError | TimeoutError | BrokerUnavailable,
    ) or isinstance(error, aiormq.exceptions.AMQPConnectionError)


class Action(StrEnum):
    RIDE_OUT = "ride_out"  # call the handler again in place, without spending the delivery
    DEAD_LETTER = "dead_letter"
    REQUEUE = "requeue"  # back to the queue, after a backoff, for another delivery


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str


def judge_failure(
    error: BaseException, *, delivery: int, delivery_limit: int, outage_seconds: float = 0.0
) -> Verdict:
    """What becomes of a message whose handling raised ``error`` on its ``delivery``-th delivery (1: the first),
    ``outage_seconds`` after it started waiting out an outage in place."""
    if isinstance(error, Unprocessable | UndecodableEvent):
        return Verdict(Action.DEAD_LETTER, str(error))
    refused = data_error(error)
    if refused is not None:
        return Verdict(
            Action.DEAD_LETTER,
            f"the database refused a value (SQLSTATE {getattr(refused, 'sqlstate', '')}, "
            f"{type(refused).__name__}): {refused}",
        )
    if is_outage(error) and outage_seconds <= OUTAGE_PATIENCE_SECONDS:
        return Verdict(Action.RIDE_OUT, repr(error))
    if delivery >= delivery_limit:
        return Verdict(Action.DEAD_LETTER, f"handler failed on all {delivery} deliveries: {error!r}")
    return Verdict(Action.REQUEUE, repr(error))


def delivery_number(headers: Mapping[str, Any] | None) -> int:
    """1 on a message's first delivery; quorum queues count the earlier ones in ``x-delivery-count``."""
    return int((headers or {}).get("x-delivery-count") or 0) + 1


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff before a failed message goes back to the queue, so a short outage does not burn its deliveries."""

    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, previous_deliveries: int) -> float:
        return min(self.max_seconds, self.base_seconds * 2**previous_deliveries)


DEFAULT_RETRY = RetryPolicy()


async def handle_judged(
    handler: Callable[[], Awaitable[None]],
    *,
    delivery: int,
    delivery_limit: int,
    retry: RetryPolicy,
    log_extra: Mapping[str, Any] | None = None,
    log_verdict: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Verdict | None:
    """Call ``handler``: None once it returned, else the verdict on its failure. While the verdict is to ride
    an outage out, wait (with backoff) and call it again.

    The verdict is logged (at ERROR with the traceback, except for a deliberate ``Unprocessable``, whose
    dead-letter reason says why) unless ``log_verdict`` is False: a caller that does not apply it logs its own
    line."""
    started, attempt = clock(), 0
    while True:
        try:
            await handler()
            return None
        except Exception as error:
            verdict = judge_failure(
                error, delivery=delivery, delivery_limit=delivery_limit, outage_seconds=clock() - started
            )
            if verdict.action is not Action.RIDE_OUT:
                if log_verdict and not isinstance(error, Unprocessable):
                    log.error(
                        "handler failed; verdict: %s",
                        verdict.action,
                        exc_info=error,
                        extra=dict(log_extra or {}),
                    )
                return verdict
            log.warning("dependency unavailable (%r); retrying in place", error)
            await sleep(max(retry.delay(attempt), 0.05))
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
        delivery = delivery_number(headers)

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
            verdict = judge_failure(problem, delivery=delivery, delivery_limit=topology.delivery_limit)
        else:
            verdict = await handle_judged(
                lambda: by_type[event.event_type](event),
                delivery=delivery,
                delivery_limit=topology.delivery_limit,
                retry=retry,
                log_extra={"message_id": message_id, "event_type": event.event_type, "delivery": delivery},
            )
        if verdict is None:
            await message.ack()
        elif verdict.action is Action.DEAD_LETTER:
            await dead_letter(verdict.reason)
        else:
            await asyncio.sleep(retry.delay(delivery - 1))
            await message.raw_message.reject(requeue=True)
