"""Blobs written and looked up directly, for tests that arrange or check the ``blobs`` table (services write
them only inside their own transactions, through ``PostgresBlobStore.put_in``)."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.blobstore import PostgresBlobStore, blobs


async def put_blob(engine: AsyncEngine, data: bytes) -> str:
    async with engine.begin() as connection:
        return await PostgresBlobStore.put_in(connection, data)


async def blob_exists(engine: AsyncEngine, sha256: str) -> bool:
    async with engine.connect() as connection:
        return await connection.scalar(select(blobs.c.sha256).where(blobs.c.sha256 == sha256)) is not None
