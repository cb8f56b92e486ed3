"""The console in a real browser (Debian's chromium, headless, through Playwright) against ingest served by
uvicorn, on the test's own database and broker, with the publisher running: log in by keyboard, decide a withheld
item, shadow-ban an install, hold a release and approve it, roll back."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect
from sqlalchemy import text

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.publisher.bootstrap import bootstrap as publisher_bootstrap
from services.publisher.settings import PublisherSettings
from services.voting.bootstrap import bootstrap as voting_bootstrap
from services.voting.settings import VotingSettings
from shared.events import InstallModerated, ItemModerated, decode_event
from tests.console.conftest import seed_community
from tests.ingest.conftest import ADMIN_KEY, crop
from tests.publisher.conftest import trained_event
from tests.utils.broker import wait_for_messages
from tools.console_screenshots import chromium, chromium_missing, served

pytestmark = [pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")]
FIRST, SECOND = "2026-05-01T10:00:00.000000+00:00Z", "2026-05-02T10:00:00.000000+00:00Z"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as running:
        yield running


@pytest_asyncio.fixture
async def base_url(ingest_settings) -> AsyncIterator[str]:
    async with served(create_app(IngestSettings(**ingest_settings))) as url:
        yield url


@pytest_asyncio.fixture
async def page(browser: Browser, base_url: str) -> AsyncIterator[Page]:
    context = await browser.new_context(base_url=base_url)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    yield page
    await context.close()


SHARED = ("broker_url", "database_url", "broker_namespace", "delivery_limit")


@contextlib.asynccontextmanager
async def running(worker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest_asyncio.fixture
async def publisher_worker(ingest_settings, tmp_path) -> AsyncIterator[None]:
    """The publisher consuming this test's queue, releasing to a local Hub directory."""
    shared = {k: ingest_settings[k] for k in SHARED}
    async with running(
        publisher_bootstrap(PublisherSettings(**shared, local_hub_dir=tmp_path / "hub", health_port=0))
    ):
        yield


@pytest_asyncio.fixture
async def voting_worker(ingest_settings) -> AsyncIterator[None]:
    """Voting consuming this test's queue (moderator decisions, bans, contributions), refreshing often."""
    shared = {k: ingest_settings[k] for k in SHARED}
    async with running(voting_bootstrap(VotingSettings(**shared, refresh_seconds=0.3, health_port=0))):
        yield


async def log_in(page: Page) -> None:
    await page.goto("/console/review")
    await expect(page).to_have_url(re.compile(r"/console/login$"))
    await page.get_by_label("Admin key").fill(ADMIN_KEY)
    await page.get_by_label("Admin key").press("Enter")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()


