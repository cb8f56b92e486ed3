"""The run rules (domain/runs.py): plain values in, a decision and its reason out."""

import uuid
from datetime import UTC, datetime, timedelta

from services.trainer.domain import runs
from services.trainer.domain.runs import Run, Stop

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SNAPSHOT, PUBLISHED = uuid.uuid4(), uuid.uuid4()
LABELS = {("icon", "a"): "Mine", ("icon", "b"): "Phaser", ("screen", "s"): "TRAITS"}


def a_run(**values) -> Run:
    fields = {"status": "pending", "attempts": 0, "started_at": None, "deadline_at": None} | values
    return Run(id=uuid.uuid4(), snapshot_id=SNAPSHOT, **fields)


def test_a_run_is_given_up_after_three_attempts():
    assert runs.give_up(0) is None
    assert runs.give_up(2) is None
    assert runs.give_up(3) == Stop("failed", "gave up after 3 attempts")
    assert runs.give_up(5, max_attempts=5) == Stop("failed", "gave up after 5 attempts")


def test_the_first_attempt_fixes_the_start_and_the_deadline():
    attempt = runs.next_attempt(a_run(), NOW, timedelta(minutes=50))
    assert (attempt.number, attempt.started_at, attempt.deadline_at) == (1, NOW, NOW + timedelta(minutes=50))


def test_a_resumed_attempt_keeps_the_start_and_the_deadline():
    started, deadline = NOW - timedelta(minutes=40), NOW + timedelta(minutes=10)
    run = a_run(status="running", attempts=1, started_at=started, deadline_at=deadline)
    attempt = runs.next_attempt(run, NOW, timedelta(minutes=50))
    assert (attempt.number, attempt.started_at, attempt.deadline_at) == (2, started, deadline)


def test_a_started_attempt_is_recorded_on_the_run():
    attempt = runs.next_attempt(a_run(attempts=1), NOW, timedelta(minutes=50))
    run = runs.with_attempt(a_run(attempts=1), attempt)
    assert (run.status, run.attempts, run.started_at, run.deadline_at) == (
        "running",
        2,
        NOW,
        NOW + timedelta(minutes=50),
    )


def test_the_seconds_left_never_go_below_zero():
    assert runs.seconds_left(NOW + timedelta(seconds=90), NOW) == 90
    assert runs.seconds_left(NOW - timedelta(seconds=5), NOW) == 0


def test_a_snapshot_with_the_published_models_labels_is_skipped():
    stop = runs.nothing_new(SNAPSHOT, LABELS, PUBLISHED, dict(LABELS))
    assert stop == Stop("skipped", "snapshot adds nothing over the published model")


def test_a_new_or_changed_label_is_trained():
    assert runs.nothing_new(SNAPSHOT, LABELS | {("icon", "c"): "Torpedo"}, PUBLISHED, LABELS) is None
    assert runs.nothing_new(SNAPSHOT, LABELS | {("icon", "a"): "Torpedo"}, PUBLISHED, LABELS) is None
    removed = {key: label for key, label in LABELS.items() if key != ("screen", "s")}
    assert runs.nothing_new(SNAPSHOT, removed, PUBLISHED, LABELS) is None


def test_without_a_published_model_or_on_its_own_snapshot_nothing_is_skipped():
    assert runs.nothing_new(SNAPSHOT, LABELS, None, {}) is None
    assert runs.nothing_new(SNAPSHOT, LABELS, SNAPSHOT, LABELS) is None


def test_too_few_icon_crops_or_classes_are_skipped_with_the_reason():
    assert runs.too_few_icons(3, 1) == Stop("skipped", "3 icon crops in 1 classes: at least 5 in 2")
    assert runs.too_few_icons(4, 2) == Stop("skipped", "4 icon crops in 2 classes: at least 5 in 2")
    assert runs.too_few_icons(50, 1) == Stop("skipped", "50 icon crops in 1 classes: at least 5 in 2")
    assert runs.too_few_icons(5, 2) is None


def test_icons_get_three_quarters_of_the_budget_when_a_screen_model_is_trained():
    assert runs.icon_share(screens_trainable=True) == 0.75
    assert runs.icon_share(screens_trainable=False) == 1.0
