import asyncio
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

import migrations
from migrations.schema import metadata
from services.publisher.tables import model_versions
from services.trainer.tables import training_runs
from services.voting.tables import contributions, snapshot_items, training_snapshots, votes
from shared.db import claim_message, create_engine
from tests.utils.blobs import put_blob

EXPECTED_TABLES = {
    "blobs",
    "outbox",
    "processed_messages",
    "rate_limit_counters",
    "contributions",
    "votes",
    "consensus",
    "training_snapshots",
    "snapshot_items",
    "training_runs",
    "checkpoints",
    "model_artifacts",
    "model_versions",
    "publication_log",
    "release_mode",
    "console_audit",
    "dirty_items",
    "icon_phashes",
    "item_images",
    "trust_judgements",
    "install_trust",
    "known_labels",
    "moderator_decisions",
    "install_bans",
    "consensus_refreshes",
    "gold_items",
    "model_predictions",
}


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrations_upgrade_from_empty_and_downgrade_back(empty_database_url):
    assert await table_names(empty_database_url) == set()
    await asyncio.to_thread(migrations.upgrade, empty_database_url)
    assert await table_names(empty_database_url) == EXPECTED_TABLES | {"alembic_version"}
    await asyncio.to_thread(migrations.downgrade, empty_database_url, "base")
    assert await table_names(empty_database_url) == {"alembic_version"}
    await asyncio.to_thread(migrations.upgrade, empty_database_url)
    assert EXPECTED_TABLES <= await table_names(empty_database_url)


async def test_the_migrated_schema_matches_the_table_definitions(engine):
    def differences(sync_connection):
        return compare_metadata(
            MigrationContext.configure(sync_connection, opts={"compare_type": True}), metadata
        )

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_the_inbox_claims_each_message_once_per_consumer(engine):
    async with engine.begin() as connection:
        assert await claim_message(connection, "voting", "m-1") is True
        assert await claim_message(connection, "voting", "m-1") is False
        assert await claim_message(connection, "publisher", "m-1") is True


async def test_an_inbox_claim_rolls_back_with_the_work(engine):
    with pytest.raises(RuntimeError):
        async with engine.begin() as connection:
            assert await claim_message(connection, "voting", "m-2")
            raise RuntimeError("crash before commit")
    async with engine.begin() as connection:
        assert await claim_message(connection, "voting", "m-2") is True


async def add_contribution(connection, contribution_id: str, install_id: str) -> None:
    await connection.execute(
        insert(contributions).values(
            contribution_id=contribution_id,
            event_type="contribution.icon_crop",
            install_id=install_id,
            item_kind="icon",
            item_key="a" * 64,
            payload={},
            occurred_at=text("now()"),
        )
    )


async def test_the_database_allows_one_vote_per_install_and_item(engine):
    async with engine.begin() as connection:
        await add_contribution(connection, "c-1", "install-1")
        await add_contribution(connection, "c-2", "install-1")
        vote = dict(
            item_kind="icon",
            item_key="a" * 64,
            install_id="install-1",
            label="Phaser",
            voted_at=text("now()"),
        )
        await connection.execute(insert(votes).values(contribution_id="c-1", **vote))
    with pytest.raises(IntegrityError, match="pk_votes"):
        async with engine.begin() as connection:
            await connection.execute(insert(votes).values(contribution_id="c-2", **vote))


async def test_training_snapshots_are_immutable(engine):
    snapshot_id = uuid.uuid4()
    image = await put_blob(engine, b"png bytes")
    async with engine.begin() as connection:
        await connection.execute(
            insert(training_snapshots).values(
                id=snapshot_id, reason="threshold", item_count=1, new_label_count=1
            )
        )
        await connection.execute(
            insert(snapshot_items).values(
                snapshot_id=snapshot_id, item_kind="icon", item_key=image, label="Phaser", image_sha256=image
            )
        )
    for statement in (
        update(snapshot_items).values(label="Torpedo"),
        snapshot_items.delete(),
        update(training_snapshots).values(item_count=2),
    ):
        with pytest.raises(DBAPIError, match="training snapshots are immutable"):
            async with engine.begin() as connection:
                await connection.execute(statement)
    async with engine.connect() as connection:
        assert await connection.scalar(select(snapshot_items.c.label)) == "Phaser"


async def test_trained_at_must_be_fixed_width_utc_and_one_release_per_request(engine):
    snapshot_id, run_id = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            insert(training_snapshots).values(id=snapshot_id, reason="admin", item_count=0, new_label_count=0)
        )
        await connection.execute(
            insert(training_runs).values(
                id=run_id, request_message_id="r-1", snapshot_id=snapshot_id, status="succeeded"
            )
        )
    release = dict(
        run_id=run_id, snapshot_id=snapshot_id, status="published", n_classes=3, n_samples=9, n_users=2
    )
    async with engine.begin() as connection:
        await connection.execute(
            insert(model_versions).values(
                version="v1",
                source_message_id="m-1",
                trained_at="2026-04-06T12:01:02.345678+00:00Z",
                **release,
            )
        )
    with pytest.raises(IntegrityError, match="trained_at_fixed_width"):
        async with engine.begin() as connection:
            await connection.execute(
                insert(model_versions).values(
                    version="v2", source_message_id="m-2", trained_at="2026-4-6 12:01", **release
                )
            )
    with pytest.raises(IntegrityError, match="source_message_id"):
        async with engine.begin() as connection:
            await connection.execute(
                insert(model_versions).values(
                    version="v3",
                    source_message_id="m-1",
                    trained_at="2026-04-07T12:01:02.345678+00:00Z",
                    **release,
                )
            )
    with pytest.raises(IntegrityError, match="uq_training_runs_request_message_id"):
        async with engine.begin() as connection:
            await connection.execute(
                insert(training_runs).values(
                    id=uuid.uuid4(), request_message_id="r-1", snapshot_id=snapshot_id, status="pending"
                )
            )
