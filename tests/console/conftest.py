"""The console on a real ingest (database and broker of the test's own), with a community's records in place."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest_asyncio
from sqlalchemy import insert, text

from services.voting.tables import consensus, contributions, votes
from shared.blobstore import PostgresBlobStore
from tests.ingest.conftest import ADMIN_KEY, Ingest, ingest_settings, running_ingest  # noqa: F401
from tests.utils.images import make_png

ORIGINS = ["a1" * 8, "b2" * 8, "c3" * 8]


@dataclass
class Community:
    """What the seeded records are: a withheld item voted by three installs, an accepted one."""

    withheld_key: str
    accepted_key: str
    installs: list[str]
    crop_sha: str


async def seed_community(engine, *, items_offset: int = 0) -> Community:
    """Three installs (one suspected of a cohort) voting on a withheld icon item (two labels) and an accepted one."""
    installs = ["install-alpha", "install-bravo", "install-charlie"]
    withheld, accepted = f"{'ab' * 32}", f"{'cd' * 32}"
    png = make_png(64, 64, seed=3)
    now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    async with engine.begin() as connection:
        sha = await PostgresBlobStore.put_in(connection, png)
        for number, install in enumerate(installs):
            for key, label in (
                (withheld, "Phaser Array" if number < 2 else "Disruptor Array"),
                (accepted, "Torpedo"),
            ):
                contribution = f"c-{install}-{key[:4]}"
                payload = {"origin": ORIGINS[number], "model_guess": "Phaser Array", "label": label}
                await connection.execute(
                    insert(contributions).values(
                        contribution_id=contribution,
                        event_type="contribution.icon_crop",
                        install_id=install,
                        item_kind="icon",
                        item_key=key,
                        image_sha256=sha,
                        payload=payload,
                        occurred_at=now - timedelta(hours=number),
                        received_at=now - timedelta(hours=number),
                    )
                )
                await connection.execute(
                    insert(votes).values(
                        item_kind="icon",
                        item_key=key,
                        install_id=install,
                        label=label,
                        contribution_id=contribution,
                        voted_at=now - timedelta(hours=number),
                        origin=ORIGINS[number],
                        model_guess="Phaser Array",
                    )
                )
            await add_trust(connection, install, 0.9 - number * 0.3, install if number == 2 else None)
        await connection.execute(
            insert(consensus).values(
                [
                    dict(
                        item_kind="icon",
                        item_key=withheld,
                        label=None,
                        status="withheld",
                        support=3,
                        confidence=0.6,
                    ),
                    dict(
                        item_kind="icon",
                        item_key=accepted,
                        label="Torpedo",
                        status="accepted",
                        support=3,
                        confidence=0.99,
                    ),
                ]
            )
        )
    return Community(withheld, accepted, installs, sha)


async def add_trust(connection, install: str, weight: float, cohort: str | None) -> None:
    await connection.execute(
        text("INSERT INTO install_trust (install_id, weight, cohort) VALUES (:install, :weight, :cohort)"),
        {"install": install, "weight": weight, "cohort": cohort},
    )


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def log_in(client: httpx.AsyncClient, key: str = ADMIN_KEY) -> str:
    """Log in; answer a CSRF token of the session."""
    answer = await client.post("/console/login", data={"admin_key": key})
    assert answer.status_code == 303, answer.text
    page = await client.get("/console/review")
    assert page.status_code == 200
    return csrf_of(page.text)


@pytest_asyncio.fixture
async def console(ingest_settings) -> AsyncIterator[Ingest]:  # noqa: F811
    async with running_ingest(**ingest_settings) as running:
        yield running


def new_id() -> str:
    return uuid.uuid4().hex
