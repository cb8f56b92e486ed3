"""Content-addressed storage for images and model artifacts: a blob's name is the sha256 of its bytes.

Postgres is the default backend so services need no shared volume; anything implementing ``BlobStore``
(an S3-compatible bucket, say) can replace it.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from sqlalchemy import CheckConstraint, Column, DateTime, Integer, LargeBinary, String, Table, func, select
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
    async def put(self, data: bytes) -> str: ...

    async def get(self, sha256: str) -> bytes: ...

    async def exists(self, sha256: str) -> bool: ...


class PostgresBlobStore:
    """Blobs in the ``blobs`` table. ``put_in`` joins the caller's transaction, so an image and the row that
    refers to it commit together."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(self, data: bytes) -> str:
        async with self._engine.begin() as connection:
            return await self.put_in(connection, data)

    async def get(self, sha256: str) -> bytes:
        async with self._engine.connect() as connection:
            data = await connection.scalar(select(blobs.c.data).where(blobs.c.sha256 == sha256))
        if data is None:
            raise BlobNotFound(sha256)
        return bytes(data)

    async def exists(self, sha256: str) -> bool:
        async with self._engine.connect() as connection:
            return await connection.scalar(select(blobs.c.sha256).where(blobs.c.sha256 == sha256)) is not None

    @staticmethod
    async def put_in(connection: AsyncConnection, data: bytes) -> str:
        digest = sha256_hex(data)
        await connection.execute(
            insert(blobs).values(sha256=digest, size=len(data), data=data).on_conflict_do_nothing()
        )
        return digest
