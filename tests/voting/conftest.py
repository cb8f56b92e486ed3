import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text

from services.voting.bootstrap import ACCEPTED_EVENTS, Voting, bootstrap
from services.voting.handlers import VotingService
from services.voting.settings import VotingSettings
from shared.batch_consumer import BatchConsumer
from shared.blobstore import sha256_hex
from shared.consumer import RetryPolicy
from shared.events import IconCropContributed
from tests.utils.clock import T0
from tests.utils.images import make_png
from tests.voting.fakes import ShiftedClock


def crop_vote(install: str, crop_seed: int, label: str, at: int = 0, **overrides) -> IconCropContributed:
    png = make_png(64, 64, crop_seed)
    fields = dict(
        install_id=install,
        crop_sha256=sha256_hex(png),
        png=png,
        slot="Fore Weapon",
        label=label,
        occurred_at=T0 + timedelta(seconds=at),
        message_id=f"{install}-{crop_seed}-{label}-{at}",
    )
    return IconCropContributed(**(fields | overrides))


async def seed_known(engine, kind: str, labels) -> None:
    """Labels known as if a published model had them: three fresh installs of distinct origins settle one."""
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO known_labels (item_kind, label, source) VALUES (:kind, :label, 'published')"),
            [{"kind": kind, "label": label} for label in labels],
        )


@pytest_asyncio.fixture
async def voting_settings(broker_url, database_url, topology) -> VotingSettings:
    return VotingSettings(
        broker_url=broker_url,
        database_url=database_url,
        broker_namespace=topology.namespace,
        delivery_limit=topology.delivery_limit,
        training_debounce_seconds=0,
        health_port=0,
    )


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
def voting_with(engine, voting_settings, clock) -> Callable[..., Voting]:
    """Voting over the real store of this test's database, and a clock the
    test moves; keyword arguments change settings."""
    return lambda **settings: bootstrap(
        voting_settings.model_copy(update=settings), engine=engine, clock=clock
    )


@pytest.fixture
def voting(voting_with) -> Voting:
    return voting_with()


@pytest.fixture
def service(voting) -> VotingService:
    return voting.service


NO_BACKOFF = RetryPolicy(0, 0)


@contextlib.asynccontextmanager
async def consuming(
    voting_settings,
    topology,
    publisher,
    handler,
    consumers: int = 1,
    max_batch: int = 100,
    retry: RetryPolicy = NO_BACKOFF,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
):
    running = [
        BatchConsumer(
            voting_settings.broker_url,
            topology,
            "voting",
            handler,
            publisher,
            accepted=ACCEPTED_EVENTS,
            prefetch=200,
            max_batch=max_batch,
            retry=retry,
            sleep=sleep,
        )
        for _ in range(consumers)
    ]
    tasks = [asyncio.create_task(consumer.run()) for consumer in running]
    try:
        yield running
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
