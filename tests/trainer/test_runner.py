"""The runner's orchestration in memory: fake store, blobs, clock and model work; milliseconds, no servers."""

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta

import cv2
import numpy as np
import pytest
import torch

from services.trainer.bootstrap import bootstrap
from services.trainer.checkpoints import Checkpoints, decode
from services.trainer.domain.data import SnapshotItem
from services.trainer.handlers import ActiveTrainer, RunLedger, TrainingRunner
from services.trainer.settings import TrainerSettings
from services.trainer.store import RunTakenOver
from services.trainer.training import ModelOutcome
from shared.blobstore import sha256_hex
from shared.events import TrainingProgress, TrainingRequested
from tests.trainer.fakes import FakeBlobs, FakeModelWork, FakeTrainerStore
from tests.utils.clock import FakeClock

BUDGET_MINUTES = 10
SETTINGS = TrainerSettings(budget_minutes=BUDGET_MINUTES, health_port=0)


def png(seed: int) -> bytes:
    pixels = np.full((8, 8, 3), seed % 256, np.uint8)
    pixels[0, 0] = (seed // 256, 7, 9)
    return cv2.imencode(".png", pixels)[1].tobytes()


class World:
    def __init__(self, **work) -> None:
        self.clock = FakeClock()
        self.blobs = FakeBlobs()
        self.store = FakeTrainerStore(self.blobs)
        self.work = FakeModelWork(self.clock, **work)
        self.progress: list[TrainingProgress] = []
        self.images = 0
        self.runner = self.runner_with(progress=self._sent)

    def runner_with(self, **overrides) -> TrainingRunner:
        adapters = {"clock": self.clock, "monotonic": self.clock.monotonic, "work": self.work.as_work()}
        return TrainingRunner(self.store, self.blobs, SETTINGS, **(adapters | overrides))

    async def _sent(self, event: TrainingProgress) -> None:
        self.progress.append(event)

    def snapshot(self, icons: dict[str, int], screens: dict[str, int] | None = None, extra=()) -> uuid.UUID:
        """{label: how many} of icons and screenshots, each with its own image in the blob store."""
        items = []
        for kind, counts in (("icon", icons), ("screen", screens or {})):
            for label, count in counts.items():
                for _ in range(count):
                    self.images += 1
                    sha = sha256_hex(png(self.images))
                    self.blobs.data[sha] = png(self.images)
                    items.append(SnapshotItem(kind, sha, label, None, sha))
        snapshot_id = uuid.uuid4()
        self.store.snapshots[snapshot_id] = items + list(extra)
        return snapshot_id

    def labels(self, snapshot_id: uuid.UUID) -> dict:
        return {
            (i.kind, i.key): i.label
            for i in self.store.snapshots[snapshot_id]
            if i.kind in ("icon", "screen")
        }

    def publish(self, run_id: uuid.UUID) -> None:
        """The run's release becomes the published one."""
        snapshot_id = self.store.runs[run_id].snapshot_id
        self.store.published = (snapshot_id, self.labels(snapshot_id))
        self.store.published_run = run_id
        self.store.published_files = self.store.artifacts[run_id]


ICONS = {"Mine": 3, "Phaser": 3}


async def test_a_run_trains_the_icon_model_and_hands_the_release_on():
    world = World()
    world.store.users = 4
    ocr = SnapshotItem("ocr", "Heavy Crulser", "Heavy Cruiser")
    run_id = world.store.add_run(world.snapshot(ICONS, extra=[ocr]))
    assert await world.runner.execute(run_id) == "succeeded"
    assert [job.kind for job in world.work.jobs] == ["icon"]
    assert world.work.jobs[0].data.classes == ["Mine", "Phaser"]
    run = world.store.runs[run_id]
    assert (run.status, run.attempts) == ("succeeded", 1)
    [event] = world.store.outbox
    assert (event.run_id, event.snapshot_id, event.n_classes, event.n_samples, event.n_users) == (
        run_id,
        run.snapshot_id,
        2,
        6,  # no gold: a class gives crops to the gold set only when it keeps 4 for training
        4,
    )
    assert event.message_id == f"model-trained-{run_id}"
    assert event.artifacts == world.store.artifacts[run_id]
    assert event.quality_gate_passed and event.metrics == world.store.metrics[run_id]
    assert event.metrics["quality_gate"] == {
        "publish": True,
        "reason": "first model; gold set: no published model to compare with",
    }
    assert event.metrics["icon_epochs"] == 2 and "screen_val_acc" not in event.metrics
    assert world.store.checkpoints == {}  # dropped with the run's end


async def test_a_worse_model_is_trained_but_not_passed_by_the_gate():
    world = World(accuracy=0.6, current_accuracy=0.8)
    run_id = world.store.add_run(world.snapshot(ICONS))
    assert await world.runner.execute(run_id) == "succeeded"
    [event] = world.store.outbox
    assert not event.quality_gate_passed
    assert "below the published model's 0.800" in event.metrics["quality_gate"]["reason"]


async def test_the_deadline_is_the_budget_from_the_first_start_and_icons_get_three_quarters_with_screens():
    world = World(epoch_seconds=30)
    run_id = world.store.add_run(world.snapshot(ICONS, screens={"TRAITS": 5, "SPACE_EQ": 5}))
    started = world.clock()
    assert await world.runner.execute(run_id) == "succeeded"
    run = world.store.runs[run_id]
    budget = BUDGET_MINUTES * 60
    assert run.started_at == started and (run.deadline_at - started).total_seconds() == budget
    assert [job.kind for job in world.work.jobs] == ["icon", "screen"]
    # icons: 3/4 of the budget; screens: all that is left of it after the icons' two 30 s epochs
    assert world.work.remaining_at_start == [0.75 * budget, budget - 60]
    assert world.work.jobs[1].data.classes == ["SPACE_EQ", "TRAITS"]
    assert world.store.metrics[run_id]["screen_n_samples"] == 10


async def test_without_a_trainable_screen_model_icons_get_the_whole_budget_and_the_reason_is_recorded():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS, screens={"TRAITS": 9, "BOFFS": 3}))
    assert await world.runner.execute(run_id) == "succeeded"
    assert [job.kind for job in world.work.jobs] == ["icon"]
    assert world.work.remaining_at_start == [BUDGET_MINUTES * 60]
    assert world.store.metrics[run_id]["screen"] == "fewer than two screen types with enough images"


