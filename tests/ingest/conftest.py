import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest_asyncio
from fastapi import FastAPI

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.ingest.fakes import FakePublisher, FakeRateLimiter, FakeReadStore
from tests.utils.clock import FakeClock
from tests.utils.images import make_png

ADMIN_KEY = "test-admin-key-0123456789"
# Nothing listens here: an in-memory ingest that reached for a real server would fail loudly.
UNREACHABLE_DB = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1/"
CLIENT_ADDRESS = "203.0.113.7"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def crop(seed: int = 0, size: int = 64) -> str:
    return b64(make_png(size, size, seed))


@dataclass
class Ingest:
    client: httpx.AsyncClient
    app: FastAPI

    @property
    def runtime(self):
        return self.app.state.runtime


@contextlib.asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(CLIENT_ADDRESS, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield client


@contextlib.asynccontextmanager
async def running_ingest(**settings) -> AsyncIterator[Ingest]:
    """Ingest on the real broker and database."""
    app = create_app(IngestSettings(**settings))
    async with _serving(app) as client:
        yield Ingest(client, app)


class Clock(FakeClock):
    """The clocks ingest reads: the wall clock (quota day, ``occurred_at``, ``Retry-After``) and the monotonic
    one (read cache); moved together, by hand."""

    def __init__(self) -> None:
        super().__init__(datetime(2026, 12, 1, 10, 0, tzinfo=UTC))


@dataclass
class MemoryIngest(Ingest):
    publisher: FakePublisher
    limiter: FakeRateLimiter
    reads: FakeReadStore
    clock: Clock


MEMORY_SETTINGS = dict(
    broker_url=UNREACHABLE_BROKER,
    database_url=UNREACHABLE_DB,
    admin_key=ADMIN_KEY,
    read_cache_seconds=0,
)


@contextlib.asynccontextmanager
async def memory_ingest(**settings) -> AsyncIterator[MemoryIngest]:
    """Ingest on in-memory fakes: no broker, no database (``tests/ingest/fakes.py``)."""
    settings = IngestSettings(**MEMORY_SETTINGS | settings)
    publisher, reads, clock = FakePublisher(), FakeReadStore(), Clock()
    limiter = FakeRateLimiter(settings.quota())
    app = create_app(
        settings,
        publisher=publisher,
        limiter=limiter,
        read_store=reads,
        clock=clock,
        monotonic=clock.monotonic,
    )
    async with _serving(app) as client:
        yield MemoryIngest(client, app, publisher, limiter, reads, clock)


@pytest_asyncio.fixture
async def memory() -> AsyncIterator[MemoryIngest]:
    async with memory_ingest() as running:
        yield running


@pytest_asyncio.fixture
async def ingest_settings(broker_url, database_url, topology) -> dict:
    return dict(
        broker_url=broker_url,
        database_url=database_url,
        broker_namespace=topology.namespace,
        delivery_limit=topology.delivery_limit,
        admin_key=ADMIN_KEY,
        read_cache_seconds=0,
    )


@pytest_asyncio.fixture
async def ingest(ingest_settings) -> AsyncIterator[Ingest]:
    async with running_ingest(**ingest_settings) as running:
        yield running
