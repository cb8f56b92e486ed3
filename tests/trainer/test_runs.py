"""Whole training runs on small synthetic data against the real store: artifacts in the contract's shapes,
gate, lineage; and the store's own SQL (runs, checkpoints and their blobs)."""

import io
import json
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import numpy as np
import onnxruntime
import pytest
import torch
from sqlalchemy import text

from services.publisher.domain import RUN_ARTIFACTS
from services.trainer.domain import runs
from services.trainer.domain.client_path import icon_crop_64, icon_input
from services.trainer.domain.gold import GoldItem
from services.trainer.handlers import ModelWork, RunLedger, TrainingRunner
from services.trainer.release import Release
from services.trainer.store import PostgresTrainerStore, RunTakenOver
from services.trainer.training import ModelJob, train_model
from shared.blobstore import PostgresBlobStore, sha256_hex
from shared.clock import utc_now
from shared.events import ModelTrained, TrainingRequested, decode_event, format_trained_at
from shared.torchvision_compat import import_torchvision
from tests.trainer.conftest import FAST_ICONS, add_run, make_snapshot
from tests.utils.blobs import blob_exists
from tests.utils.clock import FakeClock
from tools.simulator.workload import draw_icon

tv = import_torchvision()
pytestmark = pytest.mark.integration  # the real store; some train real models
BUDGET = timedelta(minutes=10)


async def artifacts_of(engine, run_id) -> dict[str, bytes]:
    store = PostgresBlobStore(engine)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT path, blob_sha256 FROM model_artifacts WHERE run_id = :r"), {"r": run_id}
            )
        ).all()
    return {row.path: await store.get(row.blob_sha256) for row in rows}


@pytest.fixture(scope="module")
def anchor_entry():
    slot = {"x0_rel": 0.1, "y_rel": 0.2, "w_rel": 0.05, "h_rel": 0.05, "count": 4}
    return {"type": "SPACE", "aspect": 1.78, "res": "1920x1080", "slots": {"A": slot}, "n_contributors": 3}


