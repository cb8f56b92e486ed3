"""The publisher's pure rules: what a request asks for, what a redelivery does, the files of a release."""

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.publisher import domain
from services.publisher.domain import Published, Release
from shared.events import ModelTrained

RUN, SNAPSHOT = uuid.uuid4(), uuid.uuid4()


def trained(gate: bool = True, **metrics) -> ModelTrained:
    return ModelTrained(
        message_id="trained-1",
        run_id=RUN,
        snapshot_id=SNAPSHOT,
        trained_at="2026-05-01T10:00:00.000000+00:00Z",
        artifacts={"models/icon_classifier.pt": "ab" * 32},
        metrics={"val_acc": 0.9, "quality_gate": {"publish": gate, "reason": "test"}} | metrics,
        n_classes=2,
        n_samples=40,
        n_users=7,
        quality_gate_passed=gate,
    )


PUBLISHED = replace(domain.trained_release(trained(), None), status="published")


def test_a_version_is_named_after_its_trained_at_and_sorts_like_it():
    assert domain.version_name("2026-04-06T12:01:02.345678+00:00Z") == "v20260406-120102-345678"
    times = [
        "2026-04-06T12:01:02.345678+00:00Z",
        "2026-04-06T12:01:02.400000+00:00Z",
        "2027-01-01T00:00:00.000000+00:00Z",
    ]
    assert sorted(domain.version_name(t) for t in times) == [domain.version_name(t) for t in times]


def test_a_model_trained_asks_for_a_pending_release_or_a_rejected_one_when_the_gate_refused_it():
    release = domain.trained_release(trained(), None)
    assert release == Release(
        version="v20260501-100000-000000",
        source_message_id="trained-1",
        run_id=RUN,
        snapshot_id=SNAPSHOT,
        trained_at="2026-05-01T10:00:00.000000+00:00Z",
        metrics=trained().metrics,
        n_classes=2,
        n_samples=40,
        n_users=7,
    )
    assert release.status == "pending"
    assert domain.trained_release(trained(gate=False), None).status == "rejected"


def test_a_redelivery_keeps_the_version_its_first_delivery_recorded():
    recorded = replace(domain.trained_release(trained(), None), version="v-recorded", status="failed")
    assert domain.trained_release(trained(), recorded).version == "v-recorded"


@pytest.mark.parametrize(
    ("status", "settled"),
    [("published", True), ("rejected", True), ("superseded", True), ("pending", False), ("failed", False)],
)
def test_only_a_published_refused_or_superseded_release_is_settled(status, settled):
    assert domain.is_settled(replace(PUBLISHED, status=status)) is settled
    assert domain.is_settled(None) is False


def test_only_a_published_version_can_be_rolled_back_to():
    assert domain.rollback_refusal(PUBLISHED.version, PUBLISHED) is None
    for target in (None, replace(PUBLISHED, status="failed"), replace(PUBLISHED, status="rejected")):
        assert domain.rollback_refusal("v1", target) == "rollback: no published version 'v1'"


def test_a_rollback_is_the_old_release_with_a_newer_trained_at():
    now = datetime(2026, 6, 1, 8, 30, tzinfo=UTC)
    rollback = domain.rollback_release(PUBLISHED, "rollback-1", None, now)
    assert rollback == replace(
        PUBLISHED,
        version="v20260601-083000-000000",
        source_message_id="rollback-1",
        trained_at="2026-06-01T08:30:00.000000+00:00Z",
        rollback_of=PUBLISHED.version,
        status="pending",
    )
    assert rollback.trained_at > PUBLISHED.trained_at  # installed clients compare as strings
    later = datetime(2026, 7, 1, tzinfo=UTC)
    assert domain.rollback_release(PUBLISHED, "rollback-1", rollback, later) == rollback  # redelivered


