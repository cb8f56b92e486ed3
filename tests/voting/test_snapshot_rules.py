"""When to snapshot, and why: the pure rules, with explicit times."""

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

from services.voting.domain.derived import cap_screen_types
from services.voting.domain.snapshots import (
    Accepted,
    LabelChanges,
    PreviousSnapshot,
    SnapshotRules,
    awaits_training,
    compose_snapshot,
    decide_snapshot,
    refresh_pause,
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
RULES = SnapshotRules(
    icon_threshold=10, screen_threshold=20, debounce=timedelta(seconds=30), training_wait=timedelta(hours=3)
)
QUIET = NOW - timedelta(seconds=30)
BUSY = NOW - timedelta(seconds=29)


def previous(runs=0, finished=0, age=timedelta(minutes=5)) -> PreviousSnapshot:
    return PreviousSnapshot(uuid.uuid4(), NOW - age, runs, finished)


def decide(icons=0, screens=0, *, new_classes=0, before=None, last_arrival=QUIET, forced=False, rules=RULES):
    return decide_snapshot(
        LabelChanges(icons, screens, new_classes),
        rules,
        now=NOW,
        previous=before,
        last_arrival=last_arrival,
        forced=forced,
    )


def test_below_both_thresholds_nothing_is_due():
    decision = decide(icons=9, screens=19)
    assert (decision.make, decision.still_due, decision.trigger) == (False, False, None)


def test_the_icon_threshold_snapshots_once_the_burst_is_quiet():
    decision = decide(icons=10, last_arrival=QUIET)
    assert (decision.make, decision.trigger) == (True, "icon_threshold")
    assert "10 new icon labels" in decision.reason


def test_the_screen_threshold_alone_snapshots_too():
    decision = decide(icons=3, screens=20)
    assert (decision.make, decision.trigger) == (True, "screen_threshold")


def test_with_no_contribution_ever_received_it_counts_as_quiet():
    assert decide(icons=10, last_arrival=None).make


def test_while_contributions_still_arrive_the_snapshot_is_deferred_but_stays_due():
    decision = decide(icons=99, last_arrival=BUSY)
    assert (decision.make, decision.still_due, decision.trigger) == (False, True, "icon_threshold")
    assert "still arriving" in decision.reason


def test_ten_times_the_threshold_overrides_the_debounce():
    assert decide(icons=100, last_arrival=BUSY).make
    assert decide(screens=100, last_arrival=BUSY).make  # the pile-up counts against ten icon thresholds
    assert not decide(screens=99, last_arrival=BUSY).make


def test_a_snapshot_whose_run_is_unfinished_defers_the_next_even_past_the_pile_up():
    waiting = previous(runs=1, finished=0, age=timedelta(days=2))
    decision = decide(icons=500, before=waiting)
    assert (decision.make, decision.still_due) == (False, True)
    assert str(waiting.id) in decision.reason


def test_a_snapshot_with_a_finished_run_blocks_nothing():
    assert decide(icons=10, before=previous(runs=2, finished=1)).make


def test_a_snapshot_without_a_run_blocks_only_within_the_wait_limit():
    assert not decide(icons=10, before=previous(age=timedelta(hours=3) - timedelta(seconds=1))).make
    assert decide(icons=10, before=previous(age=timedelta(hours=3))).make


def test_awaits_training_reads_runs_before_age():
    assert awaits_training(previous(runs=1, age=timedelta(days=9)), NOW, RULES.training_wait)
    assert not awaits_training(previous(runs=1, finished=1, age=timedelta(0)), NOW, RULES.training_wait)


def test_an_admin_request_snapshots_now_whatever_waits_or_arrives():
    decision = decide(icons=0, before=previous(runs=1), last_arrival=NOW, forced=True)
    assert (decision.make, decision.trigger) == (True, "admin")


def test_new_classes_snapshot_at_once_below_the_threshold_while_busy_and_while_a_training_waits():
    training = previous(runs=1, finished=0, age=timedelta(minutes=1))
    decision = decide(icons=3, new_classes=1, before=training, last_arrival=NOW)
    assert (decision.make, decision.trigger) == (True, "new_classes")
    assert "1 new classes" in decision.reason


def test_new_classes_wait_for_the_spacing_since_the_previous_snapshot_and_stay_due():
    recent = previous(runs=1, finished=0, age=timedelta(seconds=59))
    decision = decide(icons=3, new_classes=2, before=recent)
    assert (decision.make, decision.still_due, decision.trigger) == (False, True, "new_classes")
    assert "59 s old" in decision.reason


def test_without_a_previous_snapshot_or_with_the_spacing_off_new_classes_follow_the_thresholds():
    assert not decide(icons=3, new_classes=3).make  # no snapshot, so no published model to imprint into
    off = dataclasses.replace(RULES, new_class_spacing=None)
    assert not decide(icons=3, new_classes=3, before=previous(runs=1), rules=off).make
    assert decide(icons=10, new_classes=3, before=previous(runs=1, finished=1), rules=off).make


def test_the_threshold_trigger_wins_when_both_would_snapshot():
    decision = decide(icons=10, new_classes=1, before=previous(runs=1, finished=1))
    assert decision.trigger == "icon_threshold"


def test_a_long_refresh_runs_at_most_a_quarter_of_the_time():
    assert refresh_pause(2.0, 0.1) == 2.0
    assert refresh_pause(2.0, 3.0) == 9.0


def test_a_snapshot_holds_every_kind_in_its_published_form_and_says_why():
    labels = {
        "screen": {f"{i:064x}": "TRAITS" for i in range(200)},
        "knowledge": {"00ff": "Phaser"},
        "ocr": {"Ship Type\x1fCrulser": "Cruiser", "Ship Tier\x1fT6": "T6"},
        "anchor": {"SPACE\x1f1.78": {"slots": {}}},
    }
    accepted = Accepted(labels)  # icons are copied by the store (tests/voting/test_snapshots.py)
    screens = cap_screen_types(accepted.of("screen"))
    parent = uuid.uuid4()
    snapshot = compose_snapshot(
        uuid.uuid4(), parent, accepted, screens, LabelChanges(1, 150), "screen_threshold", RULES
    )
    kinds = [item.kind for item in snapshot.items]
    assert {kind: kinds.count(kind) for kind in set(kinds)} == {
        "screen": 150,
        "knowledge": 1,
        "ocr": 1,
        "anchor": 1,
    }
    assert [(i.key, i.label, i.value, i.image_sha256) for i in snapshot.items if i.kind == "ocr"] == [
        ("Crulser", "Cruiser", None, None)
    ]
    assert (snapshot.parent_id, snapshot.reason, snapshot.new_label_count) == (parent, "threshold", 1)
    assert snapshot.details == {
        "trigger": "screen_threshold",
        "new_icon_labels": 1,
        "new_screen_images": 150,
        "new_icon_classes": 0,
        "icon_threshold": 10,
        "screen_threshold": 20,
        "ocr_corrections": 1,
    }
    admin = compose_snapshot(uuid.uuid4(), None, accepted, screens, LabelChanges(0, 0), "admin", RULES)
    assert admin.reason == "admin"
