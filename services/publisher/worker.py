"""Entry of the publisher: ``python -m services.publisher`` (wiring in ``bootstrap.py``)."""

from __future__ import annotations

from typing import Any

from services.publisher.bootstrap import bootstrap
from services.publisher.settings import PublisherSettings
from shared.worker_main import run_service


class PublisherWorker:
    def __init__(self, settings: PublisherSettings, **overrides: Any) -> None:
        self.publisher = bootstrap(settings, **overrides)

    async def run(self) -> None:
        publisher = self.publisher
        await run_service(
            [publisher.relay.run()],
            publisher=publisher.publisher,
            engine=publisher.engine,
            health_port=publisher.settings.health_port,
            broker=publisher.broker,
        )
