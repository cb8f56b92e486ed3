"""The publisher's handlers in memory: the composition root wired with a fake store, a fake Hub and a clock."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.publisher.bootstrap import Publisher, bootstrap
from services.publisher.settings import PublisherSettings
from shared.consumer import Unprocessable
from shared.events import (
    KnowledgePublished,
    KnowledgePublishRequested,
    ModelPublished,
    ModelTrained,
    RollbackRequested,
)
from tests.publisher.conftest import FILES
from tests.publisher.fakes import FakeHub, FakeReleaseStore

FIRST, SECOND = "2026-05-01T10:00:00.000000+00:00Z", "2026-05-02T10:00:00.000000+00:00Z"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def publisher() -> Publisher:
    return bootstrap(PublisherSettings(), store=FakeReleaseStore(), hub=FakeHub(), clock=Clock())


def trained(publisher: Publisher, files=FILES, *, trained_at=FIRST, gate=True) -> ModelTrained:
    return publisher.store.finished_run(files, trained_at=trained_at, gate=gate)


async def test_a_release_is_one_tagged_commit_with_every_file_and_an_announcement(publisher):
    await publisher.service.on_model_trained(trained(publisher))
    [release] = publisher.store.releases.values()
    assert (release.version, release.status) == ("v20260501-100000-000000", "published")
    assert publisher.hub.tags == {release.version: publisher.hub.head}
    current = publisher.hub.current
    assert {path: current[path] for path in FILES} == FILES
    assert set(current) == set(FILES) | {"models/model_version.json", "README.md", "knowledge.json"}
    assert json.loads(current["models/model_version.json"])["trained_at"] == FIRST
    [announced] = publisher.store.outbox
    assert isinstance(announced, ModelPublished) and announced.hub_commit == publisher.hub.head
    assert [entry["event"] for entry in publisher.store.log] == ["published"]
    assert publisher.store.published_at[release.version] == datetime(2026, 6, 1, 12, 0, 1, tzinfo=UTC)


async def test_a_redelivered_model_trained_creates_nothing_new(publisher):
    event = trained(publisher)
    await publisher.service.on_model_trained(event)
    await publisher.service.on_model_trained(event)
    assert len(publisher.store.releases) == 1 and len(publisher.hub.commits) == 1
    assert publisher.hub.attempts == 1 and len(publisher.store.outbox) == 1


async def test_a_release_that_failed_is_attempted_again_under_the_same_version(publisher):
    event = trained(publisher)
    publisher.hub.refuse = "Hub refused the token (401)"
    with pytest.raises(Unprocessable):
        await publisher.service.on_model_trained(event)
    publisher.hub.refuse = None
    await publisher.service.on_model_trained(event)  # replayed from the dead-letter queue
    [release] = publisher.store.releases.values()
    assert release.status == "published" and list(publisher.hub.tags) == [release.version]


async def test_a_model_the_quality_gate_refused_is_recorded_not_published(publisher):
    event = trained(publisher, gate=False)
    await publisher.service.on_model_trained(event)
    await publisher.service.on_model_trained(event)
    assert [r.status for r in publisher.store.releases.values()] == ["rejected"]
    assert publisher.hub.attempts == 0 and publisher.store.outbox == []
    [logged] = publisher.store.log
    assert logged["event"] == "rejected" and logged["detail"] == {
        "reason": {"publish": False, "reason": "test"}
    }


async def test_a_permanent_hub_error_records_a_failed_release_and_refuses_the_message(publisher):
    publisher.hub.refuse = "Hub refused the token (401)"
    with pytest.raises(Unprocessable, match="failed permanently: Hub refused the token"):
        await publisher.service.on_model_trained(trained(publisher))
    [release] = publisher.store.releases.values()
    assert release.status == "failed" and "401" in publisher.store.errors[release.version]
    assert publisher.hub.attempts == 1 and publisher.store.outbox == []
    assert [entry["event"] for entry in publisher.store.log] == ["failed"]


async def test_a_rollback_republishes_old_weights_with_a_newer_trained_at(publisher):
    await publisher.service.on_model_trained(trained(publisher, trained_at=FIRST))
    newer = FILES | {"models/icon_classifier.pt": b"weights-v2"}
    await publisher.service.on_model_trained(trained(publisher, newer, trained_at=SECOND))
    request = RollbackRequested(target_version="v20260501-100000-000000")
    await publisher.service.on_rollback(request)
    await publisher.service.on_rollback(request)  # redelivered
    releases = sorted(publisher.store.releases.values(), key=lambda r: r.trained_at)
    assert [r.status for r in releases] == ["published"] * 3
    assert releases[-1].rollback_of == "v20260501-100000-000000" and releases[-1].trained_at > SECOND
    assert publisher.hub.current["models/icon_classifier.pt"] == b"weights-v1"
    version = json.loads(publisher.hub.current["models/model_version.json"])
    assert version["trained_at"] == releases[-1].trained_at
    assert len(publisher.hub.commits) == 3


async def test_a_rollback_to_a_version_never_published_is_refused(publisher):
    await publisher.service.on_model_trained(trained(publisher, gate=False))
    for target in ("v-nope", "v20260501-100000-000000"):
        with pytest.raises(Unprocessable, match=f"no published version '{target}'"):
            await publisher.service.on_rollback(RollbackRequested(target_version=target))
    assert publisher.hub.attempts == 0


async def test_the_knowledge_map_is_published_once_per_request_without_unlabelled_entries(publisher):
    publisher.store.consensus.update({"00000000000000aa": "Phaser", "00000000000000bb": None})
    request = KnowledgePublishRequested()
    await publisher.service.on_knowledge_requested(request)
    await publisher.service.on_knowledge_requested(request)
    knowledge = json.loads(publisher.hub.current["knowledge.json"])
    assert knowledge == {
        "knowledge": {"00000000000000aa": "Phaser"},
        "updated_at": "2026-06-01T12:00:01.000000+00:00Z",
    }
    assert publisher.hub.tags == {} and len(publisher.hub.commits) == 1
    [announced] = publisher.store.outbox
    assert isinstance(announced, KnowledgePublished) and announced.n_entries == 1


async def test_a_release_carries_the_knowledge_map_as_it_stands(publisher):
    publisher.store.consensus["00000000000000aa"] = "Phaser"
    await publisher.service.on_model_trained(trained(publisher))
    knowledge = json.loads(publisher.hub.current["knowledge.json"])
    assert knowledge == {"knowledge": {"00000000000000aa": "Phaser"}, "updated_at": FIRST}


def test_without_a_token_releases_go_to_the_local_hub(tmp_path):
    from services.publisher.bootstrap import hub_from
    from services.publisher.hub import HfHub, LocalHub

    assert isinstance(hub_from(PublisherSettings(local_hub_dir=tmp_path)), LocalHub)
    assert isinstance(hub_from(PublisherSettings(local_hub_dir=tmp_path, hf_token="hf_x")), HfHub)