def test_a_release_holds_the_artifacts_the_version_record_the_model_card_and_the_knowledge_map():
    release = domain.trained_release(trained(screen_val_acc=0.8, screen_n_samples=None), None)
    files = domain.release_files(release, {"models/icon_classifier.pt": b"w"}, {"aa": "Phaser"})
    assert sorted(files) == [
        "README.md",
        "knowledge.json",
        "models/icon_classifier.pt",
        "models/model_version.json",
    ]
    assert json.loads(files["models/model_version.json"]) == {
        "version": "v20260501-100000-000000",
        "trained_at": "2026-05-01T10:00:00.000000+00:00Z",
        "n_classes": 2,
        "val_acc": 0.9,
        "n_samples": 40,
        "n_users": 7,
        "screen_val_acc": 0.8,
    }
    assert json.loads(files["knowledge.json"]) == {
        "knowledge": {"aa": "Phaser"},
        "updated_at": release.trained_at,
    }
    card = files["README.md"].decode()
    assert card.startswith("---\n") and f"training snapshot: `{SNAPSHOT}`" in card and "rollback" not in card
    rollback = domain.rollback_release(PUBLISHED, "r", None, datetime(2026, 6, 1, tzinfo=UTC))
    assert (
        f"the weights of `{PUBLISHED.version}`"
        in domain.release_files(rollback, {}, {})["README.md"].decode()
    )


def test_the_events_that_announce_a_publication():
    landed = Published("c0ffee", PUBLISHED.version)
    announced = domain.model_published(PUBLISHED, landed)
    assert (
        announced.message_id,
        announced.version,
        announced.hub_commit,
        announced.hub_tag,
        announced.run_id,
    ) == (
        f"model-published-{PUBLISHED.version}",
        PUBLISHED.version,
        "c0ffee",
        PUBLISHED.version,
        RUN,
    )
    knowledge = domain.knowledge_published(
        "req-1", Published("beef", ""), 3, "2026-06-01T00:00:00.000000+00:00Z"
    )
    assert (knowledge.message_id, knowledge.n_entries) == ("knowledge-published-req-1", 3)
    assert domain.knowledge_version("req-1") == "knowledge-req-1"


@pytest.mark.parametrize(
    ("artifacts", "run", "refusal"),
    [
        ({"models/label_map.json": "ab"}, domain.TrainedRun("succeeded", True), None),
        ({"../x": "ab"}, domain.TrainedRun("succeeded", True), "artifacts: '../x' not among"),
        ({"/etc/x": "ab"}, domain.TrainedRun("succeeded", True), "artifacts: '/etc/x' not among"),
        ({"models/x.bin": "ab"}, domain.TrainedRun("succeeded", True), "artifacts: 'models/x.bin' not among"),
        ({"README.md": "ab"}, domain.TrainedRun("succeeded", True), "artifacts: 'README.md' not among"),
        ({}, None, f"run_id: no training run {RUN}"),
        ({}, domain.TrainedRun("running", True), f"run_id: training run {RUN} is running, not succeeded"),
        ({}, domain.TrainedRun("succeeded", False), "quality_gate_passed: true, but training run"),
    ],
)
def test_a_model_trained_is_refused_unless_its_paths_and_its_runs_record_back_it(artifacts, run, refusal):
    event = trained().model_copy(update={"artifacts": artifacts})
    found = domain.trained_refusal(event, run)
    assert found == refusal if refusal is None else found.startswith(refusal)


def test_a_gate_that_refused_needs_no_backing_from_the_record():
    assert domain.trained_refusal(trained(gate=False), domain.TrainedRun("succeeded", False)) is None


def test_a_release_older_than_the_published_one_is_superseded():
    published = domain.trained_release(trained(), None)
    older = replace(published, version="v-older", trained_at="2026-04-30T10:00:00.000000+00:00Z")
    newer = replace(published, version="v-newer", trained_at="2026-05-02T10:00:00.000000+00:00Z")
    assert domain.superseded_by(newer, published) is None
    assert domain.superseded_by(older, None) is None
    assert domain.superseded_by(older, published) == (
        "trained at 2026-04-30T10:00:00.000000+00:00Z, before the published v20260501-100000-000000 "
        "(2026-05-01T10:00:00.000000+00:00Z)"
    )
