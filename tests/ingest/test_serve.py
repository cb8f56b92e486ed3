"""The production entry (services.ingest.serve) as a real process: it serves, restarts a dead worker, and on
SIGTERM finishes what it accepted."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.common import free_port
from tests.ingest.conftest import crop
from tests.utils.broker import queue_depth, wait_for_messages

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve(ingest_settings):
    port = free_port()
    env = {f"WARP_{key.upper()}": str(value) for key, value in ingest_settings.items()}
    env |= {"WARP_HOST": "127.0.0.1", "WARP_PORT": str(port), "WARP_HTTP_WORKERS": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ingest.serve"], cwd=ROOT, env={**os.environ, **env}
    )
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()
        process.wait()


async def until_healthy(client: httpx.AsyncClient, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await client.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("ingest did not become ready")


def body(i: int) -> dict:
    return {
        "install_id": "install-0001",
        "items": [{"slot": "Fore Weapon", "name": f"Item {i}", "crop_png_b64": crop(i)}],
    }


def http_workers(pid: int) -> list[psutil.Process]:
    """The launcher's living HTTP workers (a killed one is a zombie until the launcher reaps it)."""
    workers = []
    for child in psutil.Process(pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return workers


async def test_a_dead_worker_is_replaced(serve):
    process, url = serve
    async with httpx.AsyncClient(base_url=url) as client:
        await until_healthy(client)
        workers = http_workers(process.pid)
        assert len(workers) == 2
        workers[0].kill()

        def replaced() -> bool:
            now = {child.pid for child in http_workers(process.pid)}
            return len(now) == 2 and workers[0].pid not in now

        async with asyncio.timeout(15):  # the launcher looks every half second
            while not replaced():
                await asyncio.sleep(0.1)
        await until_healthy(client)


async def test_sigterm_finishes_in_flight_requests_and_loses_no_accepted_contribution(
    serve, amqp_channel, topology
):
    process, url = serve
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await until_healthy(client)

        async def post(i: int) -> None:
            try:
                response = await client.post("/v1/contributions/crops", json=body(i))
            except httpx.TransportError:
                return  # refused once shutdown began: the client retries later, nothing was promised
            if response.status_code == 200:
                accepted.append(response.json()["results"][0]["contribution_id"])

        load = [asyncio.create_task(post(i)) for i in range(150)]
        async with asyncio.timeout(15):  # SIGTERM while requests are being answered
            while not accepted:
                await asyncio.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        await asyncio.gather(*load)
    assert await asyncio.to_thread(process.wait, 40) == 0
    # Every 2xx came after RabbitMQ confirmed, and the process has exited: the queue holds exactly those.
    assert await queue_depth(amqp_channel, topology.queue("voting")) == len(accepted)
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), len(accepted))
    assert {m.message_id for m in messages} == set(accepted)


async def test_workers_stop_when_the_launcher_is_killed(serve):
    process, url = serve
    async with httpx.AsyncClient(base_url=url) as client:
        await until_healthy(client)
    workers = http_workers(process.pid)
    assert len(workers) == 2
    process.kill()
    process.wait()
    gone, alive = await asyncio.to_thread(psutil.wait_procs, workers, 15)
    assert not alive, f"orphaned workers still serving: {[w.pid for w in alive]}"
