"""Entry of the trainer: ``python -m services.trainer`` (wiring in ``bootstrap.py``)."""

from __future__ import annotations

from typing import Any

from services.trainer.bootstrap import bootstrap
from services.trainer.settings import TrainerSettings
from shared.worker_main import run_service


class TrainerWorker:
    def __init__(self, settings: TrainerSettings, **overrides: Any) -> None:
        self.trainer = bootstrap(settings, **overrides)

    async def run(self) -> None:
        trainer = self.trainer
        await run_service(
            [trainer.active.run(), trainer.relay.run()],
            publisher=trainer.publisher,
            engine=trainer.engine,
            health_port=trainer.settings.health_port,
            health_details=lambda: {"active": trainer.active.active},
            broker=trainer.broker,
        )
