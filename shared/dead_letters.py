"""Operators' view of dead-letter queues: list what is there and why, and replay messages to their consumers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared.broker import DEAD_LETTER_REASON, DEAD_LETTERED_FROM, ORIGINAL_ROUTING_KEY, EventPublisher
from shared.topology import Topology

# Dropped on replay: where and why it died, and the deliveries it spent (quorum queues count them in
# x-delivery-count, RabbitMQ 4 also in x-acquired-count), so the replayed message starts with a full budget.
_DEAD_LETTER_HEADERS = (
    DEAD_LETTER_REASON,
    DEAD_LETTERED_FROM,
    ORIGINAL_ROUTING_KEY,
    "x-delivery-count",
    "x-acquired-count",
)
_DEATH_HEADER_PREFIXES = ("x-death", "x-first-death", "x-last-death")


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    routing_key: str
    reason: str
    deaths: int
    body_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    x_death = headers.get("x-death") or []
    reason = headers.get(DEAD_LETTER_REASON) or headers.get("x-first-death-reason") or "unknown"
    routing_key = headers.get(ORIGINAL_ROUTING_KEY) or message.type or ""
    return DeadLetter(
        message_id=message.message_id or "",
        routing_key=str(routing_key),
        reason=str(reason),
        deaths=sum(int(entry.get("count", 1)) for entry in x_death) if isinstance(x_death, list) else 0,
        body_bytes=len(message.body),
    )


async def list_dead_letters(
    channel: AbstractChannel, topology: Topology, role: str, limit: int
) -> list[DeadLetter]:
    """Look at up to ``limit`` messages without removing them (each goes back to the queue). Returning a
    message may count as a delivery; the dead-letter queues' delivery limit is one no one reaches (see
    ``shared.topology``), so looking never loses a message."""
    queue = await channel.get_queue(topology.dead_letter_queue(role), ensure=False)
    taken: list[AbstractIncomingMessage] = []
    try:
        while len(taken) < limit:
            message = await queue.get(fail=False, no_ack=False)
            if message is None:
                break
            taken.append(message)
        return [describe(message) for message in taken]
    finally:
        for message in taken:
            await message.nack(requeue=True)


async def replay_dead_letters(
    channel: AbstractChannel, publisher: EventPublisher, topology: Topology, role: str, limit: int
) -> list[str]:
    """Send up to ``limit`` messages back through the events exchange; each leaves the DLQ only once the
    broker confirmed its replay. Returns the replayed message ids."""
    queue = await channel.declare_queue(topology.dead_letter_queue(role), passive=True)
    limit = min(limit, queue.declaration_result.message_count)  # never the ones that died again meanwhile
    replayed: list[str] = []
    while len(replayed) < limit:
        message = await queue.get(fail=False, no_ack=False)
        if message is None:
            break
        letter = describe(message)
        headers = {
            key: value
            for key, value in (message.headers or {}).items()
            if key not in _DEAD_LETTER_HEADERS and not key.startswith(_DEATH_HEADER_PREFIXES)
        }
        try:
            await publisher.publish_raw(
                topology.events_exchange,
                letter.routing_key,
                message.body,
                message_id=letter.message_id,
                headers=headers,
            )
        except Exception:
            await message.nack(requeue=True)
            raise
        await message.ack()
        replayed.append(letter.message_id)
    return replayed
