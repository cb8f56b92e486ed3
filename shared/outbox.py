"""Transactional outbox: events that must follow a database change are written in the same transaction and
relayed to RabbitMQ afterwards, so a crash between commit and publish loses nothing.

Several relays (replicas) may run at once: rows are claimed with ``FOR UPDATE SKIP LOCKED``. A relay that dies
after publishing but before marking rows sent makes the next relay send them again; consumers are idempotent
on ``message_id``, so that is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    String,
    Table,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.broker import EventPublisher
from shared.db import metadata
from shared.events import Event
from shared.waits import woken

log = logging.getLogger(__name__)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False, unique=True),
    Column("routing_key", String(128), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
    Index("ix_outbox_pending", "id", postgresql_where=text("published_at IS NULL")),
)


async def enqueue(connection: AsyncConnection, event: Event) -> None:
    """Add ``event`` to the outbox inside the caller's transaction (once per ``message_id``)."""
    await connection.execute(
        insert(outbox)
        .values(
            message_id=event.message_id,
            routing_key=event.event_type,
            body=event.to_json(),
            headers={"schema_version": event.schema_version},
        )
        .on_conflict_do_nothing(index_elements=["message_id"])
    )


@dataclass(eq=False)
class OutboxRelay:
    engine: AsyncEngine
    publisher: EventPublisher
    exchange: str
    _: KW_ONLY
    batch_size: int = 100
    poll_seconds: float = 0.5
    keep_published: timedelta = timedelta(days=7)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def wake(self) -> None:
        """Tell the relay there is new work now rather than at the next poll."""
        self._wakeup.set()

    async def relay_once(self) -> int:
        """Publish one batch of pending events and mark them sent; returns how many were sent."""
        async with self.engine.begin() as connection:
            rows = (
                await connection.execute(
                    select(
                        outbox.c.id,
                        outbox.c.message_id,
                        outbox.c.routing_key,
                        outbox.c.body,
                        outbox.c.headers,
                    )
                    .where(outbox.c.published_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            outcomes = await asyncio.gather(
                *(
                    self.publisher.publish_raw(
                        self.exchange,
                        row.routing_key,
                        row.body,
                        message_id=row.message_id,
                        headers=row.headers,
                    )
                    for row in rows
                ),
                return_exceptions=True,
            )
            sent = [
                row.id
                for row, outcome in zip(rows, outcomes, strict=True)
                if not isinstance(outcome, BaseException)
            ]
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    # stays pending and is tried again; the rows behind it are not held up
                    log.error("outbox event %s not sent: %r", row.message_id, outcome)
            if sent:
                await connection.execute(
                    update(outbox).where(outbox.c.id.in_(sent)).values(published_at=func.now())
                )
            if not sent:
                raise next(o for o in outcomes if isinstance(o, BaseException))
        return len(sent)

    async def prune(self) -> int:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                outbox.delete().where(outbox.c.published_at < func.now() - self.keep_published)
            )
        return result.rowcount

    async def run(self) -> None:
        """Relay until cancelled; errors are logged and retried, never fatal."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            try:
                sent = await self.relay_once()
                if loop.time() >= next_prune:
                    await self.prune()
                    next_prune = loop.time() + 3600
            except Exception:
                log.exception("outbox relay failed; retrying")
                sent = 0
                await asyncio.sleep(self.poll_seconds * 4)
            if sent < self.batch_size:
                await woken(self._wakeup, self.poll_seconds)
                self._wakeup.clear()