async def reload_until(
    page: Page, what: str, check: Callable[[], Awaitable[bool]], timeout: float = 15
) -> None:
    """Reload the page until ``check`` holds: what the page shows once another service has acted."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"the page never showed {what}"
        await asyncio.sleep(0.2)
        await page.reload()


async def item_status(engine, key: str) -> tuple[str, str | None]:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT status, label FROM consensus WHERE item_key = :k"), {"k": key}
            )
        ).one()
    return row.status, row.label


async def test_log_in_and_review_a_withheld_item(page, engine, amqp_channel, topology):
    """Without voting running: the decision is sent to voting and logged with what the page showed before."""
    community = await seed_community(engine)
    await log_in(page)
    await page.get_by_role("link", name="Review queue").click()
    card = page.locator("article", has_text=community.withheld_key)
    await expect(card.get_by_role("img").first).to_be_visible()
    await card.get_by_label("Label").fill("Phaser Array")
    await card.get_by_label("Note").fill("clear crop")
    await card.get_by_role("button", name="Accept label").click()
    await expect(page.locator("article", has_text=community.withheld_key).locator(".flash")).to_contain_text(
        "Phaser Array"
    )
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    event = decode_event(message.body)
    assert isinstance(event, ItemModerated)
    assert (event.item_key, event.label, event.note) == (community.withheld_key, "Phaser Array", "clear crop")
    async with engine.connect() as connection:
        row = (await connection.execute(text("SELECT * FROM console_audit"))).one()
    assert (row.action, row.message_id, row.before["status"], row.after["label"]) == (
        "item_decided",
        event.message_id,
        "withheld",
        "Phaser Array",
    )


async def test_a_decision_settles_the_item_in_voting_and_the_page_shows_it_accepted(
    page, engine, voting_worker
):
    community = await seed_community(engine)
    await log_in(page)
    await page.goto(f"/console/item?kind=icon&key={community.withheld_key}")
    await page.get_by_label("Label").fill(
        "Disruptor Array"
    )  # the minority's label: the decision outweighs votes
    await page.get_by_role("button", name="Accept label").click()
    heading = page.get_by_role("heading", level=2).first
    await reload_until(page, "the item accepted", lambda: _accepted(heading), timeout=10)
    await expect(heading).to_contain_text("Disruptor Array")
    assert await item_status(engine, community.withheld_key) == ("accepted", "Disruptor Array")


async def _accepted(heading) -> bool:
    return "accepted" in await heading.inner_text()


async def test_shadow_ban_an_install(page, engine, amqp_channel, topology):
    await seed_community(engine)
    await log_in(page)
    await page.get_by_role("link", name="Installs").click()
    row = page.locator("tr", has_text="install-charlie")
    await row.get_by_role("button", name="Shadow-ban").click()
    await expect(page.get_by_role("heading", name="Install install-charlie")).to_be_visible()
    await expect(page.locator(".banned").first).to_have_text("shadow-banned")
    await expect(page.get_by_role("button", name="Unban")).to_be_visible()
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    event = decode_event(message.body)
    assert isinstance(event, InstallModerated) and (event.install_id, event.shadow_banned) == (
        "install-charlie",
        True,
    )


async def test_a_shadow_banned_installs_next_votes_are_ignored(page, engine, base_url, voting_worker):
    community = await seed_community(engine)
    await log_in(page)
    await page.goto("/console/installs/install-charlie")
    await page.get_by_role("button", name="Shadow-ban").click()
    await reload_until(
        page, "voting's record of the ban", lambda: shows(page, "main", "(voting's record)"), timeout=10
    )
    body = {
        "install_id": "install-charlie",
        "items": [{"slot": "Fore Weapon", "name": "Nonsense Array", "crop_png_b64": crop(77)}],
    }
    async with httpx.AsyncClient(base_url=base_url) as client:
        answer = await client.post("/contribute/bulk-crops", json=body)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1  # answered as any client
    new_item = await wait_for_value(
        engine,
        "SELECT c.item_key FROM consensus c JOIN votes v USING (item_kind, item_key) "
        "WHERE v.install_id = 'install-charlie' AND v.label = 'Nonsense Array'",
    )
    assert new_item not in (community.withheld_key, community.accepted_key)
    assert await item_status(engine, new_item) == ("withheld", None)
    await page.goto(f"/console/item?kind=icon&key={new_item}")
    await expect(page.locator("tbody tr", has_text="Nonsense Array").first).to_contain_text("0.00")


async def wait_for_value(engine, sql: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as connection:
            value = await connection.scalar(text(sql))
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"nothing after {timeout} s: {sql}"
        await asyncio.sleep(0.2)


async def shows(page: Page, selector: str, wanted: str) -> bool:
    return wanted in await page.locator(selector).inner_text()


async def test_hold_a_release_approve_it_and_roll_back(page, engine, publisher, publisher_worker):
    await log_in(page)
    await page.get_by_role("link", name="Training & releases").click()
    await page.get_by_label("held for approval").check()
    await page.get_by_role("button", name="Set mode").click()
    await reload_until(page, "the held mode", lambda: shows(page, "#release-mode", "held"))

    first = await trained_event(engine, trained_at=FIRST)
    await publisher.publish(first)
    approve = page.get_by_role("button", name="Approve v20260501-100000-000000")
    await reload_until(page, "the held release", approve.is_visible)
    await approve.click()
    current = page.locator("tr", has_text="v20260501-100000-000000")
    await reload_until(page, "the approved release published", lambda: shows(page, "#releases", "(current)"))
    await expect(current.locator(".status-published")).to_be_visible()

    await page.get_by_label("automatic").check()
    await page.get_by_role("button", name="Set mode").click()
    await reload_until(page, "the automatic mode", lambda: shows(page, "#release-mode", "automatic"))
    await publisher.publish(await trained_event(engine, trained_at=SECOND))
    roll_back = page.get_by_role("button", name="Roll back to v20260501-100000-000000")
    await reload_until(page, "the second release, automatically published", roll_back.is_visible)
    await roll_back.click()
    await reload_until(
        page, "the rollback", lambda: shows(page, "#releases", "rollback of v20260501-100000-000000")
    )
    async with engine.connect() as connection:
        actions = (await connection.scalars(text("SELECT action FROM console_audit ORDER BY id"))).all()
        statuses = dict((await connection.execute(text("SELECT version, status FROM model_versions"))).all())
    assert actions == ["release_mode", "release_approved", "release_mode", "rollback"]
    assert sorted(statuses.values()) == ["published"] * 3
