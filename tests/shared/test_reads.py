"""The reads services make of other services' tables (shared/reads.py), against a migrated database."""

from sqlalchemy import text

from shared.blobstore import PostgresBlobStore
from shared.reads import (
    FINISHED_RUN_STATUSES,
    RUN_STATUSES,
    UNFINISHED_RUN_STATUSES,
    accepted_labels,
    latest_published_version,
    run_artifacts,
    snapshot_labels,
)
from tests.utils.rows import add_consensus, add_run, add_snapshot, add_version, trained_at


async def test_no_release_yet_reads_as_none(engine):
    async with engine.connect() as connection:
        assert await latest_published_version(connection) is None


async def test_the_latest_published_version_is_the_newest_published_not_the_newest_row(engine):
    async with engine.begin() as connection:
        await add_version(connection, "v1", trained_at=trained_at(1))
        newest_run = await add_version(
            connection, "v2", trained_at=trained_at(2), n_classes=7, metrics={"icon_top1": 0.9}
        )
        await add_version(connection, "v3", trained_at=trained_at(3), status="pending")
        await add_version(connection, "v4", trained_at=trained_at(4), status="rejected")
    async with engine.connect() as connection:
        latest = await latest_published_version(connection)
    assert latest.version == "v2"
    assert latest.run_id == newest_run
    assert latest.trained_at == trained_at(2)
    assert (latest.n_classes, latest.n_samples, latest.n_users) == (7, 70, 5)
    assert latest.metrics == {"icon_top1": 0.9}
    assert latest.snapshot_id is not None


async def test_snapshot_labels_are_one_snapshots_items_of_the_kinds_asked(engine):
    async with engine.begin() as connection:
        snapshot = await add_snapshot(
            connection,
            [
                ("icon", "a", "Item A", None),
                ("icon", "b", None, None),
                ("screen", "s", "hangar", None),
                ("knowledge", "k", "Item K", None),
            ],
        )
        await add_snapshot(connection, [("icon", "other", "Item O", None)])
    async with engine.connect() as connection:
        trained = await snapshot_labels(connection, snapshot)
        icons = await snapshot_labels(connection, snapshot, kinds=("icon",))
        knowledge = await snapshot_labels(connection, snapshot, kinds=["knowledge"])
    assert trained == {("icon", "a"): "Item A", ("icon", "b"): None, ("screen", "s"): "hangar"}
    assert icons == {("icon", "a"): "Item A", ("icon", "b"): None}
    assert knowledge == {("knowledge", "k"): "Item K"}


async def test_accepted_labels_leave_out_withheld_and_unlabelled_entries_and_other_kinds(engine):
    async with engine.begin() as connection:
        await add_consensus(connection, "knowledge", "p2", "Item B")
        await add_consensus(connection, "knowledge", "p1", "Item A")
        await add_consensus(connection, "knowledge", "p3", "Item C", status="withheld")
        await add_consensus(connection, "knowledge", "p4", None)
        await add_consensus(connection, "icon", "i1", "Item I")
    async with engine.connect() as connection:
        knowledge = await accepted_labels(connection, "knowledge")
        icons = await accepted_labels(connection, "icon")
        screens = await accepted_labels(connection, "screen")
    assert list(knowledge.items()) == [("p1", "Item A"), ("p2", "Item B")]  # in key order
    assert icons == {"i1": "Item I"}
    assert screens == {}


async def test_a_runs_artifacts_are_all_of_its_paths_or_those_asked(engine):
    async with engine.begin() as connection:
        run = await add_run(connection, await add_snapshot(connection))
        other = await add_run(connection, await add_snapshot(connection))
        shas = {}
        for index, (run_id, path) in enumerate(
            [(run, "models/icon_classifier.pt"), (run, "models/label_map.json"), (other, "models/other.pt")]
        ):
            shas[path] = await PostgresBlobStore.put_in(connection, f"artifact {index}".encode())
            await connection.execute(
                text("INSERT INTO model_artifacts (run_id, path, blob_sha256) VALUES (:run, :path, :sha)"),
                {"run": run_id, "path": path, "sha": shas[path]},
            )
    async with engine.connect() as connection:
        every = await run_artifacts(connection, run)
        asked = await run_artifacts(connection, run, ["models/label_map.json", "models/other.pt"])
        none = await run_artifacts(connection, run, [])
    assert every == {path: shas[path] for path in ("models/icon_classifier.pt", "models/label_map.json")}
    assert asked == {"models/label_map.json": shas["models/label_map.json"]}
    assert none == {}


def test_the_run_statuses_are_the_unfinished_then_the_finished_ones():
    assert RUN_STATUSES == ("pending", "running", "succeeded", "failed", "skipped")
    assert set(FINISHED_RUN_STATUSES).isdisjoint(UNFINISHED_RUN_STATUSES)
