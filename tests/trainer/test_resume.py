"""Killing the trainer at any moment and starting it again ends in exactly one finished run."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.events import TrainingRequested
from tests.trainer.conftest import make_snapshot
from tests.utils.broker import queue_depth, wait_for_messages

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration  # trainer processes that train real models


def start_trainer(settings) -> subprocess.Popen:
    env = {
        "WARP_BROKER_URL": settings.broker_url,
        "WARP_DATABASE_URL": settings.database_url,
        "WARP_BROKER_NAMESPACE": settings.broker_namespace,
        "WARP_DELIVERY_LIMIT": str(settings.delivery_limit),
        "WARP_BUDGET_MINUTES": "0.6",
        "WARP_CHECKPOINT_SECONDS": "1",
        "WARP_HEALTH_PORT": "0",
    }
    return subprocess.Popen([sys.executable, "-m", "services.trainer"], cwd=ROOT, env={**os.environ, **env})


async def until(engine, sql: str, timeout: float, **params):
    async with asyncio.timeout(timeout):
        while True:
            async with engine.connect() as connection:
                value = await connection.scalar(text(sql), params)
            if value:
                return value
            await asyncio.sleep(0.3)


async def test_a_killed_trainer_resumes_from_its_checkpoint_and_finishes_once(
    engine, trainer_settings, publisher, topology, amqp_channel
):
    snapshot = await make_snapshot(engine, classes=4, variants=3)
    first = start_trainer(trainer_settings)
    try:
        request = TrainingRequested(snapshot_id=snapshot, reason="admin", new_labels=12, total_labels=12)
        await publisher.publish(request)
        await until(engine, "SELECT count(*) FROM checkpoints", 90)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT status FROM training_runs")) == "running"
    assert await queue_depth(amqp_channel, topology.queue("trainer")) == 0  # acked before training began
    second = start_trainer(trainer_settings)
    try:
        await until(engine, "SELECT count(*) FROM training_runs WHERE status = 'succeeded'", 120)
        [trained] = await wait_for_messages(amqp_channel, topology.queue("publisher"), 1, timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    async with engine.connect() as connection:
        runs = (await connection.execute(text("SELECT status, attempts FROM training_runs"))).all()
        assert (
            await connection.scalar(text("SELECT count(*) FROM outbox WHERE routing_key = 'model.trained'"))
            == 1
        )
    assert [tuple(r) for r in runs] == [("succeeded", 2)]
    assert trained.message_id.startswith("model-trained-")