async def test_a_run_publishes_every_artifact_in_the_shapes_clients_load(runner, engine, anchor_entry):
    extra = [
        dict(item_kind="ocr", item_key="Heavy Crulser", label="Heavy Cruiser", image_sha256=None),
        dict(item_kind="anchor", item_key="SPACE\x1f1.78", label=None, value=anchor_entry, image_sha256=None),
    ]
    snapshot = await make_snapshot(engine, screens={"SPACE_EQ": 6, "TRAITS": 6, "BOFFS": 3}, extra=extra)
    run_id = await add_run(engine, snapshot)
    assert await runner.execute(run_id) == "succeeded"
    files = await artifacts_of(engine, run_id)
    assert set(files) <= RUN_ARTIFACTS  # what the publisher accepts of a run

    label_map = json.loads(files["models/label_map.json"])
    assert label_map == {str(i): f"Item {i:02d}" for i in range(6)}
    state = torch.load(io.BytesIO(files["models/icon_classifier.pt"]), weights_only=True)
    assert state["classifier.1.weight"].shape == (6, 1280)
    assert all(t.device.type == "cpu" for t in state.values())
    model = tv.models.efficientnet_b0(weights=None, num_classes=len(label_map))
    model.load_state_dict(state)  # exactly as the client does: no missing or unexpected keys
    meta = json.loads(files["models/icon_classifier_meta.json"])
    assert (meta["n_classes"], meta["input_size"], meta["preprocessing"]["channel_order"]) == (6, 224, "BGR")

    probe = torch.from_numpy(np.stack([icon_input(icon_crop_64(draw_icon(c, 9))) for c in range(3)]))
    session = onnxruntime.InferenceSession(
        files["models/icon_classifier.onnx"], providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["input"]
    with torch.no_grad():
        expected = model.eval()(probe).numpy()
    # float32 logits of a few units agree to about 1e-4 of their size, not to 1e-3 absolute (seen: 9.7595 vs 9.7601)
    np.testing.assert_allclose(session.run(None, {"input": probe.numpy()})[0], expected, rtol=1e-3, atol=1e-3)

    screen_labels = json.loads(files["models/screen_classifier_labels.json"])
    assert screen_labels == {"0": "SPACE_EQ", "1": "TRAITS"}  # BOFFS had fewer than 5 images: dropped
    assert json.loads(files["models/screen_classifier_meta.json"])["n_classes"] == 2
    screen_state = torch.load(io.BytesIO(files["models/screen_classifier.pt"]), weights_only=True)
    assert screen_state["classifier.3.weight"].shape == (2, 1024)
    tv.models.mobilenet_v3_small(weights=None, num_classes=2).load_state_dict(screen_state)

    assert json.loads(files["models/ship_type_corrections.json"]) == {"Heavy Crulser": "Heavy Cruiser"}
    anchors = json.loads(files["models/community_anchors.json"])
    assert anchors["entries"][0]["type"] == "SPACE" and anchors["n_contributors"] == 3
    manifest = json.loads(files["models/training_manifest.json"])
    # no icon gold: a class gives crops to the gold set only when it keeps 4 for training
    assert manifest["count"] == 24 and manifest["crop_shas"] == sorted(manifest["crop_shas"])
    assert files["models/training_curve.png"].startswith(b"\x89PNG")
    per_class = json.loads(files["models/per_class_accuracy.json"])
    assert set(per_class) == set(label_map.values())  # every class held one of its 4 crops out
    assert all(scores["samples"] == 1 for scores in per_class.values())

    async with engine.connect() as connection:
        run = (
            await connection.execute(
                text("SELECT status, metrics FROM training_runs WHERE id = :r"), {"r": run_id}
            )
        ).one()
        [body] = (
            await connection.execute(text("SELECT body FROM outbox WHERE routing_key = 'model.trained'"))
        ).scalars()
        checkpoints = await connection.scalar(text("SELECT count(*) FROM checkpoints"))
        gold = (await connection.execute(text("SELECT model_kind, run_id FROM gold_items"))).all()
    trained = decode_event(body)
    assert run.status == "succeeded" and checkpoints == 0
    assert (
        trained.run_id == run_id
        and trained.snapshot_id == snapshot
        and trained.n_classes == 6
        and trained.n_samples == 24
    )
    assert trained.metrics["gold"]["icon"]["examples"] == 0
    # frozen only by a release that passed its gate: one of each screen type's six screenshots
    frozen = Counter(g.model_kind for g in gold)
    assert frozen == (Counter(screen=2) if trained.quality_gate_passed else Counter())
    assert {g.run_id for g in gold} <= {run_id}
    assert set(trained.artifacts) == set(files)
    assert trained.metrics["quality_gate"]["publish"] == trained.quality_gate_passed
    assert trained.metrics["screen_n_samples"] == 10  # a screenshot of each type is gold


async def test_a_request_recorded_twice_is_one_run(engine):
    snapshot = await make_snapshot(engine, classes=2, variants=2)
    request = TrainingRequested(snapshot_id=snapshot, reason="admin", new_labels=4, total_labels=4)
    ledger = RunLedger(PostgresTrainerStore(engine))
    await ledger.record(request)
    await ledger.record(request)
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM training_runs")) == 1


async def test_training_ends_at_the_run_deadline(engine, trainer_settings):
    """Time is the runner's clock, moved 3 s per epoch: the 6 s budget's 64 px phase (80 %) ends after two."""
    clock = FakeClock()

    def epochs_of_three_seconds(job: ModelJob):
        def on_epoch(report) -> None:
            clock.advance(seconds=3)
            job.on_epoch(report)

        return train_model(replace(job, on_epoch=on_epoch))

    budget = trainer_settings.model_copy(update={"budget_minutes": 0.1})
    work = ModelWork(train=epochs_of_three_seconds, icon_config=replace(FAST_ICONS, min_epoch_images=32))
    runner = TrainingRunner(
        PostgresTrainerStore(engine),
        PostgresBlobStore(engine),
        budget,
        clock=clock,
        monotonic=clock.monotonic,
        work=work,
    )
    run_id = await add_run(engine, await make_snapshot(engine))
    assert await runner.execute(run_id) == "succeeded"
    async with engine.connect() as connection:
        run = (
            await connection.execute(
                text("SELECT metrics, deadline_at - started_at AS budget FROM training_runs WHERE id = :r"),
                {"r": run_id},
            )
        ).one()
    assert run.metrics["icon_epochs"] == 2 and run.budget.total_seconds() == 6
    assert run.metrics["training_seconds"] == 6


async def test_too_little_data_is_skipped_with_the_reason(runner, engine):
    run_id = await add_run(engine, await make_snapshot(engine, classes=1, variants=3))
    assert await runner.execute(run_id) == "skipped"
    async with engine.connect() as connection:
        reason = await connection.scalar(
            text("SELECT metrics->>'skipped' FROM training_runs WHERE id = :r"), {"r": run_id}
        )
    assert reason == "3 icon crops in 1 classes: at least 5 in 2"


async def test_a_snapshot_that_adds_nothing_over_the_published_model_is_skipped_without_training(
    runner, engine
):
    await publish_run(engine, await make_snapshot(engine, classes=3, variants=2), classes=3, samples=6)
    same_again = await make_snapshot(engine, classes=3, variants=2)  # the same crops and labels
    run_id = await add_run(engine, same_again, request="again")
    assert await runner.execute(run_id) == "skipped"
    async with engine.connect() as connection:
        run = (
            await connection.execute(
                text("SELECT status, metrics, attempts FROM training_runs WHERE id = :r"), {"r": run_id}
            )
        ).one()
        trained = await connection.scalar(
            text("SELECT count(*) FROM checkpoints WHERE run_id = :r"), {"r": run_id}
        )
    assert (run.status, run.attempts) == ("skipped", 1) and trained == 0
    assert run.metrics == {"skipped": "snapshot adds nothing over the published model"}


async def test_a_run_that_keeps_dying_is_given_up_after_three_attempts(runner, engine):
    run_id = await add_run(engine, await make_snapshot(engine, classes=2, variants=3))
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE training_runs SET status = 'running', attempts = 3 WHERE id = :r"), {"r": run_id}
        )
    assert await runner.execute(run_id) == "failed"
    async with engine.connect() as connection:
        error = await connection.scalar(text("SELECT error FROM training_runs WHERE id = :r"), {"r": run_id})
    assert error == "gave up after 3 attempts"


