"""The console in a real browser (Debian's chromium, headless, through Playwright) against ingest served by
uvicorn, on the test's own database and broker, with the publisher running: log in by keyboard, decide a withheld
item, shadow-ban an install, hold a release and approve it, roll back."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect
from sqlalchemy import text

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from services.publisher.bootstrap import bootstrap as publisher_bootstrap
from services.publisher.settings import PublisherSettings
from shared.events import InstallModerated, ItemModerated, decode_event
from tests.console.conftest import seed_community
from tests.ingest.conftest import ADMIN_KEY
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


@pytest_asyncio.fixture
async def publisher_worker(ingest_settings, tmp_path) -> AsyncIterator[None]:
    """The publisher consuming this test's queue, releasing to a local Hub directory."""
    settings = PublisherSettings(
        **{
            k: ingest_settings[k]
            for k in ("broker_url", "database_url", "broker_namespace", "delivery_limit")
        },
        local_hub_dir=tmp_path / "hub",
        health_port=0,
    )
    task = asyncio.create_task(publisher_bootstrap(settings).run())
    yield
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


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


async def test_log_in_and_review_a_withheld_item(page, engine, amqp_channel, topology):
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
    assert isinstance(event, ItemModerated) and (event.item_key, event.label) == (
        community.withheld_key,
        "Phaser Array",
    )
    async with engine.connect() as connection:
        row = (await connection.execute(text("SELECT * FROM console_audit"))).one()
    assert (row.action, row.message_id, row.after["label"]) == (
        "item_decided",
        event.message_id,
        "Phaser Array",
    )


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
