"""Composition root of the voting worker: ``bootstrap(settings, **overrides)`` wires the real adapters
(Postgres store, RabbitMQ publisher and consumer, outbox relay, wall clock); tests
pass in-memory fakes instead."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from services.voting.handlers import ConsensusRefresher, VotingService
from services.voting.routes import ops_routes
from services.voting.settings import VotingSettings
from services.voting.store import PostgresExplainer, PostgresVotingStore, VotingStore
from shared.batch_consumer import BatchConsumer
from shared.broker import EventPublisher
from shared.clock import Clock, utc_now
from shared.db import create_engine
from shared.events import (
    EVENT_TYPES,
    InstallModerated,
    ItemModerated,
    ModelPredicted,
    TrainingForceRequested,
)
from shared.outbox import OutboxRelay
from shared.worker_main import run_service

ACCEPTED_EVENTS = frozenset(
    {t for t in EVENT_TYPES if t.startswith("contribution.")}
    | {
        TrainingForceRequested.event_type,
        ItemModerated.event_type,
        InstallModerated.event_type,
        ModelPredicted.event_type,
    }
)


class Relay(Protocol):
    """The outbox relay: sends what snapshots enqueued; ``wake`` after a commit sends it at once."""

    def wake(self) -> None: ...

    async def run(self) -> None: ...


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

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """What this process runs, by its role (``WARP_ROLE``)."""
        role = self.settings.role
        loops = [self.relay.run()]  # both roles write the outbox (snapshots, prediction and forced requests)
        if role in ("all", "consumer"):
            loops.append(self.consumer.run())
        if role in ("all", "refresher"):
            loops.append(self.refresher.run_forever(self.settings.refresh_seconds))
        return loops

    async def run(self) -> None:
        role = self.settings.role
        await run_service(
            self.loops(),
            publisher=self.publisher,
            engine=self.engine,
            health_port=self.settings.health_port,
            health_details=lambda: {"role": role, "processed": self.consumer.processed},
            ops_routes=ops_routes(PostgresExplainer(self.engine, self.settings), self.refresher),
        )


def bootstrap(
    settings: VotingSettings,
    *,
    engine: AsyncEngine | None = None,
    store: VotingStore | None = None,
    publisher: EventPublisher | None = None,
    relay: Relay | None = None,
    clock: Clock = utc_now,
) -> Voting:
    """Nothing connects until ``run``: a test with a fake ``store`` runs the handlers in memory."""
    topology = settings.topology()
    engine = engine or create_engine(settings.database_url, pool_size=settings.database_pool_size)
    publisher = publisher or EventPublisher(settings.broker_url, topology)
    relay = relay or OutboxRelay(engine, publisher, topology.events_exchange)
    store = store or PostgresVotingStore(engine, fresh_weight=settings.fresh_weight)
    refresher = ConsensusRefresher(store, settings, clock=clock, on_snapshot=relay.wake)
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
