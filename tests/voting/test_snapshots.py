"""Consensus refreshes, immutable snapshots and the threshold events they send through the outbox."""

import asyncio
import json
import uuid

import pytest_asyncio
from sqlalchemy import insert, text

from services.trainer.tables import training_runs
from shared.blobstore import sha256_hex
from shared.events import (
    AnchorGridContributed,
    KnowledgeContributed,
    OcrCorrectionContributed,
    TrainingForceRequested,
)
from shared.imagekeys import keys_of_png
from tests.utils.images import make_png
from tests.voting.conftest import consuming, crop_vote, seed_known


@pytest_asyncio.fixture(autouse=True)
async def known(engine):
    await seed_known(engine, "icon", [f"Item {i}" for i in range(200)])


async def scalar(engine, sql: str, **params):
    async with engine.connect() as connection:
        return await connection.scalar(text(sql), params)


def agreeing_votes(crops: range, installs=("a", "b", "c")) -> list:
    return [crop_vote(install, crop, f"Item {crop}") for crop in crops for install in installs]


async def test_consensus_is_written_for_every_kind(voting, engine):
    png = make_png(120, 20, 9)
    slot = {"x0_rel": 0.1, "y_rel": 0.2, "w_rel": 0.05, "h_rel": 0.05}
    events = agreeing_votes(range(3)) + [crop_vote("a", 50, "Lonely")]
    for install in ("a", "b", "c"):
        events.append(
            KnowledgeContributed(
                install_id=install,
                phash="00000000000000aa",
                crop_sha256="a" * 64,
                png=png,
                item_name="Item 7",
            )
        )
        events.append(
            OcrCorrectionContributed(
                install_id=install,
                crop_sha256="b" * 64,
                png=png,
                slot="Ship Type",
                raw_text="Crulser",
                corrected_text="Cruiser",
            )
        )
        events.append(
            AnchorGridContributed(
                install_id=install,
                build_type="SPACE",
                aspect=1.78,
                resolution="1920x1080",
                slots={"A": slot, "B": slot, "C": slot},
            )
        )
    await voting.service.handle(events)
    outcome = await voting.refresher.refresh()
    assert outcome.refreshed
    async with engine.connect() as connection:
        decided = {
            (row.item_kind, row.label, row.status)
            for row in await connection.execute(text("SELECT item_kind, label, status FROM consensus"))
        }
    assert ("icon", "Item 1", "accepted") in decided
    assert ("icon", "Lonely", "withheld") in decided
    assert ("knowledge", "Item 7", "accepted") in decided  # a label the icon model knows
    assert ("ocr", "Cruiser", "accepted") in decided
    assert ("anchor", None, "accepted") in decided
    # the labels this refresh made known queue the items voted for them once more; nothing changes
    assert (await voting.refresher.refresh()).stats["changed"] == 0
    assert not (await voting.refresher.refresh()).refreshed  # nothing changed since


async def test_a_burst_makes_one_snapshot_and_one_training_request(voting, service, engine):
    refresher = voting.refresher
    await service.handle(agreeing_votes(range(5)))
    assert (await refresher.refresh()).snapshot_id is None  # 5 new labels, threshold 10
    for start in range(5, 60, 5):
        await service.handle(agreeing_votes(range(start, start + 5)))
        await refresher.refresh()
    assert await scalar(engine, "SELECT count(*) FROM training_snapshots") == 1
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE routing_key = 'training.requested'") == 1
    snapshot = await scalar(engine, "SELECT id FROM training_snapshots")
    details = await scalar(engine, "SELECT details FROM training_snapshots")
    assert details["trigger"] == "icon_threshold" and details["new_icon_labels"] >= 10
    # the first snapshot waits for training; once trained, new consensus makes the next one
    async with engine.begin() as connection:
        await connection.execute(
            insert(training_runs).values(
                id=uuid.uuid4(), request_message_id="r", snapshot_id=snapshot, status="succeeded"
            )
        )
    await service.handle(agreeing_votes(range(60, 70)))
    second = (await refresher.refresh()).snapshot_id
    assert second is not None
    # everything accepted since the first snapshot: 50 while it waited, 10 after
    assert (
        await scalar(engine, "SELECT new_label_count FROM training_snapshots WHERE id = :s", s=second) == 60
    )
    assert (
        await scalar(engine, "SELECT parent_id FROM training_snapshots WHERE id = :s", s=second) == snapshot
    )