async def test_a_resumed_run_keeps_its_start_and_deadline_and_counts_the_attempt():
    world = World()
    first_start = world.clock()
    deadline = first_start + timedelta(minutes=5)
    run_id = world.store.add_run(
        world.snapshot(ICONS), status="running", attempts=1, started_at=first_start, deadline_at=deadline
    )
    world.clock.advance(seconds=60)
    assert await world.runner.execute(run_id) == "succeeded"
    run = world.store.runs[run_id]
    assert (run.attempts, run.started_at) == (2, first_start)
    assert world.work.remaining_at_start == [240.0]
    assert world.store.metrics[run_id]["training_seconds"] == 60 + 2 * 1.0


async def test_a_model_trained_before_a_crash_is_not_trained_again():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS, screens={"TRAITS": 5, "SPACE_EQ": 5}))
    assert await world.runner.execute(run_id) == "succeeded"
    icon_done = {"done": True, "outcome": _outcome(["Mine", "Phaser"]), "epoch": 7}
    retry = World()
    retry.store.snapshots = world.store.snapshots
    retry.blobs.data = world.blobs.data
    again = retry.store.add_run(world.store.runs[run_id].snapshot_id, status="running", attempts=1)
    await Checkpoints(retry.store, retry.blobs).save(again, "icon", icon_done)
    assert await retry.runner.execute(again) == "succeeded"
    assert [job.kind for job in retry.work.jobs] == ["screen"]
    assert retry.store.metrics[again]["icon_epochs"] == 7


