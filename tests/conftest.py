"""Real RabbitMQ and Postgres for every test.

Where a Docker engine answers (and no URLs are given), testcontainers starts both for the session. Otherwise
the servers come from ``WARP_TEST_BROKER_URL`` / ``WARP_TEST_DATABASE_URL``, defaulting to the local ones.
Each test gets its own database (cloned from a template migrated once per session) and its own broker
namespace (uniquely named exchanges and queues), deleted afterwards.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: no telemetry, whose first request would try to reach huggingface.co.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aio_pika
import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from shared.broker import EventPublisher
from shared.db import create_engine
from shared.topology import Topology, declare_topology, delete_topology

TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test one tier: ``system`` under tests/system, ``integration`` when it needs the real servers
    (any fixture built on ``servers``), ``unit`` otherwise; an explicit tier marker wins."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        if "tests/system/" in item.nodeid:
            item.add_marker(pytest.mark.system)
        elif "servers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


LOCAL_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Servers:
    broker_url: str
    admin_database_url: str

    def database_url(self, name: str) -> str:
        return make_url(self.admin_database_url).set(database=name).render_as_string(hide_password=False)


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    given = {
        key: os.environ[key]
        for key in ("WARP_TEST_BROKER_URL", "WARP_TEST_DATABASE_URL")
        if key in os.environ
    }
    if given or not _docker_engine_answers():
        yield Servers(
            broker_url=given.get("WARP_TEST_BROKER_URL", LOCAL_BROKER_URL),
            admin_database_url=given.get("WARP_TEST_DATABASE_URL", LOCAL_DATABASE_URL),
        )
        return
    from testcontainers.postgres import PostgresContainer
    from testcontainers.rabbitmq import RabbitMqContainer

    with (
        RabbitMqContainer("rabbitmq:3.13-management") as rabbit,
        PostgresContainer("postgres:16", driver="asyncpg") as pg,
    ):
        host, port = rabbit.get_container_host_ip(), rabbit.get_exposed_port(rabbit.port)
        yield Servers(
            broker_url=f"amqp://guest:guest@{host}:{port}/", admin_database_url=pg.get_connection_url()
        )


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def _admin_connection(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(_asyncpg_dsn(servers.admin_database_url))
    try:
        yield connection
    finally:
        await connection.close()


async def create_database(servers: Servers, name: str, template: str | None = None) -> str:
    async with _admin_connection(servers) as admin:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    return servers.database_url(name)


async def drop_database(servers: Servers, name: str) -> None:
    async with _admin_connection(servers) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(scope="session")
async def migrated_template(servers: Servers) -> AsyncIterator[str]:
    name = f"warp_template_{uuid.uuid4().hex[:10]}"
    url = await create_database(servers, name)
    await asyncio.to_thread(migrations.upgrade, url)
    yield name
    await drop_database(servers, name)


@pytest_asyncio.fixture
async def database_url(servers: Servers, migrated_template: str) -> AsyncIterator[str]:
    """A fresh database at the latest schema, for this test only."""
    name = f"warp_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(servers, name, template=migrated_template)
    yield url
    await drop_database(servers, name)


@pytest_asyncio.fixture
async def empty_database_url(servers: Servers) -> AsyncIterator[str]:
    name = f"warp_empty_{uuid.uuid4().hex[:12]}"
    url = await create_database(servers, name)
    yield url
    await drop_database(servers, name)


@pytest_asyncio.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def broker_url(servers: Servers) -> str:
    return servers.broker_url


@pytest_asyncio.fixture
async def topology(broker_url: str) -> AsyncIterator[Topology]:
    """This test's own exchanges and queues, declared, with a small delivery limit; deleted afterwards."""
    topology = Topology(namespace=f"t{uuid.uuid4().hex[:12]}", delivery_limit=2)
    connection = await aio_pika.connect(broker_url)
    async with connection:
        await declare_topology(await connection.channel(), topology)
        yield topology
        await delete_topology(await connection.channel(), topology)


@pytest_asyncio.fixture
async def publisher(broker_url: str, topology: Topology) -> AsyncIterator[EventPublisher]:
    publisher = EventPublisher(broker_url, topology)
    await publisher.connect(declare=False)
    yield publisher
    await publisher.close()


@pytest_asyncio.fixture
async def amqp_channel(broker_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        yield await connection.channel()
