import hashlib

import pytest
from sqlalchemy import func, select

from shared.blobstore import BlobNotFound, PostgresBlobStore, blobs
from tests.utils.images import make_png


async def test_blobs_round_trip_under_their_sha256(engine):
    store = PostgresBlobStore(engine)
    data = make_png(seed=3)
    digest = await store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert await store.get(digest) == data
    assert await store.exists(digest)


async def test_writing_the_same_bytes_twice_stores_them_once(engine):
    store = PostgresBlobStore(engine)
    data = make_png(seed=4)
    assert await store.put(data) == await store.put(data)
    await store.put(make_png(seed=5))
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(blobs)) == 2


async def test_a_missing_blob_is_an_error_not_empty_bytes(engine):
    store = PostgresBlobStore(engine)
    with pytest.raises(BlobNotFound):
        await store.get("0" * 64)
    assert not await store.exists("0" * 64)


async def test_a_blob_written_in_a_failed_transaction_is_not_kept(engine):
    data = make_png(seed=6)
    with pytest.raises(RuntimeError):
        async with engine.begin() as connection:
            await PostgresBlobStore.put_in(connection, data)
            raise RuntimeError("the row referring to it failed")
    assert not await PostgresBlobStore(engine).exists(hashlib.sha256(data).hexdigest())
