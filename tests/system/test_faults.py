"""Faults injected into the running system (separate processes, real RabbitMQ and PostgreSQL), each ending in a
numeric account of what was sent, accepted and counted (printed; pytest -s shows it).

Stopping RabbitMQ and restarting PostgreSQL act on the servers of this machine, so those tests run only where
the test servers are the local ones and their control commands exist (not against testcontainers or remote
servers); they always start the server again, whatever happens.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import aio_pika
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.broker import DEAD_LETTER_REASON
from tests.system.load import ContributionLoad


async def counted(system, tag: str) -> set[tuple[str, str]]:
    async with system.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT install_id, item_key FROM votes WHERE install_id LIKE :p"), {"p": f"{tag}-%"}
        )
        return {(row.install_id, row.item_key) for row in rows}


async def settle(system, load: ContributionLoad, timeout: float = 90) -> set[tuple[str, str]]:
    """Wait until every accepted contribution is a vote, then return what was counted."""

    async def all_accepted_counted() -> bool:
        return load.accepted <= await counted(system, load.tag)

    await system.wait_for("every accepted contribution counted", all_accepted_counted, timeout=timeout)
    await asyncio.sleep(2)  # anything still in flight lands too
    return await counted(system, load.tag)


async def contributions_rows(system, tag: str) -> int:
    return await system.scalar("SELECT count(*) FROM contributions WHERE install_id LIKE :p", p=f"{tag}-%")


def is_local(url: str) -> bool:
    return make_url(url).host in ("127.0.0.1", "localhost", "::1")


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


async def test_voting_killed_mid_batch_loses_no_vote_and_counts_none_twice(system):
    stack = system.stack
    ingest = stack.start("ingest", WARP_HTTP_WORKERS="2")
    voting = stack.start("voting", WARP_MAX_BATCH="100")
    await stack.wait_ready()
    load = ContributionLoad([ingest.url], tag="kill").start(limit=3000)

    async def voting_busy() -> bool:
        return len(await counted(system, "kill")) >= 600

    await system.wait_for("voting to be storing votes", voting_busy, timeout=60, every=0.1)
    voting.kill()  # SIGKILL while batches are being stored under load
    at_kill = len(await counted(system, "kill"))
    await asyncio.sleep(1)
    stack.restart(voting)
    await load.finish()
    votes = await settle(system, load)
    print("voting kill -9:", load.account(votes), f"; counted when killed {at_kill}")
    assert voting.exit_codes == [-9]
    assert load.statuses == {"200": 3000}
    assert votes == load.accepted and len(votes) == 3000  # none lost
    assert await contributions_rows(system, "kill") == 3000  # none recorded twice


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs the local RabbitMQ's rabbitmqctl")
async def test_rabbitmq_stopped_under_load_gives_503s_and_loses_nothing(system):
    if not is_local(system.broker_url):
        pytest.skip("the test broker is not the local RabbitMQ")
    stack = system.stack
    ingest = stack.start("ingest")
    stack.start("voting")
    await stack.wait_ready()
    load = ContributionLoad([ingest.url], tag="mq").start()
    started = time.monotonic()
    await asyncio.sleep(3)
    try:
        await asyncio.to_thread(run, "rabbitmqctl", "stop_app")
        down_at = time.monotonic() - started
        await asyncio.sleep(5)
    finally:
        await asyncio.to_thread(run, "rabbitmqctl", "start_app")
    up_at = time.monotonic() - started

    async def ingest_ready_again() -> bool:
        return load.statuses_between(time.monotonic() - started - 1, float("inf")).get("200", 0) > 0

    await system.wait_for("ingest accepting again", ingest_ready_again, timeout=60)
    await asyncio.sleep(3)
    load.stop()
    await load.finish()
    votes = await settle(system, load)
    during = load.statuses_between(down_at + 1, up_at)
    print(
        f"RabbitMQ stopped {down_at:.1f}-{up_at:.1f}s:",
        load.account(votes),
        f"; during the outage {dict(during)}",
    )
    assert during.get("503", 0) > 0 and "200" not in during  # refused while down, nothing accepted
    assert set(load.statuses) <= {"200", "503"}
    assert load.accepted <= votes <= load.sent  # every 2xx counted; nothing counted that was never sent
    assert await contributions_rows(system, "mq") == len(votes)  # each counted once


@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None, reason="needs the local PostgreSQL's pg_ctlcluster"
)
async def test_postgres_restarted_under_load_and_consumers_recover_by_themselves(system):
    if not is_local(system.engine.url.render_as_string(hide_password=False)):
        pytest.skip("the test database is not the local PostgreSQL")
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    stack = system.stack
    ingest = stack.start("ingest")
    voting = stack.start("voting")
    await stack.wait_ready()
    load = ContributionLoad([ingest.url], tag="pg").start()
    await asyncio.sleep(3)
    restarted = time.monotonic()
    await asyncio.to_thread(run, "pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart")
    restart_seconds = time.monotonic() - restarted
    await asyncio.sleep(5)
    load.stop()
    await load.finish()
    votes = await settle(system, load)
    print(f"PostgreSQL restarted ({restart_seconds:.1f}s):", load.account(votes))
    assert ingest.alive and voting.alive  # nobody had to be restarted by hand
    assert set(load.statuses) <= {"200", "503"} and load.statuses["200"] > 0
    assert load.accepted <= votes <= load.sent
    assert await contributions_rows(system, "pg") == len(votes)
    await stack.wait_ready()  # and both say they are healthy again


async def test_a_poison_message_is_dead_lettered_with_a_reason_and_the_rest_flows_on(system):
    stack = system.stack
    ingest = stack.start("ingest")
    stack.start("voting")
    await stack.wait_ready()
    load = ContributionLoad([ingest.url], tag="poison").start(limit=600)
    connection = await aio_pika.connect(system.broker_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(system.topology.events_exchange)
        poison = {
            "poison-not-json": b"{not json",
            "poison-no-fields": b'{"event_type": "contribution.icon_crop", "schema_version": 1}',
        }
        for message_id, body in poison.items():
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id, content_type="application/json"),
                routing_key="contribution.icon_crop",
            )
        await load.finish()
        votes = await settle(system, load)
        dlq = await channel.declare_queue(system.topology.dead_letter_queue("voting"), passive=True)
        reasons = {}
        for _ in range(2):
            message = await dlq.get(timeout=10)
            reasons[message.message_id] = message.headers[DEAD_LETTER_REASON]
            await message.ack()
    print("poison messages:", load.account(votes), f"; dead-lettered {reasons}")
    assert load.statuses == {"200": 600} and votes == load.accepted
    assert "not JSON" in reasons["poison-not-json"]
    assert "install_id: Field required" in reasons["poison-no-fields"]
