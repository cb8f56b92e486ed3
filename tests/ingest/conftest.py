import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest_asyncio
from fastapi import FastAPI

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.utils.images import make_png

ADMIN_KEY = "test-admin-key-0123456789"


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
async def running_ingest(**settings) -> AsyncIterator[Ingest]:
    app = create_app(IngestSettings(**settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield Ingest(client, app)


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
