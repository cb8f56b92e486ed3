"""Composition root of the voting worker: ``python -m services.voting``."""

from __future__ import annotations

import asyncio
import logging
import time

from services.voting.handlers import ConsensusRefresher, VoteStore, VotingService
from services.voting.settings import VotingSettings
from shared.batch_consumer import BatchConsumer
from shared.broker import EventPublisher
from shared.db import create_engine
from shared.events import EVENT_TYPES, TrainingForceRequested
from shared.health import serve_health
from shared.outbox import OutboxRelay

log = logging.getLogger(__name__)
ACCEPTED_EVENTS = frozenset(
    {t for t in EVENT_TYPES if t.startswith("contribution.")} | {TrainingForceRequested.event_type}
)


class VotingWorker:
    def __init__(self, settings: VotingSettings) -> None:
        self.settings = settings
        self.topology = settings.topology()
        self.engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        self.publisher = EventPublisher(settings.broker_url, self.topology)
        self.relay = OutboxRelay(self.engine, self.publisher, self.topology.events_exchange)
        self.refresher = ConsensusRefresher(self.engine, settings, self.relay)
        self.service = VotingService(VoteStore(self.engine), self.refresher)
        self.consumer = BatchConsumer(
            settings.broker_url,
            self.topology,
            "voting",
            self.service.handle,
            self.publisher,
            accepted=ACCEPTED_EVENTS,
            prefetch=settings.prefetch,
            max_batch=settings.max_batch,
        )

    async def refresh_forever(self) -> None:
        pause = self.settings.refresh_seconds
        while True:
            await asyncio.sleep(pause)
            started = time.monotonic()
            try:
                await self.refresher.refresh()
            except Exception:
                log.exception("consensus refresh failed; retrying at the next interval")
            # a refresh that takes long (many votes) runs less often: at most a quarter of the time
            pause = max(self.settings.refresh_seconds, 3 * (time.monotonic() - started))

    async def run(self) -> None:
        await self.publisher.connect_with_retry()
        tasks = [self.consumer.run(), self.refresh_forever(), self.relay.run()]
        if self.settings.health_port:
            tasks.append(
                serve_health(
                    self.settings.health_port,
                    self.publisher,
                    self.engine,
                    lambda: {"processed": self.consumer.processed},
                )
            )
        try:
            async with asyncio.TaskGroup() as group:
                for task in tasks:
                    group.create_task(task)
        finally:
            await self.publisher.close()
            await self.engine.dispose()
