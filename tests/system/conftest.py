"""The whole system as separate processes (tools/stack.py) on the real broker and database, publishing to the
test Hub: a database and a broker namespace of its own per test, and quick settings (short debounce, short
training budget) so a contribution becomes a release within a couple of minutes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import aio_pika
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import create_engine
from shared.topology import Topology, delete_topology
from tests.utils.hub_server import RunningHub, running_hub
from tests.utils.warp_client import REPO
from tools.simulator.workload import Workload, bulk_crops_body, icon_events
from tools.stack import LocalStack

ADMIN_KEY = "system-test-admin-key-0123456789"
QUICK = {
    "WARP_INSTALL_DAILY_LIMIT": "100000",
    "WARP_IP_DAILY_LIMIT": "1000000",
    "WARP_ADMIN_KEY": ADMIN_KEY,
    # the tests post from loopback in the name of many clients (X-Forwarded-For): one network each, as players
    "WARP_TRUSTED_PROXIES": "127.0.0.1/32",
    # a brand-new community with no published model: its first labels are established by distinct networks
    "WARP_COLD_START_LABELS": "1000",
    "WARP_READ_CACHE_SECONDS": "0.5",
    "WARP_REFRESH_SECONDS": "1",
    "WARP_TRAINING_THRESHOLD": "20",
    "WARP_TRAINING_DEBOUNCE_SECONDS": "4",
    "WARP_BUDGET_MINUTES": "2.5",
    "WARP_CHECKPOINT_SECONDS": "5",
    "WARP_MAX_RETRIES": "8",
    "WARP_LOG_LEVEL": "INFO",
}
READY_SECONDS = 90  # LocalStack.wait_ready's default: every process answering its probe
# Around a test's own waits: the fixture's start (Hub, database) and stop (SIGTERM, 20 s grace), posting the
# workload and the checks at the end.
OUTSIDE_THE_WAITS_SECONDS = 90


def within(*waits: float) -> pytest.MarkDecorator:
    """The test's timeout: the sum of the timeouts of its waits, so each wait fails with its own message (and
    every process's log) before pytest-timeout stops the test."""
    return pytest.mark.timeout(sum(waits) + OUTSIDE_THE_WAITS_SECONDS)


@dataclass
class System:
    stack: LocalStack
    hub: RunningHub
    engine: AsyncEngine
    broker_url: str
    topology: Topology

    async def scalar(self, sql: str, **params: object) -> object:
        async with self.engine.connect() as connection:
            return await connection.scalar(text(sql), params)

    async def queue_consumers(self, role: str) -> int:
        connection = await aio_pika.connect(self.broker_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.topology.queue(role), passive=True)
            return queue.declaration_result.consumer_count

    async def wait_for(
        self, what: str, check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.5
    ) -> None:
        """Poll ``check`` until true; on timeout fail with what was awaited and every process's log."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await check():
                    return
            except Exception:  # a server being restarted by the test: keep polling
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.stack.logs()}")
            await asyncio.sleep(every)


async def post_all(urls: list[str], workload: Workload, concurrency: int = 8) -> dict[str, int]:
    """Every vote of the workload as one /contribute/bulk-crops request, spread over the ingest URLs, each install
    from a network of its own (consensus gives one network one voice).

    Returns how many were accepted (2xx with accepted == 1) and how many answered otherwise, by status."""
    outcome = {"accepted": 0}
    installs = {install: n for n, install in enumerate(sorted({vote.install for vote in workload.votes}))}
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:

        async def post(index: int, event) -> None:
            async with semaphore:
                response = await client.post(
                    f"{urls[index % len(urls)]}/contribute/bulk-crops",
                    json=bulk_crops_body(event),
                    headers={"X-Forwarded-For": client_address(installs[event.install_id])},
                )
            if response.status_code == 200 and response.json()["accepted"] == 1:
                outcome["accepted"] += 1
            else:
                outcome[str(response.status_code)] = outcome.get(str(response.status_code), 0) + 1

        await asyncio.gather(*(post(i, e) for i, e in enumerate(icon_events(workload))))
    return outcome


def client_address(n: int) -> str:
    """The n-th client's address: each in a /24 of its own (100.64.0.0/10, shared address space)."""
    return f"100.{64 + n // 256}.{n % 256}.9"


def batched(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@pytest_asyncio.fixture
async def system(servers, database_url, tmp_path) -> AsyncIterator[System]:
    topology = Topology(namespace=f"sys{uuid.uuid4().hex[:10]}")
    engine = create_engine(database_url)
    with running_hub() as hub:
        env = {
            "WARP_DATABASE_URL": database_url,
            "WARP_BROKER_URL": servers.broker_url,
            "WARP_BROKER_NAMESPACE": topology.namespace,
            "WARP_HF_ENDPOINT": hub.url,
            "WARP_HF_TOKEN": "hf_system_test",
            "WARP_HF_REPO_ID": REPO,
            **QUICK,
        }
        stack = LocalStack(env, tmp_path / "stack")
        try:
            yield System(stack, hub, engine, servers.broker_url, topology)
        finally:
            stack.stop_all(grace=20)
            print(stack.logs())  # shown by pytest when the test failed
            await engine.dispose()
            connection = await aio_pika.connect(servers.broker_url)
            async with connection:
                await delete_topology(await connection.channel(), topology)
