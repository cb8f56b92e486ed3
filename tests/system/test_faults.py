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
from tests.system.conftest import READY_SECONDS, within
from tests.system.load import ContributionLoad

BUSY_SECONDS = SETTLED_SECONDS = RECOVERED_SECONDS = 90
SERVER_COMMAND_SECONDS = 60  # rabbitmqctl, pg_ctlcluster
_COUNTED = text("SELECT install_id, item_key FROM votes WHERE install_id LIKE :p")
_CONTRIBUTIONS = text("SELECT count(*) FROM contributions WHERE install_id LIKE :p")


async def counted(system, tag: str) -> set[tuple[str, str]]:
    async with system.engine.connect() as connection:
        rows = await connection.execute(_COUNTED, {"p": f"{tag}-%"})
        return {(row.install_id, row.item_key) for row in rows}


async def settle(system, load: ContributionLoad) -> tuple[set[tuple[str, str]], int]:
    """Wait until every accepted contribution is a vote; then the votes counted and the contributions stored,
    read in one transaction (voting stores both in one), so the two agree whatever is still in flight."""
    assert load.accepted, f"nothing was accepted, so nothing could be lost: {load.account(set())}"

    async def all_accepted_counted() -> bool:
        return load.accepted <= await counted(system, load.tag)

    await system.wait_for(
        "every accepted contribution counted", all_accepted_counted, timeout=SETTLED_SECONDS
    )
    async with system.engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with connection.begin():
            rows = await connection.execute(_COUNTED, {"p": f"{load.tag}-%"})
            contributions = await connection.scalar(_CONTRIBUTIONS, {"p": f"{load.tag}-%"})
    return {(row.install_id, row.item_key) for row in rows}, contributions


async def answered(
    system, load: ContributionLoad, what: str, status: str, since: float, at_least: int
) -> None:
    """Until ``at_least`` answers with ``status`` came after ``since`` (seconds into the load)."""

    async def enough() -> bool:
        return load.statuses_between(since, float("inf")).get(status, 0) >= at_least

    await system.wait_for(what, enough, timeout=RECOVERED_SECONDS, every=0.1)


def is_local(url: str) -> bool:
    return make_url(url).host in ("127.0.0.1", "localhost", "::1")


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=SERVER_COMMAND_SECONDS)


@within(READY_SECONDS, BUSY_SECONDS, RECOVERED_SECONDS, SETTLED_SECONDS)
async def test_voting_killed_mid_batch_loses_no_vote_and_counts_none_twice(system):
    stack = system.stack
    ingest = stack.start("ingest", WARP_HTTP_WORKERS="2")
    voting = stack.start("voting", WARP_MAX_BATCH="100")
    await stack.wait_ready(timeout=READY_SECONDS)
    load = ContributionLoad([ingest.url], tag="kill").start(limit=3000)

    async def voting_busy() -> bool:
        return len(await counted(system, "kill")) >= 600

    await system.wait_for("voting to be storing votes", voting_busy, timeout=BUSY_SECONDS, every=0.1)
    voting.kill()  # SIGKILL while batches are being stored under load
    at_kill = len(await counted(system, "kill"))

    async def broker_took_its_deliveries_back() -> bool:
        return await system.queue_consumers("voting") == 0

    # the restarted process then gets the killed one's unacknowledged batch again, half stored or not
    await system.wait_for(
        "the broker to drop the killed consumer", broker_took_its_deliveries_back, RECOVERED_SECONDS
    )
    stack.restart(voting)
    await load.finish()
    votes, contributions = await settle(system, load)
    print("voting kill -9:", load.account(votes), f"; counted when killed {at_kill}")
    assert voting.exit_codes == [-9]
    assert load.statuses == {"200": 3000}
    assert votes == load.accepted and len(votes) == 3000  # none lost
    assert contributions == 3000  # none recorded twice


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs the local RabbitMQ's rabbitmqctl")
@within(READY_SECONDS, *[RECOVERED_SECONDS] * 3, *[SERVER_COMMAND_SECONDS] * 2, SETTLED_SECONDS)
async def test_rabbitmq_stopped_under_load_gives_503s_and_loses_nothing(system):
    if not is_local(system.broker_url):
        pytest.skip("the test broker is not the local RabbitMQ")
    stack = system.stack
    ingest = stack.start("ingest")
    stack.start("voting")
    await stack.wait_ready(timeout=READY_SECONDS)
    load = ContributionLoad([ingest.url], tag="mq").start()
    started = time.monotonic()
    await answered(system, load, "contributions accepted before the outage", "200", 0, at_least=200)
    try:
        await asyncio.to_thread(run, "rabbitmqctl", "stop_app")
        down_at = time.monotonic() - started
        await answered(
            system, load, "ingest refusing while RabbitMQ is down", "503", down_at + 1, at_least=100
        )
    finally:
        await asyncio.to_thread(run, "rabbitmqctl", "start_app")
    up_at = time.monotonic() - started
    await answered(system, load, "ingest accepting again", "200", up_at, at_least=200)
    load.stop()
    await load.finish()
    votes, contributions = await settle(system, load)
    during = load.statuses_between(down_at + 1, up_at)
    print(
        f"RabbitMQ stopped {down_at:.1f}-{up_at:.1f}s:",
        load.account(votes),
        f"; during the outage {dict(during)}",
    )
    assert during.get("503", 0) > 0 and "200" not in during  # refused while down, nothing accepted
    assert set(load.statuses) <= {"200", "503"}
    assert load.accepted <= votes <= load.sent  # every 2xx counted; nothing counted that was never sent
    assert contributions == len(votes)  # each counted once


@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None, reason="needs the local PostgreSQL's pg_ctlcluster"
)
@within(READY_SECONDS, *[RECOVERED_SECONDS] * 2, SERVER_COMMAND_SECONDS, SETTLED_SECONDS, READY_SECONDS)
async def test_postgres_restarted_under_load_and_consumers_recover_by_themselves(system):
    if not is_local(system.engine.url.render_as_string(hide_password=False)):
        pytest.skip("the test database is not the local PostgreSQL")
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    stack = system.stack
    ingest = stack.start("ingest")
    voting = stack.start("voting")
    await stack.wait_ready(timeout=READY_SECONDS)
    load = ContributionLoad([ingest.url], tag="pg").start()
    started = time.monotonic()
    await answered(system, load, "contributions accepted before the restart", "200", 0, at_least=200)
    restarted = time.monotonic()
    await asyncio.to_thread(run, "pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart")
    back_at = time.monotonic() - started
    await answered(system, load, "ingest accepting after the restart", "200", back_at, at_least=200)
    load.stop()
    await load.finish()
    votes, contributions = await settle(system, load)
    print(f"PostgreSQL restarted ({back_at - (restarted - started):.1f}s):", load.account(votes))
    assert ingest.alive and voting.alive  # nobody had to be restarted by hand
    assert set(load.statuses) <= {"200", "503"}
    assert load.accepted <= votes <= load.sent
    assert contributions == len(votes)
    await stack.wait_ready(timeout=READY_SECONDS)  # and both say they are healthy again


@within(READY_SECONDS, SETTLED_SECONDS, 2 * 10)
async def test_a_poison_message_is_dead_lettered_with_a_reason_and_the_rest_flows_on(system):
    stack = system.stack
    ingest = stack.start("ingest")
    stack.start("voting")
    await stack.wait_ready(timeout=READY_SECONDS)
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
        votes, _ = await settle(system, load)
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