async def test_every_epoch_is_reported_and_checkpointed_and_the_trained_model_checkpointed_as_done():
    world = World(epochs=3)
    run_id = world.store.add_run(world.snapshot(ICONS))
    saved = []
    original = world.store.save_checkpoint

    async def keep(run, kind, epoch, data):
        saved.append(decode(data))
        await original(run, kind, epoch, data)

    world.store.save_checkpoint = keep
    assert await world.runner.execute(run_id) == "succeeded"
    assert [(e.model, e.epoch, e.run_id) for e in world.progress] == [("icon", n, run_id) for n in (1, 2, 3)]
    assert [e.deadline_seconds for e in world.progress] == [BUDGET_MINUTES * 60 - n for n in (1, 2, 3)]
    assert [e.elapsed_seconds for e in world.progress] == [1.0, 2.0, 3.0]
    assert [bundle["epoch"] for bundle in saved] == [1, 2, 3, 3]
    assert saved[-1]["done"] and saved[-1]["outcome"].epochs == 3


async def test_a_run_that_keeps_dying_is_given_up_after_three_attempts():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS), status="running", attempts=3)
    world.store.checkpoints[(run_id, "icon")] = "sha"
    assert await world.runner.execute(run_id) == "failed"
    assert world.store.errors[run_id] == "gave up after 3 attempts"
    assert world.work.jobs == [] and world.store.checkpoints == {}


async def test_a_snapshot_that_adds_nothing_over_the_published_model_is_skipped_without_training():
    world = World()
    published = world.snapshot(ICONS)
    world.store.published = (published, world.labels(published))
    same_again = uuid.uuid4()
    world.store.snapshots[same_again] = list(world.store.snapshots[published])
    run_id = world.store.add_run(same_again)
    assert await world.runner.execute(run_id) == "skipped"
    assert world.store.metrics[run_id] == {"skipped": "snapshot adds nothing over the published model"}
    assert world.work.jobs == [] and world.store.outbox == []


async def test_the_published_models_own_snapshot_is_trained_again():
    world = World()
    published = world.snapshot(ICONS)
    world.store.published = (published, world.labels(published))
    run_id = world.store.add_run(published)
    assert await world.runner.execute(run_id) == "succeeded"


async def test_too_little_data_is_skipped_with_the_reason():
    world = World()
    run_id = world.store.add_run(world.snapshot({"Mine": 3}))
    assert await world.runner.execute(run_id) == "skipped"
    assert world.store.metrics[run_id] == {"skipped": "3 icon crops in 1 classes: at least 5 in 2"}
    assert world.work.jobs == []


async def test_a_finished_run_is_left_as_it_is():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS), status="skipped")
    assert await world.runner.execute(run_id) == "skipped"
    assert world.store.runs[run_id].attempts == 0


async def test_a_run_that_raises_fails_with_the_error_and_the_next_one_runs():
    world = World()
    broken = world.store.add_run(world.snapshot(ICONS))
    world.blobs.data.pop(world.store.snapshots[world.store.runs[broken].snapshot_id][0].image_sha256)
    assert await world.runner.run_unfinished() == 1
    assert world.store.runs[broken].status == "failed" and "BlobNotFound" in world.store.errors[broken]
    fine = world.store.add_run(world.snapshot(ICONS))
    assert await world.runner.run_unfinished() == 1
    assert world.store.runs[fine].status == "succeeded"


async def test_of_the_runs_waiting_only_the_newest_snapshot_is_trained():
    world = World()
    older = [world.store.add_run(world.snapshot(ICONS)) for _ in range(2)]
    newest = world.store.add_run(world.snapshot({"Mine": 4, "Phaser": 3}))
    assert await world.runner.run_unfinished() == 3
    assert [world.store.runs[run].status for run in older] == ["skipped", "skipped"]
    assert world.store.metrics[older[0]] == {"skipped": f"superseded by run {newest}, of a newer snapshot"}
    assert world.store.runs[newest].status == "succeeded" and len(world.work.jobs) == 1


async def test_an_outage_leaves_the_run_to_resume_later():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS))

    async def unreachable(snapshot_id):
        raise ConnectionRefusedError("database down")

    world.store.snapshot_items = unreachable
    assert await world.runner.run_unfinished() == 0
    assert world.store.runs[run_id].status == "running" and run_id not in world.store.errors