async def test_a_snapshot_waits_for_the_burst_to_end(voting_with):
    voting = voting_with(training_debounce_seconds=3600)
    service, patient = voting.service, voting.refresher
    await service.handle(agreeing_votes(range(12)))
    assert (await patient.refresh()).snapshot_id is None  # votes still arriving: wait
    await service.handle(agreeing_votes(range(12, 120)))
    assert (await patient.refresh()).snapshot_id is not None  # but not forever when changes pile up


async def test_an_admin_request_snapshots_now_once(service, engine):
    await service.handle(agreeing_votes(range(3)))
    request = TrainingForceRequested()
    await service.handle([request])
    await service.handle([request])  # redelivered
    assert await scalar(engine, "SELECT count(*) FROM training_snapshots WHERE reason = 'admin'") == 1
    assert await scalar(engine, "SELECT count(*) FROM snapshot_items WHERE item_kind = 'icon'") == 3


async def test_three_consumers_racing_store_exactly_what_one_would(
    voting_settings, topology, publisher, engine, service
):
    from tools.simulator.workload import WorkloadSpec, generate, icon_events

    workload = generate(
        WorkloadSpec(classes=60, variants=3, installs=40, mean_labels_per_install=40, group_size=5, seed=3)
    )
    events = icon_events(workload)
    duplicates = events[::7]
    async with consuming(
        voting_settings, topology, publisher, service.handle, consumers=3, max_batch=50
    ) as consumers:
        await asyncio.gather(*(publisher.publish(event) for event in events + duplicates))
        async with asyncio.timeout(60):
            while sum(c.processed for c in consumers) < len(events) + len(duplicates):
                await asyncio.sleep(0.1)
    assert all(c.processed for c in consumers)  # all three took part
    async with engine.connect() as connection:
        stored = {
            (r.install_id, r.item_key, r.label)
            for r in await connection.execute(text("SELECT install_id, item_key, label FROM votes"))
        }
    expected = {(e.install_id, keys_of_png(e.png).pixels_sha256, e.label) for e in events}
    assert stored == expected


async def test_a_deferred_snapshot_is_made_once_the_burst_is_over_without_new_votes(voting_with, clock):
    voting = voting_with(training_debounce_seconds=60)
    await voting.service.handle(agreeing_votes(range(12)))
    assert (await voting.refresher.refresh()).snapshot_id is None  # deferred: the burst may go on
    clock.advance(seconds=60)
    assert (await voting.refresher.refresh()).snapshot_id is not None  # nothing new arrived, yet it was due
    assert not (await voting.refresher.refresh()).refreshed  # and then nothing is pending any more


async def test_a_snapshot_nobody_trained_stops_blocking_after_the_wait_limit(voting_with, clock):
    voting = voting_with(training_wait_hours=3)
    await voting.service.handle(agreeing_votes(range(12)))
    assert (await voting.refresher.refresh()).snapshot_id is not None
    await voting.service.handle(agreeing_votes(range(12, 24)))
    assert (
        await voting.refresher.refresh()
    ).snapshot_id is None  # the first one still waits for its training
    clock.advance(hours=3)  # its request was lost: no run ever appeared
    assert (await voting.refresher.refresh()).snapshot_id is not None


