"""Composition root of the publisher: ``bootstrap(settings, **overrides)`` wires the real adapters (Postgres
store, the Hub the settings name, RabbitMQ publisher and consumer, outbox relay, wall clock); tests pass
in-memory fakes instead. Nothing connects until the worker runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from services.publisher.handlers import ReleaseService
from services.publisher.hub import HfHub, Hub, LocalHub, RetryPolicy
from services.publisher.settings import PublisherSettings
from services.publisher.store import PostgresReleaseStore, ReleaseStore
from shared.broker import EventPublisher
from shared.clock import Clock, utc_now
from shared.consumer import subscribe_events
from shared.db import create_engine
from shared.events import (
    Event,
    KnowledgePublishRequested,
    ModelTrained,
    ReleaseApprovalRequested,
    ReleaseModeRequested,
    RollbackRequested,
)
from shared.outbox import OutboxRelay
from shared.worker_main import run_service


@dataclass
class Publisher:
    settings: PublisherSettings
    engine: AsyncEngine
    store: ReleaseStore
    hub: Hub
    publisher: EventPublisher
    relay: OutboxRelay
    service: ReleaseService
    broker: Any

    async def run(self) -> None:
        """Consume, relay the outbox and answer health checks until cancelled."""
        await run_service(
            [self.relay.run()],
            publisher=self.publisher,
            engine=self.engine,
            health_port=self.settings.health_port,
            broker=self.broker,
        )


def hub_from(settings: PublisherSettings) -> Hub:
    """The Hub at ``WARP_HF_ENDPOINT`` when a token is set, else the local Hub-shaped directory."""
    if settings.hf_token is None:
        return LocalHub(settings.local_hub_dir, settings.hf_repo_id)
    return HfHub(
        settings.hf_endpoint,
        settings.hf_token.get_secret_value(),
        settings.hf_repo_id,
        RetryPolicy(attempts=settings.max_retries),
    )


def bootstrap(
    settings: PublisherSettings,
    *,
    engine: AsyncEngine | None = None,
    store: ReleaseStore | None = None,
    hub: Hub | None = None,
    publisher: EventPublisher | None = None,
    relay: OutboxRelay | None = None,
    broker: Any = None,
    clock: Clock = utc_now,
) -> Publisher:
    """Every adapter not given is the real one."""
    topology = settings.topology()
    engine = engine or create_engine(settings.database_url, pool_size=settings.database_pool_size)
    store = store or PostgresReleaseStore(engine)
    hub = hub or hub_from(settings)
    publisher = publisher or EventPublisher(settings.broker_url, topology)
    relay = relay or OutboxRelay(engine, publisher, topology.events_exchange)
    service = ReleaseService(store, hub, clock)
    broker = broker or RabbitBroker(settings.broker_url, logger=None)
    handlers = {
        ModelTrained: service.on_model_trained,
        RollbackRequested: service.on_rollback,
        KnowledgePublishRequested: service.on_knowledge_requested,
        ReleaseModeRequested: service.on_release_mode,
        ReleaseApprovalRequested: service.on_release_approval,
    }
    subscribe_events(
        broker,
        topology,
        "publisher",
        {event_type: _then(handler, relay.wake) for event_type, handler in handlers.items()},
        publisher,
        prefetch=1,
    )
    return Publisher(settings, engine, store, hub, publisher, relay, service, broker)


def _then(
    handler: Callable[[Any], Awaitable[None]], after: Callable[[], None]
) -> Callable[[Event], Awaitable[None]]:
    """``handler``, then ``after`` (the relay's wake-up: what the handler committed leaves at once)."""

    async def handle(event: Event) -> None:
        await handler(event)
        after()

    return handle
