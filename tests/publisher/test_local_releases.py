"""Releases to the embedded local Hub directory, with the real database."""

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from services.publisher.hub import PermanentPublishError
from shared.consumer import Unprocessable
from shared.events import RollbackRequested, decode_event
from tests.publisher.conftest import FILES, release_service, trained_event


async def query(engine, sql: str, **params):
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).all()


async def test_a_release_is_one_tagged_commit_with_every_file_and_a_version_record(engine, local_hub):
    service = release_service(engine, local_hub)
    event = await trained_event(engine)
    await service.on_model_trained(event)
    [row] = await query(engine, "SELECT version, status, hub_commit, hub_tag, trained_at FROM model_versions")
    assert row.status == "published" and row.version == "v20260501-100000-000000" == row.hub_tag
    current = local_hub.current
    assert current.resolve().name == row.hub_commit
    for path, data in FILES.items():
        assert (current / path).read_bytes() == data
    record = json.loads((current / "models/model_version.json").read_text())
    assert record == {
        "version": row.version,
        "trained_at": row.trained_at,
        "n_classes": 2,
        "val_acc": 0.9,
        "n_samples": 40,
        "n_users": 7,
    }
    assert (current / "README.md").read_text().startswith("---\n")
    assert json.loads((current / "knowledge.json").read_text()) == {
        "knowledge": {},
        "updated_at": row.trained_at,
    }
    assert (local_hub.repo / "refs/tags" / row.version).read_text() == row.hub_commit
    [published] = await query(engine, "SELECT body FROM outbox WHERE routing_key = 'model.published'")
    assert decode_event(published.body).version == row.version


async def test_a_redelivered_model_trained_creates_nothing_new(engine, local_hub):
    service = release_service(engine, local_hub)
    event = await trained_event(engine)
    await service.on_model_trained(event)
    await service.on_model_trained(event)
    assert len(await query(engine, "SELECT 1 FROM model_versions")) == 1
    assert len(list((local_hub.repo / "commits").iterdir())) == 1
    assert len(await query(engine, "SELECT 1 FROM outbox WHERE routing_key = 'model.published'")) == 1


async def test_a_model_the_quality_gate_refused_is_recorded_not_published(engine, local_hub):
    await release_service(engine, local_hub).on_model_trained(await trained_event(engine, gate=False))
    assert [r.status for r in await query(engine, "SELECT status FROM model_versions")] == ["rejected"]
    assert not local_hub.current.exists()


async def test_a_crash_mid_write_leaves_the_previous_release_intact(engine, local_hub):
    service = release_service(engine, local_hub)
    await service.on_model_trained(await trained_event(engine))
    before = local_hub.current.resolve()
    broken = dict(FILES) | {"models/icon_classifier.pt": b"weights-v2", "models/\0broken": b"x"}
    with pytest.raises(ValueError):
        local_hub.publish("v-broken", broken)
    assert local_hub.current.resolve() == before
    assert (local_hub.current / "models/icon_classifier.pt").read_bytes() == b"weights-v1"
    assert not [p for p in (local_hub.repo / "commits").iterdir() if p.name.startswith(".incoming")]


async def test_a_rollback_republishes_old_weights_with_a_newer_trained_at(engine, local_hub):
    service = release_service(engine, local_hub)
    await service.on_model_trained(
        await trained_event(engine, trained_at="2026-05-01T10:00:00.000000+00:00Z")
    )
    newer = dict(FILES) | {"models/icon_classifier.pt": b"weights-v2"}
    await service.on_model_trained(
        await trained_event(engine, newer, trained_at="2026-05-02T10:00:00.000000+00:00Z")
    )
    request = RollbackRequested(target_version="v20260501-100000-000000")
    await service.on_rollback(request)
    await service.on_rollback(request)  # redelivered
    rows = await query(
        engine,
        "SELECT version, trained_at, rollback_of FROM model_versions WHERE status = 'published' ORDER BY trained_at",
    )
    assert len(rows) == 3 and rows[-1].rollback_of == "v20260501-100000-000000"
    assert rows[-1].trained_at > rows[1].trained_at  # installed clients compare as strings: they will take it
    assert (local_hub.current / "models/icon_classifier.pt").read_bytes() == b"weights-v1"
    assert (
        json.loads((local_hub.current / "models/model_version.json").read_text())["trained_at"]
        == rows[-1].trained_at
    )
    with pytest.raises(Unprocessable, match="no published version 'v-nope'"):
        await service.on_rollback(RollbackRequested(target_version="v-nope"))


async def test_the_knowledge_map_is_published_once_per_request(engine, local_hub):
    from shared.events import KnowledgePublishRequested

    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO consensus (item_kind, item_key, label, status, support, confidence) VALUES ('knowledge', '00000000000000aa', 'Phaser', 'accepted', 3, 0.99)"
            )
        )
    service = release_service(engine, local_hub)
    request = KnowledgePublishRequested()
    await service.on_knowledge_requested(request)
    await service.on_knowledge_requested(request)
    assert json.loads((local_hub.current / "knowledge.json").read_text())["knowledge"] == {
        "00000000000000aa": "Phaser"
    }
    assert len(await query(engine, "SELECT 1 FROM publication_log WHERE kind = 'knowledge'")) == 1
    assert len(list((local_hub.repo / "commits").iterdir())) == 1
    assert Path(local_hub.current).is_symlink()


async def test_an_older_release_replayed_after_a_newer_one_is_superseded_and_main_stays(engine, local_hub):
    service = release_service(engine, local_hub)
    older = await trained_event(engine, trained_at="2026-05-01T10:00:00.000000+00:00Z")
    newer = await trained_event(
        engine,
        dict(FILES) | {"models/icon_classifier.pt": b"weights-v2"},
        trained_at="2026-05-02T10:00:00.000000+00:00Z",
    )
    await service.on_model_trained(newer)
    main = local_hub.current.resolve()
    await service.on_model_trained(older)  # a failed release replayed from the dead-letter queue
    assert local_hub.current.resolve() == main
    assert (local_hub.current / "models/icon_classifier.pt").read_bytes() == b"weights-v2"
    rows = await query(engine, "SELECT status FROM model_versions ORDER BY trained_at")
    assert [r.status for r in rows] == ["superseded", "published"]
    assert len(await query(engine, "SELECT 1 FROM outbox WHERE routing_key = 'model.published'")) == 1


async def test_an_artifact_path_leaving_the_hub_directory_is_refused_and_nothing_is_written(
    engine, local_hub, tmp_path
):
    service = release_service(engine, local_hub)
    event = await trained_event(engine, dict(FILES) | {"../../../escaped.txt": b"owned"})
    with pytest.raises(Unprocessable, match="not among the files a release may hold"):
        await service.on_model_trained(event)
    assert not list(tmp_path.rglob("escaped.txt")) and not local_hub.current.exists()
    [row] = await query(engine, "SELECT status, error FROM model_versions")
    assert row.status == "failed" and "'../../../escaped.txt'" in row.error
    with pytest.raises(PermanentPublishError, match="outside the release"):
        local_hub.publish("v-direct", {"../escaped.txt": b"owned"})
    assert not list(tmp_path.rglob("escaped.txt"))


async def test_a_gate_the_runs_record_refused_is_not_published(engine, local_hub):
    event = await trained_event(engine, gate=False)
    with pytest.raises(Unprocessable, match="records that its gate refused it"):
        await release_service(engine, local_hub).on_model_trained(
            event.model_copy(update={"quality_gate_passed": True})
        )
    assert [r.status for r in await query(engine, "SELECT status FROM model_versions")] == ["failed"]
    assert not local_hub.current.exists()
