"""Training progress as it happens: each ingest process with the console on binds a queue of its own (exclusive,
deleted with its connection) to ``training.progress`` and keeps the latest runs' epochs in memory for the
overview. Nothing is stored: after a restart the board fills again from the next epoch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict

import aio_pika

from shared.events import TrainingProgress, UndecodableEvent, decode_event

log = logging.getLogger(__name__)
RUNS_KEPT = 3
EPOCHS_KEPT = 500
RETRY_SECONDS = 5.0


class ProgressBoard:
    """The epochs reported of the last ``RUNS_KEPT`` runs, per model, in the order they came."""

    def __init__(self) -> None:
        self._runs: OrderedDict[uuid.UUID, dict[str, list[TrainingProgress]]] = OrderedDict()

    def add(self, event: TrainingProgress) -> None:
        models = self._runs.setdefault(event.run_id, {})
        self._runs.move_to_end(event.run_id)
        epochs = models.setdefault(event.model, [])
        if epochs and epochs[-1].epoch == event.epoch:  # a redelivered or repeated report replaces its epoch
            epochs[-1] = event
        else:
            epochs.append(event)
            del epochs[:-EPOCHS_KEPT]
        while len(self._runs) > RUNS_KEPT:
            self._runs.popitem(last=False)

    def latest(self) -> tuple[uuid.UUID, dict[str, list[TrainingProgress]]] | None:
        """The run reported last, with each model's epochs."""
        if not self._runs:
            return None
        run_id = next(reversed(self._runs))
        return run_id, self._runs[run_id]


async def follow(broker_url: str, exchange: str, board: ProgressBoard) -> None:
    """Feed ``board`` from the broker until cancelled; reconnects after RabbitMQ goes away."""
    while True:
        try:
            connection = await aio_pika.connect(broker_url, timeout=5)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                await queue.bind(exchange, routing_key=TrainingProgress.event_type)
                async with queue.iterator(no_ack=True) as messages:
                    async for message in messages:
                        _take(board, message.body)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning(
                "console: training progress not followed (%r); retrying in %.0f s", error, RETRY_SECONDS
            )
        await asyncio.sleep(RETRY_SECONDS)


def _take(board: ProgressBoard, body: bytes) -> None:
    try:
        event = decode_event(body, frozenset({TrainingProgress.event_type}))
    except UndecodableEvent as error:
        log.warning("console: a training.progress message was not readable: %s", error)
        return
    board.add(event)


class ProgressFollower:
    """The board and the task feeding it, started by the first console page that shows progress (a process
    whose console is never opened binds no queue) and stopped with ingest."""

    def __init__(self, broker_url: str, exchange: str) -> None:
        self.board = ProgressBoard()
        self._broker_url, self._exchange = broker_url, exchange
        self._task: asyncio.Task | None = None

    def start(self) -> ProgressBoard:
        if self._task is None:
            self._task = asyncio.create_task(follow(self._broker_url, self._exchange, self.board))
        return self.board

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
