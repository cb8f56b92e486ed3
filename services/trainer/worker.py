"""Composition root of the trainer: ``python -m services.trainer``.

The queue has a single active consumer with prefetch 1; a request is recorded as a run and acked at once
(RabbitMQ cancels consumers that hold a message unacked for 30 minutes). Runs are executed by whichever trainer
process holds a Postgres advisory lock, so a standby trainer takes over — and resumes unfinished runs from
their checkpoints — when the active one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream.rabbit import RabbitBroker
from sqlalchemy import func, select

from services.trainer.handlers import RunLedger, TrainingRunner
from services.trainer.settings import TrainerSettings
from shared.broker import EventPublisher
from shared.consumer import subscribe_events
from shared.db import create_engine
from shared.events import TrainingProgress, TrainingRequested
from shared.health import serve_health
from shared.outbox import OutboxRelay

log = logging.getLogger(__name__)
ACTIVE_TRAINER_LOCK = 0x57A7_0002


class TrainerWorker:
    def __init__(self, settings: TrainerSettings, runner_options: dict | None = None) -> None:
        self.settings = settings
        self.topology = settings.topology()
        self.engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.publisher = EventPublisher(settings.broker_url, self.topology)
        self.relay = OutboxRelay(self.engine, self.publisher, self.topology.events_exchange)
        self.wake = asyncio.Event()
        self.ledger = RunLedger(self.engine, self.wake)
        self.runner = TrainingRunner(
            self.engine,
            settings,
            progress=self._send_progress,
            checkpoint_seconds=settings.checkpoint_seconds,
            **(runner_options or {}),
        )
        self.broker = RabbitBroker(settings.broker_url, logger=None)
        subscribe_events(
            self.broker,
            self.topology,
            "trainer",
            {TrainingRequested: self.ledger.record},
            self.publisher,
            prefetch=1,
        )
        self.active = False

    def _send_progress(self, event: TrainingProgress) -> None:
        """Called from the training thread; progress is informational, so a failed send is only logged."""
        future = asyncio.run_coroutine_threadsafe(self.publisher.publish(event), self._loop)
        future.add_done_callback(
            lambda f: f.exception() and log.warning("progress event not sent: %r", f.exception())
        )

    async def run_when_active(self) -> None:
        async with self.engine.connect() as lock_connection:
            while not await lock_connection.scalar(select(func.pg_try_advisory_lock(ACTIVE_TRAINER_LOCK))):
                await lock_connection.commit()
                await asyncio.sleep(5)
            await lock_connection.commit()  # the session lock stays; no transaction is left idle open
            self.active = True
            log.info("this trainer is the active one")
            try:
                while True:
                    # the lock lives as long as this connection: if it broke, stop being the active trainer
                    await lock_connection.execute(select(1))
                    await lock_connection.commit()
                    if not await self.runner.run_unfinished():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), timeout=10)
                        self.wake.clear()
                    self.relay.wake()
            finally:
                self.active = False

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.publisher.connect_with_retry()
        await self.broker.start()
        tasks = [self.run_when_active(), self.relay.run()]
        if self.settings.health_port:
            tasks.append(
                serve_health(
                    self.settings.health_port, self.publisher, self.engine, lambda: {"active": self.active}
                )
            )
        try:
            async with asyncio.TaskGroup() as group:
                for task in tasks:
                    group.create_task(task)
        finally:
            await self.broker.stop()
            await self.publisher.close()
            await self.engine.dispose()