async def test_a_run_taken_over_by_another_trainer_does_not_publish():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS))
    original = world.work.release_files

    def meanwhile_another_trainer_starts(*args):
        world.store.runs[run_id] = replace(world.store.runs[run_id], attempts=2)
        return original(*args)

    world.work.release_files = meanwhile_another_trainer_starts
    with pytest.raises(RunTakenOver):
        await world.runner_with().execute(run_id)
    assert world.store.outbox == [] and run_id not in world.store.artifacts


async def test_a_request_recorded_twice_is_one_run_and_wakes_the_runner():
    store = FakeTrainerStore(FakeBlobs())
    wake = asyncio.Event()
    request = TrainingRequested(snapshot_id=uuid.uuid4(), reason="admin", new_labels=4, total_labels=4)
    ledger = RunLedger(store, wake)
    await ledger.record(request)
    await ledger.record(request)
    assert len(store.runs) == 1 and wake.is_set()


async def test_the_active_trainer_runs_the_recorded_runs_then_wakes_the_relay():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS))
    seen: list[tuple[bool, str]] = []

    def after_runs() -> None:
        seen.append((active.active, world.store.runs[run_id].status))
        task.cancel()

    active = ActiveTrainer(world.store, world.runner, asyncio.Event(), after_runs=after_runs)
    task = asyncio.create_task(active.run())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [(True, "succeeded")] and not active.active


async def test_bootstrap_wires_the_fakes_it_is_given():
    world = World()
    trainer = bootstrap(
        SETTINGS,
        store=world.store,
        blobs=world.blobs,
        clock=world.clock,
        monotonic=world.clock.monotonic,
        work=world.work.as_work(),
    )
    run_id = world.store.add_run(world.snapshot(ICONS))
    assert await trainer.runner.run_unfinished() == 1
    assert world.store.runs[run_id].status == "succeeded" and len(world.work.jobs) == 1
    assert trainer.store is world.store and not trainer.active.active
    await trainer.engine.dispose()


def _outcome(classes: list[str]) -> ModelOutcome:
    return ModelOutcome(
        state={"weight": torch.zeros(1)},
        classes=classes,
        accuracy=0.9,
        current_accuracy=None,
        epochs=7,
        history=[],
        images_per_second=0.0,
        n_samples=6,
    )


async def test_a_step_of_the_wall_clock_does_not_change_how_long_a_model_trains():
    world = World()
    seen: list[float] = []

    def ntp_steps_the_clock(job):
        seen.append(job.deadline.remaining)
        world.clock.step(hours=1)  # the wall clock jumps past the run's deadline; the monotonic one does not
        seen.append(job.deadline.remaining)
        return world.work.train(job)

    run_id = world.store.add_run(world.snapshot(ICONS))
    runner = world.runner_with(work=replace(world.work.as_work(), train=ntp_steps_the_clock))
    assert await runner.execute(run_id) == "succeeded"
    assert seen == [BUDGET_MINUTES * 60] * 2


async def test_a_run_another_trainer_took_over_is_neither_failed_nor_stripped_of_its_checkpoints():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS))
    original = world.work.release_files

    def another_trainer_starts_then_this_attempt_breaks(*args):
        if world.store.runs[run_id].attempts != 1:
            return original(*args)
        world.store.runs[run_id] = replace(world.store.runs[run_id], attempts=2)
        world.store.checkpoints[(run_id, "screen")] = "the other trainer's checkpoint"
        raise ValueError("this attempt broke")

    world.work.release_files = another_trainer_starts_then_this_attempt_breaks
    runner = world.runner_with()
    assert await runner.run_unfinished() == 1
    assert (world.store.runs[run_id].status, world.store.runs[run_id].attempts) == ("running", 2)
    assert run_id not in world.store.errors
    assert world.store.checkpoints[(run_id, "screen")] == "the other trainer's checkpoint"
    world.store.runs[run_id] = replace(world.store.runs[run_id], status="succeeded")  # the other trainer's
    fine = world.store.add_run(world.snapshot(ICONS))
    assert await runner.run_unfinished() == 1
    assert world.store.runs[fine].status == "succeeded"


