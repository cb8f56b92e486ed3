"""Debian's chromium, driven by Playwright, against an ingest served by uvicorn on a loopback port: what the
browser tests and ``tools/console_screenshots.py`` use. Never a browser download."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI
from playwright.async_api import Browser, async_playwright

from tools.stack import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_missing() -> str | None:
    """Why the browser tests are skipped here (None: they run). Where ``WARP_REQUIRE_BROWSER`` is set (.ci/run)
    they always run, and fail without the browser."""
    if shutil.which(CHROMIUM) is None and not os.environ.get("WARP_REQUIRE_BROWSER"):
        return f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)"
    return None


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served by uvicorn on 127.0.0.1 in this event loop; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
