import hashlib

import pytest
from sqlalchemy import func, select, text

from shared.blobstore import BlobNotFound, PostgresBlobStore, blobs, delete_unreferenced
from tests.utils.blobs import blob_exists, put_blob
from tests.utils.images import make_png
from tests.utils.rows import add_run, add_snapshot


async def test_blobs_round_trip_under_their_sha256(engine):
    store = PostgresBlobStore(engine)
    data = make_png(seed=3)
    digest = await put_blob(engine, data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert await store.get(digest) == data
    assert await blob_exists(engine, digest)


async def test_writing_the_same_bytes_twice_stores_them_once(engine):
    data = make_png(seed=4)
    assert await put_blob(engine, data) == await put_blob(engine, data)
    await put_blob(engine, make_png(seed=5))
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(blobs)) == 2


async def test_a_missing_blob_is_an_error_not_empty_bytes(engine):
    store = PostgresBlobStore(engine)
    with pytest.raises(BlobNotFound):
        await store.get("0" * 64)
    assert not await blob_exists(engine, "0" * 64)


async def test_a_blob_written_in_a_failed_transaction_is_not_kept(engine):
    data = make_png(seed=6)
    with pytest.raises(RuntimeError):
        async with engine.begin() as connection:
            await PostgresBlobStore.put_in(connection, data)
            raise RuntimeError("the row referring to it failed")
    assert not await blob_exists(engine, hashlib.sha256(data).hexdigest())


async def reference_each_way(connection, store_shas: dict[str, str]) -> None:
    """One row of each of the four tables that refer to blobs, each to its own blob."""
    snapshot = await add_snapshot(connection, [("icon", "item", "Item", store_shas["snapshot_items"])])
    run = await add_run(connection, snapshot)
    await connection.execute(
        text(
            "INSERT INTO contributions (contribution_id, event_type, install_id, item_kind, item_key, "
            "image_sha256, payload, occurred_at) VALUES ('c-1', 'contribution.icon_crop', 'install-1', 'icon', "
            "'item', :sha, '{}', now())"
        ),
        {"sha": store_shas["contributions"]},
    )
    await connection.execute(
        text(
            "INSERT INTO checkpoints (run_id, model_kind, epoch, blob_sha256) VALUES (:run, 'icon', 1, :sha)"
        ),
        {"run": run, "sha": store_shas["checkpoints"]},
    )
    await connection.execute(
        text("INSERT INTO model_artifacts (run_id, path, blob_sha256) VALUES (:run, 'models/x.pt', :sha)"),
        {"run": run, "sha": store_shas["model_artifacts"]},
    )


async def stored(engine) -> set[str]:
    async with engine.connect() as connection:
        return set((await connection.execute(select(blobs.c.sha256))).scalars())


async def test_a_blob_is_kept_while_a_row_references_it_and_deleted_once_none_does(engine):
    referencing = ("contributions", "snapshot_items", "checkpoints", "model_artifacts")
    shas = {table: await put_blob(engine, make_png(seed=10 + i)) for i, table in enumerate(referencing)}
    unreferenced = [await put_blob(engine, make_png(seed=20 + i)) for i in range(2)]
    not_asked = await put_blob(engine, make_png(seed=30))
    async with engine.begin() as connection:
        await reference_each_way(connection, shas)
        deleted = await delete_unreferenced(connection, [*shas.values(), *unreferenced, unreferenced[0]])
    assert deleted == 2
    assert await stored(engine) == {*shas.values(), not_asked}  # a blob not named is never touched

    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM checkpoints"))
        assert await delete_unreferenced(connection, shas.values()) == 1
    assert shas["checkpoints"] not in await stored(engine)


async def test_a_table_added_later_that_references_blobs_keeps_them_too(engine):
    kept, dropped = await put_blob(engine, make_png(seed=40)), await put_blob(engine, make_png(seed=41))
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE later_feature (blob text REFERENCES blobs (sha256))"))
        await connection.execute(text("INSERT INTO later_feature VALUES (:sha)"), {"sha": kept})
        assert await delete_unreferenced(connection, [kept, dropped]) == 1
    assert await stored(engine) == {kept}


async def test_deleting_from_no_candidates_deletes_nothing(engine):
    kept = await put_blob(engine, make_png(seed=42))
    async with engine.begin() as connection:
        assert await delete_unreferenced(connection, []) == 0
    assert await stored(engine) == {kept}