async def test_a_run_taken_over_at_its_finish_is_left_to_the_other_trainer_and_the_next_one_runs():
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS))
    original = world.work.release_files

    def meanwhile_another_trainer_starts(*args):
        if world.store.runs[run_id].attempts == 1:
            world.store.runs[run_id] = replace(world.store.runs[run_id], attempts=2)
        return original(*args)

    world.work.release_files = meanwhile_another_trainer_starts
    runner = world.runner_with()
    assert await runner.run_unfinished() == 1
    assert world.store.runs[run_id].status == "running" and run_id not in world.store.errors
    world.store.runs[run_id] = replace(world.store.runs[run_id], status="succeeded")  # the other trainer's
    fine = world.store.add_run(world.snapshot(ICONS))
    assert await runner.run_unfinished() == 1
    assert world.store.runs[fine].status == "succeeded"


def test_a_cancelled_progress_send_is_not_an_error():
    from concurrent.futures import Future

    from services.trainer.handlers import _log_unsent

    cancelled: Future[None] = Future()
    cancelled.cancel()
    _log_unsent(cancelled)  # f.exception() on a cancelled future raises CancelledError
    failed: Future[None] = Future()
    failed.set_exception(ConnectionError("broker down"))
    _log_unsent(failed)


class WritesAFile:
    """A pickle payload: loading it calls ``Path.write_text`` (any code could run instead)."""

    def __init__(self, target) -> None:
        self.target = target

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (Path(self.target), "code ran"))


def hostile_checkpoints(target) -> dict[str, bytes]:
    import io
    import pickle

    from services.trainer.checkpoints import HEADER_LENGTH_BYTES, MAGIC

    old_format = io.BytesIO()
    torch.save({"epoch": 1, "history": [], "payload": WritesAFile(target)}, old_format)
    tensors = io.BytesIO()
    torch.save({"0": WritesAFile(target)}, tensors)
    header = b'{"__items__": [["epoch", 1]]}'
    framed = MAGIC + len(header).to_bytes(HEADER_LENGTH_BYTES, "big") + header + tensors.getvalue()
    return {
        "torch.save pickle (the old format)": old_format.getvalue(),
        "plain pickle": pickle.dumps(WritesAFile(target)),
        "pickle in the tensor part": framed,
    }


@pytest.mark.parametrize(
    "shape", ["torch.save pickle (the old format)", "plain pickle", "pickle in the tensor part"]
)
async def test_a_checkpoint_holding_code_is_refused_and_the_model_is_trained_from_the_start(tmp_path, shape):
    target = tmp_path / "written-by-the-checkpoint"
    world = World()
    run_id = world.store.add_run(world.snapshot(ICONS), status="running", attempts=1)
    data = hostile_checkpoints(target)[shape]
    world.store.checkpoints[(run_id, "icon")] = sha256_hex(data)
    world.blobs.data[sha256_hex(data)] = data
    assert await world.runner.execute(run_id) == "succeeded"
    assert not target.exists()
    [job] = world.work.jobs
    assert job.resume is None and world.store.outbox[0].metrics["icon_epochs"] == 2


def test_a_checkpoint_round_trips_tensors_optimiser_state_and_the_trained_outcome():
    import math

    from services.trainer.checkpoints import encode

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    bundle = {
        "epoch": 3,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "best_state": None,
        "best_loss": math.inf,
        "history": [{"epoch": 1, "val_accuracy": None}],
        "outcome": _outcome(["Mine", "Phaser"]),
    }
    back = decode(encode(bundle))
    assert torch.equal(back["model"]["weight"], model.state_dict()["weight"])
    assert back["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]
    assert torch.equal(
        back["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    assert torch.equal(back["torch_rng"], bundle["torch_rng"])
    assert (back["best_state"], back["best_loss"], back["history"]) == (None, math.inf, bundle["history"])
    assert back["outcome"].classes == ["Mine", "Phaser"] and torch.equal(
        back["outcome"].state["weight"], torch.zeros(1)
    )
