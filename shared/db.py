"""Postgres access shared by every service: one MetaData, engine and session factories, and the inbox that
makes consumers idempotent."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, MetaData, String, Table, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Inbox: one row per (consumer, message_id) processed. The primary key is what makes "each message once" true.
processed_messages = Table(
    "processed_messages",
    metadata,
    Column("consumer", String(64), primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def create_engine(database_url: str, *, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(database_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


async def claim_message(connection: AsyncConnection, consumer: str, message_id: str) -> bool:
    """Record ``message_id`` as processed by ``consumer`` inside the caller's transaction.

    Returns False when it was processed before: the caller then skips the work. Because the claim commits or
    rolls back with the work itself, a crash before commit leaves the message unclaimed for the redelivery.
    """
    claimed = await connection.execute(
        insert(processed_messages)
        .values(consumer=consumer, message_id=message_id)
        .on_conflict_do_nothing()
        .returning(processed_messages.c.message_id)
    )
    return claimed.first() is not None