async def test_new_classes_are_snapshotted_within_the_spacing_while_the_previous_snapshot_trains(
    voting_with, engine, clock
):
    voting = voting_with(new_class_snapshot_seconds=60)
    await voting.service.handle(agreeing_votes(range(12)))
    first = (await voting.refresher.refresh()).snapshot_id
    assert first is not None
    details = await scalar(engine, "SELECT details FROM training_snapshots WHERE id = :s", s=first)
    assert sorted(details["icon_classes"]) == sorted(f"Item {i}" for i in range(12))
    async with engine.begin() as connection:  # its training has started and is not over
        await connection.execute(
            insert(training_runs).values(
                id=uuid.uuid4(), request_message_id="r", snapshot_id=first, status="running"
            )
        )
    # a new crop of a class the snapshot has is no new class, and below the threshold nothing is due
    await voting.service.handle([crop_vote(i, 150, "Item 3") for i in ("a", "b", "c")])
    assert (await voting.refresher.refresh()).snapshot_id is None
    # crops of a class it lacks: snapshotted once the spacing has passed, whatever the training and the threshold
    await voting.service.handle(agreeing_votes(range(100, 103)))
    assert (await voting.refresher.refresh()).snapshot_id is None  # the first one is only seconds old
    clock.advance(seconds=60)
    second = (await voting.refresher.refresh()).snapshot_id
    assert second is not None
    details = await scalar(engine, "SELECT details FROM training_snapshots WHERE id = :s", s=second)
    assert (details["trigger"], details["new_icon_classes"]) == ("new_classes", 3)
    assert await scalar(engine, "SELECT count(*) FROM outbox WHERE routing_key = 'training.requested'") == 2
    clock.advance(seconds=60)
    await voting.service.handle(agreeing_votes(range(103, 105), installs=("a", "b", "c", "d")))
    assert (await voting.refresher.refresh()).snapshot_id is not None  # 2 more new classes
    await voting.service.handle([crop_vote(i, 151, "Item 100") for i in ("a", "b", "c")])
    clock.advance(seconds=60)
    assert (await voting.refresher.refresh()).snapshot_id is None  # Item 100 is in the last snapshot


async def test_a_snapshot_copies_every_accepted_icon_with_its_first_crop_and_counts_them(voting, engine):
    await voting.service.handle(agreeing_votes(range(12)) + [crop_vote("a", 50, "Lonely")])
    snapshot = (await voting.refresher.refresh()).snapshot_id
    assert snapshot is not None
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT s.item_key, s.label, s.value, s.image_sha256, b.size FROM snapshot_items s "
                    "JOIN blobs b ON b.sha256 = s.image_sha256 WHERE s.snapshot_id = :s AND s.item_kind = 'icon'"
                ),
                {"s": snapshot},
            )
        ).all()
        count = await connection.scalar(
            text("SELECT item_count FROM training_snapshots WHERE id = :s"), {"s": snapshot}
        )
        request = await connection.scalar(
            text("SELECT body FROM outbox WHERE routing_key = 'training.requested'")
        )
    expected = {keys_of_png(make_png(64, 64, crop)).pixels_sha256: f"Item {crop}" for crop in range(12)}
    assert {row.item_key: row.label for row in rows} == expected  # "Lonely" is withheld
    crops = {
        keys_of_png(make_png(64, 64, c)).pixels_sha256: sha256_hex(make_png(64, 64, c)) for c in range(12)
    }
    assert all(row.image_sha256 == crops[row.item_key] and row.size > 0 for row in rows)
    assert all(set(row.value) == {"confidence", "gold"} and row.value["gold"] is False for row in rows)
    assert count == 12 and json.loads(request)["total_labels"] == 12


async def test_storing_votes_never_waits_for_a_refresh_and_a_vote_during_one_is_decided_after_it(
    voting, engine
):
    service, store = voting.service, voting.store
    await service.handle([crop_vote("a", 1, "Item 1"), crop_vote("b", 1, "Item 1")])
    async with store.refresh() as unit:  # a refresh that has taken the item and is still deciding
        assert len(await unit.take_dirty(100)) == 1
        # a vote of the same item is stored while the refresh transaction is open (it used to wait for it)
        await asyncio.wait_for(service.handle([crop_vote("c", 1, "Item 1")]), timeout=5)
    # the refresh committed what it read; the item, voted on meanwhile, stays queued for the next one
    assert await scalar(engine, "SELECT count(*) FROM dirty_items") == 1
    async with store.refresh() as unit:
        assert len(await unit.take_dirty(100)) == 1
    assert await scalar(engine, "SELECT count(*) FROM dirty_items") == 0