async def test_a_replaced_or_dropped_checkpoint_leaves_no_blob_behind(engine):
    store = PostgresTrainerStore(engine)
    run_id = await add_run(engine, await make_snapshot(engine, classes=2, variants=2))
    await store.save_checkpoint(run_id, "icon", 1, b"first checkpoint")
    first = await store.checkpoint(run_id, "icon")
    await store.save_checkpoint(run_id, "icon", 2, b"second checkpoint")
    second = await store.checkpoint(run_id, "icon")
    assert second != first and not await blob_exists(engine, first) and await blob_exists(engine, second)
    await store.fail(await store.run(run_id), "boom", FakeClock()())
    assert await store.checkpoint(run_id, "icon") is None and not await blob_exists(engine, second)


async def test_a_failure_of_an_attempt_another_trainer_replaced_leaves_the_run_as_it_is(engine):
    store = PostgresTrainerStore(engine)
    run_id = await add_run(engine, await make_snapshot(engine, classes=2, variants=2))
    clock = FakeClock()
    ours = runs.with_attempt(
        await store.run(run_id), runs.next_attempt(await store.run(run_id), clock(), BUDGET)
    )
    await store.start_attempt(
        run_id, runs.next_attempt(ours, clock(), BUDGET)
    )  # the other trainer's attempt 2
    await store.save_checkpoint(run_id, "icon", 1, b"the other trainer's checkpoint")
    with pytest.raises(RunTakenOver):
        await store.fail(ours, "boom", clock())
    run = await store.run(run_id)
    assert (run.status, run.attempts) == ("running", 2)
    assert await store.checkpoint(run_id, "icon") is not None


async def test_an_imprint_release_is_a_finished_run_of_its_own_with_its_artifacts_gold_and_event(engine):
    store = PostgresTrainerStore(engine)
    snapshot = await make_snapshot(engine, classes=2, variants=1)
    run_id = await add_run(engine, snapshot)
    attempt = runs.next_attempt(await store.run(run_id), utc_now(), timedelta(minutes=5))
    await store.start_attempt(run_id, attempt)
    parent = await store.run(run_id)
    imprint_id = runs.imprint_run_id(run_id)
    assert not await store.has_run(imprint_id)
    [item] = [i for i in await store.snapshot_items(snapshot) if i.label == "Item 00"]
    gold = [GoldItem("icon", item.key, item.label, item.image_sha256, "evidence")]
    files = {"models/label_map.json": b'{"0": "Item 00"}'}
    metrics = {"release": "imprint", "quality_gate": {"publish": True, "reason": "imprint"}}
    event = ModelTrained(
        message_id=f"model-trained-{imprint_id}",
        run_id=imprint_id,
        snapshot_id=snapshot,
        trained_at=format_trained_at(utc_now()),
        artifacts={path: sha256_hex(data) for path, data in files.items()},
        metrics=metrics,
        n_classes=1,
        n_samples=1,
        n_users=0,
        quality_gate_passed=True,
    )
    await store.finish_imprint(parent, Release(files, metrics, event, gold), utc_now())
    assert await store.has_run(imprint_id)
    assert (await store.run(imprint_id)).status == "succeeded" and (
        await store.run(run_id)
    ).status == "running"
    assert await artifacts_of(engine, imprint_id) == files
    assert await store.gold("icon") == gold
    async with engine.connect() as connection:
        sent = await connection.scalar(
            text("SELECT count(*) FROM outbox WHERE routing_key = 'model.trained'")
        )
    assert sent == 1
    with pytest.raises(RunTakenOver):  # an older attempt of the run releases nothing
        await store.finish_imprint(
            replace(parent, attempts=0), Release(files, metrics, event, gold), utc_now()
        )


