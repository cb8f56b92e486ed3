"""Content-addressed storage for images and model artifacts: a blob's name is the sha256 of its bytes.

Postgres is the default backend so services need no shared volume; anything implementing ``BlobStore``
(an S3-compatible bucket, say) can replace it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.db import metadata

blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex"),
    CheckConstraint("size = octet_length(data)", name="size_matches"),
)


class BlobNotFound(KeyError):
    pass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    """What services read blobs through; they write blobs only with the rows that refer to them (``put_in``)."""

    async def get(self, sha256: str) -> bytes: ...


class PostgresBlobStore:
    """Blobs in the ``blobs`` table. ``put_in`` joins the caller's transaction, so an image and the row that
    refers to it commit together."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, sha256: str) -> bytes:
        async with self._engine.connect() as connection:
            data = await connection.scalar(select(blobs.c.data).where(blobs.c.sha256 == sha256))
        if data is None:
            raise BlobNotFound(sha256)
        return bytes(data)

    @staticmethod
    async def put_in(connection: AsyncConnection, data: bytes) -> str:
        digest = sha256_hex(data)
        await connection.execute(
            insert(blobs).values(sha256=digest, size=len(data), data=data).on_conflict_do_nothing()
        )
        return digest


# Every (table, column) with a foreign key to blobs.sha256, read from the catalog: the schema is the one list of
# what may reference a blob, so a table added by any service is honoured without touching this module.
_REFERENCES = text(
    """
    SELECT c.conrelid::regclass::text AS ref_table, a.attname AS ref_column
    FROM pg_constraint c
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
    WHERE c.contype = 'f' AND c.confrelid = 'blobs'::regclass
    ORDER BY 1, 2
    """
)


async def delete_unreferenced(connection: AsyncConnection, shas: Iterable[str]) -> int:
    """Delete those of ``shas`` that no row references any more, inside the caller's transaction.

    The rule: a blob is kept while a row references it. Returns how many blobs were deleted."""
    candidates = sorted(set(shas))
    if not candidates:
        return 0
    references = (await connection.execute(_REFERENCES)).all()
    unreferenced = " ".join(
        f'AND NOT EXISTS (SELECT 1 FROM {row.ref_table} WHERE "{row.ref_column}" = b.sha256)'
        for row in references
    )
    deleted = await connection.execute(
        text(f"DELETE FROM blobs b WHERE b.sha256 = ANY(:shas) {unreferenced}"), {"shas": candidates}
    )
    return deleted.rowcount
