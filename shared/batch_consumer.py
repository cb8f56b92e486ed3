"""Consuming a queue in batches: one database transaction for many messages, acknowledged after it commits.

FastStream's RabbitMQ subscribers hand over one message per call, so grouped commits are built here on aio-pika.
The rules are those of ``shared.consumer``: a message that can never be processed goes to the dead-letter queue
at once with the reason; outages are waited out in place; a batch that fails otherwise is retried message by
message, so one poison message cannot hold back the others: a value the database refuses dead-letters its message
at once while the rest commits, and a message that keeps failing otherwise is dead-lettered with the last error
once its deliveries run out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage

from shared.broker import EventPublisher
from shared.consumer import (
    DEFAULT_RETRY,
    Action,
    RetryPolicy,
    delivery_number,
    handle_judged,
    judge_failure,
)
from shared.events import Event, UndecodableEvent, decode_event
from shared.topology import Topology

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[Event]], Awaitable[None]]


@dataclass(eq=False)
class BatchConsumer:
    broker_url: str
    topology: Topology
    role: str
    handler: BatchHandler
    publisher: EventPublisher
    _: KW_ONLY
    accepted: frozenset[str]
    prefetch: int = 500
    max_batch: int = 500
    max_wait_seconds: float = 0.02
    retry: RetryPolicy = DEFAULT_RETRY
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    processed: int = field(default=0, init=False)

    async def run(self) -> None:
        """Consume until cancelled; the robust connection resumes consuming after a broker restart."""
        connection = await aio_pika.connect_robust(self.broker_url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            # declare_queue (passive), not get_queue: only queues declared on a robust channel get their
            # consumers restored after a reconnect (found by tests/system/test_faults.py stopping RabbitMQ)
            queue = await channel.declare_queue(self.topology.queue(self.role), passive=True)
            arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            await queue.consume(arrived.put)
            loop = asyncio.get_running_loop()
            while True:
                batch = [await arrived.get()]
                deadline = loop.time() + self.max_wait_seconds
                while len(batch) < self.max_batch:
                    if arrived.empty():
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:  # not wait_for: see shared/waits.py
                            async with asyncio.timeout(remaining):
                                batch.append(await arrived.get())
                        except TimeoutError:
                            break
                    else:
                        batch.append(arrived.get_nowait())
                await self._process(batch)
        finally:
            await connection.close()

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        decoded: list[tuple[AbstractIncomingMessage, Event]] = []
        for message in batch:
            try:
                decoded.append((message, decode_event(message.body, self.accepted)))
            except UndecodableEvent as problem:
                verdict = judge_failure(
                    problem,
                    delivery=delivery_number(message.headers),
                    delivery_limit=self.topology.delivery_limit,
                )
                await self._dead_letter(message, verdict.reason)
        if not decoded:
            return
        # A batch is never dead-lettered whole: whatever failed, its messages are then judged one by one (and
        # only those verdicts are logged and applied).
        verdict = await handle_judged(
            lambda: self.handler([event for _, event in decoded]),
            delivery=1,
            delivery_limit=self.topology.delivery_limit,
            retry=self.retry,
            log_verdict=False,
            sleep=self.sleep,
        )
        if verdict is not None:
            log.warning("batch of %d failed; judging its messages one by one", len(decoded))
            await self._isolate(decoded)
            return
        # One frame acknowledges the batch: every earlier delivery on the channel is settled already (batches
        # are processed one at a time, in delivery order; undecodable ones were dead-lettered above), and one
        # frame per message was most of a drain's own cost (a socket write each).
        await _settle(decoded[-1][0].ack(multiple=True))
        self.processed += len(decoded)

    async def _isolate(self, decoded: list[tuple[AbstractIncomingMessage, Event]]) -> None:
        """Find the message(s) that fail: the others are stored and acked; a failing one is dead-lettered
        or goes back to the queue as ``judge_failure`` says (after one shared backoff)."""
        back: list[AbstractIncomingMessage] = []
        for message, event in decoded:
            delivery = delivery_number(message.headers)
            verdict = await handle_judged(
                lambda event=event: self.handler([event]),
                delivery=delivery,
                delivery_limit=self.topology.delivery_limit,
                retry=self.retry,
                log_extra={"message_id": message.message_id, "delivery": delivery},
                sleep=self.sleep,
            )
            if verdict is None:
                await _settle(message.ack())
                self.processed += 1
            elif verdict.action is Action.DEAD_LETTER:
                await self._dead_letter(message, verdict.reason)
            else:
                back.append(message)
        if back:
            await self.sleep(self.retry.delay(max(delivery_number(m.headers) for m in back) - 1))
            for message in back:
                await _settle(message.reject(requeue=True))

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.warning("dead-lettering message", extra={"message_id": message.message_id, "reason": reason})
        try:
            await self.publisher.dead_letter(
                self.role,
                message.body,
                message_id=message.message_id or "",
                headers=dict(message.headers or {}),
                reason=reason,
                routing_key=message.routing_key or "",
            )
        except Exception:
            log.exception("could not dead-letter; the message goes back to the queue")
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())


async def _settle(acknowledgement: Awaitable[None]) -> None:
    """Ack/nack on a channel that closed meanwhile (a reconnect, the broker's consumer timeout) cannot be
    delivered; the broker redelivers those messages, so the worker carries on instead of crashing."""
    try:
        await acknowledgement
    except (aiormq.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError, RuntimeError) as error:
        log.warning("acknowledgement not delivered (%r); the broker will redeliver", error)
