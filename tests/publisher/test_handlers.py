"""The publisher's handlers in memory: the composition root wired with a fake store, a fake Hub and a clock."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from services.publisher.bootstrap import Publisher, bootstrap
from services.publisher.domain import TrainedRun
from services.publisher.settings import PublisherSettings
from shared.consumer import Unprocessable
from shared.events import (
    KnowledgePublished,
    KnowledgePublishRequested,
    ModelPublished,
    ModelTrained,
    ReleaseApprovalRequested,
    ReleaseModeRequested,
    RollbackRequested,
)
from tests.publisher.conftest import FILES
from tests.publisher.fakes import FakeHub, FakeReleaseStore
from tests.utils.clock import FakeClock

FIRST, SECOND = "2026-05-01T10:00:00.000000+00:00Z", "2026-05-02T10:00:00.000000+00:00Z"


@pytest.fixture
def publisher() -> Publisher:
    return bootstrap(
        PublisherSettings(),
        store=FakeReleaseStore(),
        hub=FakeHub(),
        clock=FakeClock(datetime(2026, 6, 1, 12, 0, 1, tzinfo=UTC)),
    )


def trained(
    publisher: Publisher, files=FILES, *, trained_at=FIRST, gate=True, status="succeeded"
) -> ModelTrained:
    return publisher.store.finished_run(files, trained_at=trained_at, gate=gate, status=status)


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


async def test_a_failed_release_replayed_after_a_newer_one_is_superseded_and_never_moves_main(publisher):
    older = trained(publisher, trained_at=FIRST)
    publisher.hub.refuse = "Hub answered 400"
    with pytest.raises(Unprocessable):
        await publisher.service.on_model_trained(older)
    publisher.hub.refuse = None
    newer = trained(publisher, FILES | {"models/icon_classifier.pt": b"weights-v2"}, trained_at=SECOND)
    await publisher.service.on_model_trained(newer)
    head, commits = publisher.hub.head, len(publisher.hub.commits)
    await publisher.service.on_model_trained(older)  # replayed from the dead-letter queue
    await publisher.service.on_model_trained(older)  # and redelivered: settled
    assert (publisher.hub.head, len(publisher.hub.commits)) == (head, commits)
    assert publisher.hub.current["models/icon_classifier.pt"] == b"weights-v2"
    statuses = {r.trained_at: r.status for r in publisher.store.releases.values()}
    assert statuses == {FIRST: "superseded", SECOND: "published"}
    assert (await publisher.store.current()).trained_at == SECOND
    assert [e.trained_at for e in publisher.store.outbox] == [SECOND]
    superseded = [entry for entry in publisher.store.log if entry["event"] == "superseded"]
    assert len(superseded) == 1 and "before the published v20260502" in superseded[0]["detail"]["reason"]


@pytest.mark.parametrize(
    "path", ["../../outside.txt", "/etc/cron.d/warp", "models/../../outside.txt", "models/extra.bin"]
)
async def test_an_artifact_path_outside_the_contract_is_refused_and_recorded(publisher, path):
    event = trained(publisher, FILES | {path: b"anything"})
    with pytest.raises(Unprocessable, match="not among the files a release may hold"):
        await publisher.service.on_model_trained(event)
    [release] = publisher.store.releases.values()
    assert release.status == "failed" and repr(path) in publisher.store.errors[release.version]
    assert publisher.hub.attempts == 0 and publisher.store.outbox == []


async def test_a_gate_the_runs_record_does_not_back_is_refused_and_recorded(publisher):
    claims_passed = trained(publisher)
    publisher.store.runs[claims_passed.run_id] = TrainedRun("succeeded", gate_passed=False)
    with pytest.raises(Unprocessable, match="records that its gate refused it"):
        await publisher.service.on_model_trained(claims_passed)
    [release] = publisher.store.releases.values()
    assert release.status == "failed" and "quality_gate_passed" in publisher.store.errors[release.version]
    assert publisher.hub.attempts == 0 and publisher.store.outbox == []


async def test_a_release_of_a_run_that_failed_or_does_not_exist_is_refused(publisher):
    failed_run = trained(publisher, status="failed")
    with pytest.raises(Unprocessable, match="is failed, not succeeded"):
        await publisher.service.on_model_trained(failed_run)
    no_run = trained(publisher, trained_at=SECOND)
    del publisher.store.runs[no_run.run_id]
    with pytest.raises(Unprocessable, match=f"no training run {no_run.run_id}"):
        await publisher.service.on_model_trained(no_run)
    assert [r.status for r in publisher.store.releases.values()] == ["failed"]  # a row must name its run
    assert [(e["event"], e["version"]) for e in publisher.store.log][-1] == ("refused", None)
    assert publisher.hub.attempts == 0 and publisher.store.outbox == []


async def test_in_held_mode_a_release_waits_for_its_approval_then_goes_out_once(publisher):
    await publisher.service.on_release_mode(ReleaseModeRequested(mode="held", requested_by="console-s1"))
    event = trained(publisher)
    await publisher.service.on_model_trained(event)
    await publisher.service.on_model_trained(event)  # redelivered: still held, nothing published
    [held] = publisher.store.releases.values()
    assert held.status == "held" and publisher.hub.attempts == 0 and publisher.store.outbox == []
    approval = ReleaseApprovalRequested(run_id=event.run_id, requested_by="console-s1")
    await publisher.service.on_release_approval(approval)
    await publisher.service.on_release_approval(approval)  # redelivered: published once
    [release] = publisher.store.releases.values()
    assert release.status == "published" and list(publisher.hub.tags) == [release.version]
    assert [e["event"] for e in publisher.store.log] == ["mode", "held", "published"]


async def test_back_in_automatic_mode_a_release_goes_out_without_approval(publisher):
    await publisher.service.on_release_mode(ReleaseModeRequested(mode="held"))
    await publisher.service.on_release_mode(ReleaseModeRequested(mode="automatic"))
    await publisher.service.on_model_trained(trained(publisher))
    assert [r.status for r in publisher.store.releases.values()] == ["published"]


async def test_an_approval_of_a_run_without_a_held_release_is_refused(publisher):
    with pytest.raises(Unprocessable, match="no release of training run"):
        await publisher.service.on_release_approval(ReleaseApprovalRequested(run_id=uuid.uuid4()))
    rejected = trained(publisher, gate=False)
    await publisher.service.on_model_trained(rejected)
    with pytest.raises(Unprocessable, match="is rejected, not held"):
        await publisher.service.on_release_approval(ReleaseApprovalRequested(run_id=rejected.run_id))
    assert publisher.hub.attempts == 0


async def test_a_held_release_approved_after_a_newer_one_went_out_is_superseded(publisher):
    await publisher.service.on_release_mode(ReleaseModeRequested(mode="held"))
    older = trained(publisher, trained_at=FIRST)
    await publisher.service.on_model_trained(older)
    await publisher.service.on_release_mode(ReleaseModeRequested(mode="automatic"))
    await publisher.service.on_model_trained(trained(publisher, trained_at=SECOND))
    await publisher.service.on_release_approval(ReleaseApprovalRequested(run_id=older.run_id))
    statuses = {r.trained_at: r.status for r in publisher.store.releases.values()}
    assert statuses == {FIRST: "superseded", SECOND: "published"} and publisher.hub.attempts == 1
