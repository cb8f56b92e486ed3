"""Composition root of the trainer: ``bootstrap(settings)`` wires the real adapters; tests pass in-memory fakes
(store, blobs, publisher, clock, model work) as keyword overrides.

It also consumes ``model.prediction_requested`` (queue ``predictor``) with ``handlers.Predictor``.

The training queue has a single active consumer with prefetch 1; a request is recorded as a run and acked at once
(RabbitMQ cancels consumers that hold a message unacked for 30 minutes). Runs are executed by whichever trainer
process holds a Postgres advisory lock, so a standby trainer takes over — and resumes unfinished runs from
their checkpoints — when the active one dies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from services.trainer.handlers import ActiveTrainer, ModelWork, Predictor, RunLedger, TrainingRunner
from services.trainer.settings import TrainerSettings
from services.trainer.store import PostgresTrainerStore, TrainerStore
from shared.blobstore import BlobStore, PostgresBlobStore
from shared.broker import EventPublisher
from shared.clock import Clock, utc_now
from shared.consumer import subscribe_events
from shared.db import create_engine
from shared.events import PredictionRequested, TrainingRequested
from shared.outbox import OutboxRelay
from shared.worker_main import run_service


@dataclass
class Trainer:
    settings: TrainerSettings
    engine: AsyncEngine
    store: TrainerStore
    blobs: BlobStore
    publisher: EventPublisher
    relay: OutboxRelay
    broker: Any
    ledger: RunLedger
    runner: TrainingRunner
    active: ActiveTrainer
    predictor: Predictor

    async def run(self) -> None:
        """Consume requests, run the recorded runs while active, relay the outbox and answer health checks
        until cancelled."""
        await run_service(
            [self.active.run(), self.relay.run()],
            publisher=self.publisher,
            engine=self.engine,
            health_port=self.settings.health_port,
            health_details=lambda: {"active": self.active.active},
            broker=self.broker,
        )


def bootstrap(
    settings: TrainerSettings,
    *,
    engine: AsyncEngine | None = None,
    store: TrainerStore | None = None,
    blobs: BlobStore | None = None,
    publisher: EventPublisher | None = None,
    relay: OutboxRelay | None = None,
    broker: Any = None,
    clock: Clock = utc_now,
    monotonic: Callable[[], float] = time.monotonic,
    work: ModelWork | None = None,
) -> Trainer:
    """Every adapter not given is the real one (nothing connects before the worker runs)."""
    topology = settings.topology()
    engine = engine or create_engine(settings.database_url, pool_size=settings.database_pool_size)
    store = store or PostgresTrainerStore(engine)
    blobs = blobs or PostgresBlobStore(engine)
    publisher = publisher or EventPublisher(settings.broker_url, topology)
    relay = relay or OutboxRelay(engine, publisher, topology.events_exchange)
    broker = broker or RabbitBroker(settings.broker_url, logger=None)
    wake, recorded = asyncio.Event(), asyncio.Event()
    ledger = RunLedger(store, wake, recorded)
    runner = TrainingRunner(
        store, blobs, settings, clock=clock, monotonic=monotonic, progress=publisher.publish, work=work
    )
    subscribe_events(broker, topology, "trainer", {TrainingRequested: ledger.record}, publisher, prefetch=1)
    # the published model's predictions for voting: a queue of their own, one request at a time
    predictor = Predictor(store, blobs, publisher.publish)
    subscribe_events(
        broker, topology, "predictor", {PredictionRequested: predictor.handle}, publisher, prefetch=1
    )
    return Trainer(
        settings=settings,
        engine=engine,
        store=store,
        blobs=blobs,
        publisher=publisher,
        relay=relay,
        broker=broker,
        ledger=ledger,
        runner=runner,
        active=ActiveTrainer(store, runner, wake, after_runs=relay.wake, recorded=recorded),
        predictor=predictor,
    )
