"""The read store, readiness and the dead-letter admin on the real Postgres and RabbitMQ."""

import asyncio
import uuid

from sqlalchemy import insert

from services.ingest.store import PostgresReads
from services.publisher.tables import model_versions, publication_log
from services.trainer.tables import training_runs
from services.voting.tables import consensus, training_snapshots
from shared.events import decode_event
from tests.ingest.conftest import ADMIN_KEY, UNREACHABLE_DB, running_ingest
from tests.ingest.test_reads_and_admin import V2_WITH_A_SCREEN_MODEL
from tests.utils.broker import queue_depth, wait_for_messages


async def add_release(engine, version: str, trained_at: str, status: str = "published", **metrics) -> None:
    snapshot_id, run_id = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            insert(training_snapshots).values(
                id=snapshot_id, reason="threshold", item_count=5, new_label_count=5
            )
        )
        await connection.execute(
            insert(training_runs).values(
                id=run_id, request_message_id=f"req-{version}", snapshot_id=snapshot_id, status="succeeded"
            )
        )
        await connection.execute(
            insert(model_versions).values(
                version=version,
                source_message_id=f"msg-{version}",
                run_id=run_id,
                snapshot_id=snapshot_id,
                trained_at=trained_at,
                status=status,
                n_classes=12,
                n_samples=340,
                n_users=17,
                metrics={"val_acc": 0.91, **metrics},
            )
        )


async def add_consensus(engine, kind: str, key: str, label: str | None, status: str = "accepted") -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(consensus).values(
                item_kind=kind, item_key=key, label=label, status=status, support=3, confidence=0.9
            )
        )


async def test_health_is_liveness_and_ready_reports_dependencies(ingest, ingest_settings):
    assert (await ingest.client.get("/health")).json()["status"] == "ok"
    ready = await ingest.client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "broker": "ok", "database": "ok"}
    async with running_ingest(**ingest_settings | {"database_url": UNREACHABLE_DB}) as broken:
        await broken.runtime.publisher.close()
        assert (await broken.client.get("/health")).status_code == 200
        not_ready = await broken.client.get("/ready")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"status": "not ready", "broker": "unreachable", "database": "unreachable"}
        unavailable = await broken.client.get("/model/version")
        assert unavailable.status_code == 503 and unavailable.headers["Retry-After"] == "5"


async def test_model_version_says_unavailable_only_when_nothing_was_published(ingest, engine):
    assert (await ingest.client.get("/model/version")).json() == {"available": False}
    await add_release(engine, "v1", "2026-04-06T12:01:02.345678+00:00Z")
    await add_release(
        engine,
        "v2",
        "2026-05-01T08:00:00.000000+00:00Z",
        screen_val_acc=0.88,
        screen_n_samples=70,
        screen_trained_at="2026-05-01T08:00:00.000000+00:00Z",
    )
    await add_release(engine, "v3", "2026-06-01T08:00:00.000000+00:00Z", status="rejected")
    answer = (await ingest.client.get("/model/version")).json()
    assert answer == V2_WITH_A_SCREEN_MODEL


async def test_knowledge_and_labels_come_from_accepted_consensus(ingest, engine):
    await add_consensus(engine, "knowledge", "00000000000000aa", "Phaser Array")
    await add_consensus(engine, "knowledge", "00000000000000bb", "Contested", status="withheld")
    await add_consensus(engine, "icon", "a" * 64, "Torpedo")
    await add_consensus(engine, "icon", "b" * 64, "Phaser Array")
    await add_consensus(engine, "screen", "c" * 64, "SPACE_EQ")
    assert (await ingest.client.get("/knowledge")).json() == {
        "knowledge": {"00000000000000aa": "Phaser Array"}
    }
    labels = (await ingest.client.get("/config/labels")).json()
    assert labels["icon_labels"] == ["Phaser Array", "Torpedo"]
    assert "SPACE_EQ" in labels["screen_types"] and "BOFFS" in labels["screen_types"]
    assert labels["text_slots"] == ["Ship Tier", "Ship Type"]
    assert labels["virtual_labels"] == ["__empty__", "__inactive__"]


async def test_the_store_reads_accepted_labels_of_one_kind_only(engine):
    await add_consensus(engine, "icon", "a" * 64, "Torpedo")
    await add_consensus(engine, "icon", "b" * 64, "Phaser", status="withheld")
    await add_consensus(engine, "screen", "c" * 64, "SPACE_EQ")
    reads = PostgresReads(engine)
    assert await reads.accepted_labels("icon") == {"a" * 64: "Torpedo"}
    assert await reads.accepted_labels("knowledge") == {}


async def test_admin_merge_requests_a_publication_and_answers_the_counts(
    ingest, engine, amqp_channel, topology
):
    await add_consensus(engine, "knowledge", "00000000000000aa", "Phaser Array")
    async with engine.begin() as connection:
        await connection.execute(insert(publication_log).values(kind="knowledge", event="published"))
    await add_consensus(engine, "knowledge", "00000000000000bb", "Torpedo")
    await add_consensus(engine, "knowledge", "00000000000000cc", None)  # not in the published map
    response = await ingest.client.post("/admin/merge", headers={"X-Admin-Key": ADMIN_KEY})
    assert response.status_code == 200
    assert response.json() == {"ok": True, "merged": 1, "total": 2}
    [message] = await wait_for_messages(amqp_channel, topology.queue("publisher"), 1)
    assert decode_event(message.body).event_type == "knowledge.publish_requested"


async def test_dead_letters_are_listed_with_reasons_and_replayed(ingest, publisher, amqp_channel, topology):
    await publisher.dead_letter(
        "voting",
        b'{"event_type": "training.force_requested", "schema_version": 1}',
        message_id="dead-1",
        headers={},
        reason="handler crashed",
        routing_key="training.force_requested",
    )
    admin = {"X-Admin-Key": ADMIN_KEY}
    listed = (await ingest.client.get("/admin/dead-letters/voting", headers=admin)).json()
    assert listed["messages"] == [
        {
            "message_id": "dead-1",
            "routing_key": "training.force_requested",
            "reason": "handler crashed",
            "deaths": 0,
            "body_bytes": 63,
        }
    ]
    async with asyncio.timeout(5):  # looked at, not taken: back in the queue once the broker has the nacks
        while await queue_depth(amqp_channel, topology.dead_letter_queue("voting")) != 1:
            await asyncio.sleep(0.05)
    replayed = (await ingest.client.post("/admin/dead-letters/voting/replay", headers=admin)).json()
    assert replayed == {"replayed": 1, "message_ids": ["dead-1"]}
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    assert message.message_id == "dead-1"
    assert await queue_depth(amqp_channel, topology.dead_letter_queue("voting")) == 0
    assert (await ingest.client.get("/admin/dead-letters/nobody", headers=admin)).status_code == 422
