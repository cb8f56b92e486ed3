"""Composition root of the publisher: ``python -m services.publisher``."""

from __future__ import annotations

import asyncio

from faststream.rabbit import RabbitBroker

from services.publisher.handlers import ReleaseService
from services.publisher.hub import HfHub, Hub, LocalHub, RetryPolicy
from services.publisher.settings import PublisherSettings
from shared.broker import EventPublisher
from shared.consumer import subscribe_events
from shared.db import create_engine
from shared.events import KnowledgePublishRequested, ModelTrained, RollbackRequested
from shared.health import serve_health
from shared.outbox import OutboxRelay


def hub_from(settings: PublisherSettings) -> Hub:
    if settings.hf_token is None:
        return LocalHub(settings.local_hub_dir, settings.hf_repo_id)
    return HfHub(
        settings.hf_endpoint,
        settings.hf_token.get_secret_value(),
        settings.hf_repo_id,
        RetryPolicy(attempts=settings.max_retries),
    )


class PublisherWorker:
    def __init__(self, settings: PublisherSettings) -> None:
        self.settings = settings
        self.topology = settings.topology()
        self.engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.publisher = EventPublisher(settings.broker_url, self.topology)
        self.relay = OutboxRelay(self.engine, self.publisher, self.topology.events_exchange)
        self.service = ReleaseService(self.engine, hub_from(settings))
        self.broker = RabbitBroker(settings.broker_url, logger=None)
        handlers = {
            ModelTrained: self._then_relay(self.service.on_model_trained),
            RollbackRequested: self._then_relay(self.service.on_rollback),
            KnowledgePublishRequested: self._then_relay(self.service.on_knowledge_requested),
        }
        subscribe_events(self.broker, self.topology, "publisher", handlers, self.publisher, prefetch=1)

    def _then_relay(self, handler):
        async def handle(event) -> None:
            await handler(event)
            self.relay.wake()

        return handle

    async def run(self) -> None:
        await self.publisher.connect_with_retry()
        await self.broker.start()
        tasks = [self.relay.run()]
        if self.settings.health_port:
            tasks.append(serve_health(self.settings.health_port, self.publisher, self.engine))
        try:
            async with asyncio.TaskGroup() as group:
                for task in tasks:
                    group.create_task(task)
        finally:
            await self.broker.stop()
            await self.publisher.close()
            await self.engine.dispose()
