"""Live training progress: the board's rule in memory, and the overview fed from training.progress on the broker."""

import asyncio
import uuid

from services.ingest.console.progress import RUNS_KEPT, ProgressBoard
from shared.events import TrainingProgress
from tests.console.conftest import log_in


def report(
    run_id: uuid.UUID, epoch: int, accuracy: float | None = 0.5, model: str = "icon"
) -> TrainingProgress:
    return TrainingProgress(
        run_id=run_id,
        model=model,
        epoch=epoch,
        train_loss=1.0 / (epoch + 1),
        val_accuracy=accuracy,
        elapsed_seconds=60.0 * epoch,
        deadline_seconds=600.0,
    )


def test_the_board_keeps_the_epochs_of_the_latest_runs_and_a_repeated_epoch_once():
    board = ProgressBoard()
    assert board.latest() is None
    runs = [uuid.uuid4() for _ in range(RUNS_KEPT + 1)]
    for run in runs:
        board.add(report(run, 1))
    board.add(report(runs[-1], 2, 0.6))
    board.add(report(runs[-1], 2, 0.7))  # the same epoch again: replaced
    board.add(report(runs[-1], 1, None, model="screen"))
    run_id, models = board.latest()
    assert run_id == runs[-1]
    assert [(r.epoch, r.val_accuracy) for r in models["icon"]] == [(1, 0.5), (2, 0.7)]
    assert [r.epoch for r in models["screen"]] == [1]
    board.add(report(runs[0], 3))  # the oldest run was dropped: it comes back as the latest
    assert board.latest()[0] == runs[0] and len(board._runs) == RUNS_KEPT


async def test_the_overview_shows_training_progress_as_it_is_reported(console, publisher):
    await log_in(console.client)
    run_id = uuid.uuid4()
    for attempt in range(50):  # the console's queue is bound once its lifespan connected
        await publisher.publish(report(run_id, attempt + 1, 0.42))
        page = (await console.client.get("/console")).text
        if str(run_id) in page:
            break
        await asyncio.sleep(0.1)
    assert f"Live: run {run_id}" in page and "held-out 0.420" in page
    assert "Held-out accuracy by epoch (live)" in page
