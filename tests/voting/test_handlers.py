"""The voting handlers in memory: a fake store and a clock the test moves."""

import pytest

from services.voting.bootstrap import Voting, bootstrap
from services.voting.settings import VotingSettings
from shared.events import ModelPredicted, Prediction, PredictionRequested, TrainingForceRequested
from tests.utils.clock import FakeClock
from tests.voting.conftest import crop_vote
from tests.voting.fakes import FakeRelay, FakeVotingStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock) -> FakeVotingStore:
    """The labels voted here are known (as if a published model had them): three fresh installs settle one."""
    store = FakeVotingStore(clock)
    store.known["icon"] = {f"Item {i}": "published" for i in range(200)}
    return store


def voting(store, clock, relay=None, **settings) -> Voting:
    defaults = {"training_debounce_seconds": 30, "training_wait_hours": 3, "health_port": 0}
    return bootstrap(
        VotingSettings(**(defaults | settings)),
        store=store,
        relay=relay or FakeRelay(),
        clock=clock,
    )


def agreeing_votes(crops, installs=("a", "b", "c")) -> list:
    return [crop_vote(install, crop, f"Item {crop}") for crop in crops for install in installs]


async def test_a_batch_stores_each_vote_once_and_the_latest_vote_of_an_install_wins(store, clock):
    service = voting(store, clock).service
    first = crop_vote("a", 1, "Early", at=1)
    await service.handle([first, first, crop_vote("a", 1, "Late", at=9), crop_vote("b", 1, "Early")])
    await service.handle([first])  # redelivered: older than what is held
    assert {key[2]: row.label for key, row in store.votes.items()} == {"a": "Late", "b": "Early"}
    assert store.dirty == {(kind, key) for kind, key, _ in store.votes}  # queued for the next refresh
    assert len(store.received) == 3
    assert len(store.blobs) == 1


async def test_a_refresh_snapshots_when_the_threshold_is_met_and_the_burst_is_quiet(store, clock):
    app = voting(store, clock)
    await app.service.handle(agreeing_votes(range(10)))
    clock.advance(seconds=29)
    deferred = await app.refresher.refresh()
    assert deferred.refreshed and deferred.snapshot_id is None and deferred.stats["snapshot_pending"]
    assert [c.status for c in store.consensus.values()] == ["accepted"] * 10
    clock.advance(seconds=1)
    made = await app.refresher.refresh()  # no new vote: it looks again because the snapshot was due
    assert made.snapshot_id is not None
    [(snapshot, _)] = store.snapshots
    assert snapshot.details["trigger"] == "icon_threshold" and snapshot.new_label_count == 10
    [request] = store.outbox
    assert (request.snapshot_id, request.reason, request.new_labels) == (snapshot.id, "threshold", 10)
    assert not (await app.refresher.refresh()).refreshed  # nothing changed, nothing pending


async def test_below_the_threshold_nothing_is_pending(store, clock):
    app = voting(store, clock)
    await app.service.handle(agreeing_votes(range(9)))
    clock.advance(hours=1)
    outcome = await app.refresher.refresh()
    assert outcome.refreshed and outcome.snapshot_id is None and not outcome.stats["snapshot_pending"]
    assert not (await app.refresher.refresh()).refreshed


async def test_while_a_snapshot_waits_for_training_the_next_is_deferred(store, clock):
    # its new labels are new classes too; those are snapshotted at once unless turned off (test_snapshots.py)
    app = voting(store, clock, training_debounce_seconds=0, new_class_snapshot_seconds=0)
    await app.service.handle(agreeing_votes(range(10)))
    first = (await app.refresher.refresh()).snapshot_id
    await app.service.handle(agreeing_votes(range(10, 25)))
    store.add_run(first, "running")
    clock.advance(hours=5)  # a run exists: the wait limit does not apply
    assert (await app.refresher.refresh()).stats["snapshot_pending"]
    store.add_run(first, "succeeded")
    second = (await app.refresher.refresh()).snapshot_id
    assert second is not None and second != first
    assert store.snapshots[-1][0].parent_id == first
    assert store.snapshots[-1][0].new_label_count == 15