async def test_the_store_tells_when_the_published_release_is_of_a_newer_snapshot(engine):
    store = PostgresTrainerStore(engine)
    older = await make_snapshot(engine, classes=2, variants=1)
    assert await store.newer_released_snapshot(older) is None  # nothing published yet
    newer = await make_snapshot(engine, classes=3, variants=1)
    await publish_run(engine, newer, classes=3, samples=3)
    assert await store.newer_released_snapshot(older) == newer
    assert await store.newer_released_snapshot(newer) is None
    latest = await make_snapshot(engine, classes=4, variants=1)
    assert await store.newer_released_snapshot(latest) is None
    # a release that passed its gates and is on its way: the publisher has not handled it yet
    on_its_way = await make_snapshot(engine, classes=5, variants=1)
    run = await add_run(engine, on_its_way, request="on its way")
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE training_runs SET status = 'succeeded', "
                'metrics = \'{"quality_gate": {"publish": true}}\' WHERE id = :r'
            ),
            {"r": run},
        )
    assert await store.newer_released_snapshot(latest) == on_its_way
    async with engine.begin() as connection:  # the publisher refused it
        await connection.execute(
            text(
                "INSERT INTO model_versions (version, source_message_id, run_id, snapshot_id, trained_at, status, "
                "n_classes, n_samples, n_users) VALUES ('v2', 'm2', :r, :s, '2026-01-02T00:00:00.000000+00:00Z', "
                "'rejected', 5, 5, 1)"
            ),
            {"r": run, "s": on_its_way},
        )
    assert await store.newer_released_snapshot(latest) is None


async def publish_run(engine, snapshot_id, *, classes: int, samples: int) -> None:
    """A succeeded run of the snapshot whose release is the published version v1."""
    run = await add_run(engine, snapshot_id, request="published")
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE training_runs SET status = 'succeeded' WHERE id = :r"), {"r": run}
        )
        await connection.execute(
            text(
                "INSERT INTO model_versions (version, source_message_id, run_id, snapshot_id, trained_at, status, "
                "n_classes, n_samples, n_users) VALUES ('v1', 'm1', :r, :s, '2026-01-01T00:00:00.000000+00:00Z', "
                "'published', :c, :n, 1)"
            ),
            {"r": run, "s": snapshot_id, "c": classes, "n": samples},
        )


async def test_a_skipped_run_leaves_no_checkpoint_behind(engine):
    # a resumed run that a newer snapshot supersedes is skipped: the checkpoint of its earlier attempt goes
    store = PostgresTrainerStore(engine)
    run = await add_run(engine, await make_snapshot(engine, classes=2, variants=1), request="resumed")
    await store.save_checkpoint(run, "icon", 3, b"weights of an earlier attempt")
    sha = await store.checkpoint(run, "icon")
    await store.skip(run, "superseded by a newer run", utc_now())
    assert await store.checkpoint(run, "icon") is None
    assert sha is not None and not await blob_exists(engine, sha)


async def test_a_published_imprint_release_is_not_a_trained_snapshot(engine):
    store = PostgresTrainerStore(engine)
    snapshot = await make_snapshot(engine, classes=2, variants=1)
    await publish_run(engine, snapshot, classes=2, samples=2)
    assert (await store.published_snapshot())[0] == snapshot
    async with engine.begin() as connection:
        await connection.execute(text("""UPDATE model_versions SET metrics = '{"release": "imprint"}'"""))
    assert await store.published_snapshot() == (None, {})
