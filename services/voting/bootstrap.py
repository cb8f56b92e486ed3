"""Composition root of the voting worker: ``bootstrap(settings, **overrides)`` wires the real adapters
(Postgres store, RabbitMQ publisher and consumer, outbox relay, consensus worker process, wall clock); tests
pass in-memory fakes instead."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from services.voting.handlers import ConsensusRefresher, VotingService
from services.voting.settings import VotingSettings
from services.voting.store import PostgresVotingStore, VotingStore
from shared.batch_consumer import BatchConsumer
from shared.broker import EventPublisher
from shared.clock import Clock, utc_now
from shared.db import create_engine
from shared.events import EVENT_TYPES, TrainingForceRequested
from shared.outbox import OutboxRelay
from shared.processes import exit_with_parent
from shared.worker_main import run_service

ACCEPTED_EVENTS = frozenset(
    {t for t in EVENT_TYPES if t.startswith("contribution.")} | {TrainingForceRequested.event_type}
)
_CONSENSUS_POOL: ProcessPoolExecutor | None = None


class Relay(Protocol):
    """The outbox relay: sends what snapshots enqueued; ``wake`` after a commit sends it at once."""

    def wake(self) -> None: ...

    async def run(self) -> None: ...


def consensus_pool() -> ProcessPoolExecutor:
    """One worker process per voting process for the consensus computation: it is CPU-bound over every vote
    (seconds at a few hundred thousand), and run on the event loop it stalled the storing of new votes for as
    long (benchmarks/pipeline_load.py: p99 accept-to-vote grew from 0.1 to 2.7 s over 5 minutes)."""
    global _CONSENSUS_POOL
    if _CONSENSUS_POOL is None:
        _CONSENSUS_POOL = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_lower_priority,
            initargs=(os.getpid(),),
        )
    return _CONSENSUS_POOL


def _lower_priority(parent: int) -> None:
    """Storing votes and answering clients come first; consensus can wait for a spare core. The worker also
    stops when its voting process was killed, instead of lingering."""
    os.nice(10)
    exit_with_parent(parent)


@dataclass
class Voting:
    settings: VotingSettings
    engine: AsyncEngine
    publisher: EventPublisher
    relay: Relay
    store: VotingStore
    refresher: ConsensusRefresher
    service: VotingService
    consumer: BatchConsumer

    async def run(self) -> None:
        await run_service(
            [
                self.consumer.run(),
                self.refresher.run_forever(self.settings.refresh_seconds),
                self.relay.run(),
            ],
            publisher=self.publisher,
            engine=self.engine,
            health_port=self.settings.health_port,
            health_details=lambda: {"processed": self.consumer.processed},
        )


def bootstrap(
    settings: VotingSettings,
    *,
    engine: AsyncEngine | None = None,
    store: VotingStore | None = None,
    publisher: EventPublisher | None = None,
    relay: Relay | None = None,
    executor: Executor | None = None,
    clock: Clock = utc_now,
) -> Voting:
    """Nothing connects until ``run``: a test with a fake ``store`` and an inline ``executor`` runs the
    handlers in memory."""
    topology = settings.topology()
    engine = engine or create_engine(settings.database_url, pool_size=settings.database_pool_size)
    publisher = publisher or EventPublisher(settings.broker_url, topology)
    relay = relay or OutboxRelay(engine, publisher, topology.events_exchange)
    store = store or PostgresVotingStore(engine)
    refresher = ConsensusRefresher(
        store, settings, executor=executor or consensus_pool(), clock=clock, on_snapshot=relay.wake
    )
    service = VotingService(store, refresher)
    consumer = BatchConsumer(
        settings.broker_url,
        topology,
        "voting",
        service.handle,
        publisher,
        accepted=ACCEPTED_EVENTS,
        prefetch=settings.prefetch,
        max_batch=settings.max_batch,
    )
    return Voting(settings, engine, publisher, relay, store, refresher, service, consumer)