async def test_a_snapshot_nobody_took_up_stops_blocking_after_the_wait(store, clock):
    # new classes are snapshotted at once unless turned off; this is about the threshold path
    app = voting(store, clock, training_debounce_seconds=0, new_class_snapshot_seconds=0)
    await app.service.handle(agreeing_votes(range(10)))
    assert (await app.refresher.refresh()).snapshot_id is not None
    await app.service.handle(agreeing_votes(range(10, 20)))
    clock.advance(hours=3, seconds=-1)
    assert (await app.refresher.refresh()).snapshot_id is None
    clock.advance(seconds=1)
    assert (await app.refresher.refresh()).snapshot_id is not None


async def test_a_pile_up_of_ten_thresholds_snapshots_during_a_burst(store, clock):
    app = voting(store, clock)
    await app.service.handle(agreeing_votes(range(99)))
    assert (await app.refresher.refresh()).snapshot_id is None
    await app.service.handle(agreeing_votes(range(99, 100)))
    assert (await app.refresher.refresh()).snapshot_id is not None


async def test_an_admin_request_snapshots_at_once_and_only_once(store, clock):
    app = voting(store, clock)
    await app.service.handle(agreeing_votes(range(3)))
    request = TrainingForceRequested()
    await app.service.handle([request])
    await app.service.handle([request])  # redelivered
    [(snapshot, _)] = store.snapshots
    assert snapshot.reason == "admin" and [i.kind for i in snapshot.items] == ["icon"] * 3
    assert all(i.image_sha256 is not None and set(i.value) == {"confidence", "gold"} for i in snapshot.items)
    assert [r.reason for r in store.outbox] == ["admin"]


async def test_a_refresh_another_process_runs_is_skipped_but_an_admin_request_waits_for_it(store, clock):
    app = voting(store, clock)
    await app.service.handle(agreeing_votes(range(3)))
    store.lock_held_elsewhere = True
    assert not (await app.refresher.refresh()).refreshed
    await app.service.handle([TrainingForceRequested()])
    assert len(store.snapshots) == 1


async def test_a_snapshot_wakes_the_outbox_relay(store, clock):
    relay = FakeRelay()
    app = voting(store, clock, relay=relay, training_debounce_seconds=0)
    await app.service.handle(agreeing_votes(range(9)))
    await app.refresher.refresh()
    assert relay.woken == 0
    await app.service.handle(agreeing_votes(range(9, 10)))
    await app.refresher.refresh()
    assert relay.woken == 1


async def test_requests_for_the_published_model_are_batched_bounded_and_answers_re_decide(store, clock):
    relay = FakeRelay()
    app = voting(store, clock, relay, prediction_batch=2, prediction_max_per_refresh=3)
    store.published = "v1"
    await app.service.handle([crop_vote("a", crop, f"Item {crop}") for crop in range(5)])
    first = await app.refresher.refresh()
    requests = [e for e in store.outbox if isinstance(e, PredictionRequested)]
    assert [len(r.items) for r in requests] == [2, 1] and first.stats["predictions_requested"] == 3
    requests = list(requests)
    assert relay.woken >= 1  # the relay sends them at once
    assert len(store.dirty) == 2  # over the limit: queued for the next refresh, which asks them
    second = await app.refresher.refresh()
    assert second.stats["predictions_requested"] == 2 and not store.dirty
    asked = {(i.item_kind, i.item_key) for r in requests for i in r.items}
    kind, key = sorted(asked)[0]
    answer = Prediction(
        item_kind=kind,
        item_key=key,
        label=store.votes[(kind, key, "a")].label,
        confidence=0.9,
        trained_on=False,
    )
    await app.service.handle([ModelPredicted(model_version="v1", predictions=[answer])])
    assert (kind, key) in store.dirty
    await app.refresher.refresh()
    assert store.consensus[(kind, key)].status == "accepted"


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("all", {"run", "run_forever"}),
        ("consumer", {"run"}),
        ("refresher", {"run_forever"}),
    ],
)
def test_a_process_runs_the_loops_of_its_role(store, clock, role, expected):
    process = voting(store, clock, role=role)
    loops = process.loops()
    try:
        owners = {(loop.cr_frame.f_locals["self"], loop.__name__) for loop in loops}
        names = {name for owner, name in owners if owner is not process.relay}
        assert names == expected  # the refresher apart from the consumer: deciding never delays storing votes
        assert (process.relay, "run") in owners  # both write the outbox
    finally:
        for loop in loops:
            loop.close()
