"""The release store's contract, held by the Postgres store and by the in-memory fake the handler tests use."""

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from services.publisher import domain
from services.publisher.domain import Published
from services.publisher.store import PostgresReleaseStore
from shared.events import KnowledgePublishRequested, ModelTrained, decode_event
from tests.publisher.conftest import FILES, trained_event
from tests.publisher.fakes import FakeReleaseStore

AT = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass
class Case:
    """A store and the ways to put the others' rows it reads (a finished run, accepted knowledge) in place."""

    store: Any
    engine: Any = None

    async def finished_run(self, trained_at: str = "2026-05-01T10:00:00.000000+00:00Z") -> ModelTrained:
        if self.engine is not None:
            return await trained_event(self.engine, trained_at=trained_at)
        return self.store.finished_run(FILES, trained_at=trained_at)

    async def accept_knowledge(self, key: str, label: str | None) -> None:
        if self.engine is None:
            self.store.consensus[key] = label
            return
        async with self.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO consensus (item_kind, item_key, label, status, support, confidence) "
                    "VALUES ('knowledge', :key, :label, 'accepted', 3, 0.99)"
                ),
                {"key": key, "label": label},
            )

    async def announced(self) -> list[str]:
        if self.engine is None:
            return [event.message_id for event in self.store.outbox]
        async with self.engine.connect() as connection:
            bodies = (await connection.execute(text("SELECT body FROM outbox ORDER BY id"))).scalars()
            return [decode_event(body).message_id for body in bodies]


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def case(request) -> Case:
    if request.param == "memory":
        return Case(FakeReleaseStore())
    engine = request.getfixturevalue("engine")
    return Case(PostgresReleaseStore(engine), engine)


async def test_a_release_is_recorded_once_and_found_by_version_and_by_message(case):
    event = await case.finished_run()
    release = domain.trained_release(event, None)
    await case.store.record_pending(release)
    await case.store.record_pending(replace(release, n_users=99))  # redelivered: the first row stays
    assert await case.store.release(release.version) == release
    assert await case.store.release_for(event.message_id) == release
    assert await case.store.release("v-none") is None and await case.store.release_for("none") is None


async def test_a_release_becomes_failed_then_published_and_is_announced_once(case):
    release = domain.trained_release(await case.finished_run(), None)
    await case.store.record_pending(release)
    await case.store.record_failed(release.version, "Hub answered 500" + "!" * 5000)
    assert (await case.store.release(release.version)).status == "failed"
    landed = Published("c0ffee", release.version)
    announcement = domain.model_published(release, landed)
    await case.store.record_published(release.version, landed, AT, sorted(FILES), announcement)
    assert await case.store.release(release.version) == replace(release, status="published")
    assert await case.announced() == [announcement.message_id]


async def test_a_rejected_release_is_recorded(case):
    release = domain.trained_release(await case.finished_run(), None)
    await case.store.record_rejected(replace(release, status="rejected"), {"publish": False})
    assert (await case.store.release(release.version)).status == "rejected"


async def test_the_artifacts_of_a_run_are_read_with_their_bytes(case):
    event = await case.finished_run()
    artifacts = await case.store.run_artifacts(event.run_id)
    assert artifacts == event.artifacts
    assert await case.store.read_blobs(artifacts) == FILES


async def test_the_knowledge_map_holds_accepted_labelled_entries_only(case):
    await case.accept_knowledge("00000000000000aa", "Phaser")
    await case.accept_knowledge("00000000000000bb", None)
    assert await case.store.knowledge_map() == {"00000000000000aa": "Phaser"}


async def test_a_knowledge_publication_is_recorded_once_per_request(case):
    request = KnowledgePublishRequested()
    assert not await case.store.knowledge_published(request.message_id)
    landed = Published("beef", "")
    announcement = domain.knowledge_published(
        request.message_id, landed, 1, "2026-06-01T00:00:00.000000+00:00Z"
    )
    assert await case.store.record_knowledge(request.message_id, landed, 1, announcement)
    assert not await case.store.record_knowledge(request.message_id, landed, 1, announcement)
    assert await case.store.knowledge_published(request.message_id)
    assert await case.announced() == [announcement.message_id]


async def test_the_runs_record_and_the_current_release_are_read(case):
    event = await case.finished_run()
    assert await case.store.trained_run(event.run_id) == domain.TrainedRun("succeeded", True)
    assert await case.store.trained_run(uuid.uuid4()) is None
    assert await case.store.current() is None
    release = domain.trained_release(event, None)
    await case.store.record_pending(release)
    await case.store.record_published(
        release.version,
        Published("c0ffee", release.version),
        AT,
        [],
        domain.model_published(release, Published("c0ffee", release.version)),
    )
    assert await case.store.current() == replace(release, status="published")


async def test_a_failed_release_becomes_superseded_and_a_refused_one_failed_with_its_reason(case):
    older = domain.trained_release(await case.finished_run(), None)
    await case.store.record_pending(older)
    await case.store.record_failed(older.version, "Hub answered 400")
    await case.store.record_superseded(older, "trained before the published one")
    assert await case.store.release(older.version) == replace(older, status="superseded")
    refused = domain.trained_release(await case.finished_run("2026-05-03T10:00:00.000000+00:00Z"), None)
    await case.store.record_refused(refused, "artifacts: '../x' not among the files a release may hold")
    assert (await case.store.release(refused.version)).status == "failed"
    no_run = replace(
        refused,
        version="v-no-run",
        source_message_id="m-no-run",
        run_id=uuid.uuid4(),
        trained_at="2026-05-04T10:00:00.000000+00:00Z",
    )
    await case.store.record_refused(no_run, "run_id: no training run")
    assert await case.store.release("v-no-run") is None
    assert await case.announced() == []


async def test_the_release_mode_is_automatic_until_asked_and_each_request_applies_once(case):
    assert await case.store.release_mode() == "automatic"
    assert await case.store.set_release_mode("held", "console-s1", "m-1") is True
    assert await case.store.set_release_mode("automatic", "console-s1", "m-1") is False  # redelivered
    assert await case.store.release_mode() == "held"
    assert await case.store.set_release_mode("automatic", "console-s2", "m-2") is True
    assert await case.store.release_mode() == "automatic"


async def test_a_held_release_is_found_by_its_run_and_not_by_a_rollback_of_it(case):
    event = await case.finished_run()
    release = domain.trained_release(event, None)
    await case.store.record_held(release)
    assert await case.store.release_of_run(event.run_id) == replace(release, status="held")
    assert await case.store.release_of_run(uuid.uuid4()) is None
