"""Regenerate the console's screenshots in docs/console/: a throwaway database (migrated, filled with a small
community: items withheld and accepted with their crops, installs and a suspected cohort, training runs, a
published and a held release, console actions), ingest served by uvicorn on a loopback port, and Debian's
chromium (through Playwright, never a browser download) saving one PNG per page.

    .venv/bin/python -m tools.console_screenshots [--out docs/console]

The servers come from WARP_TEST_DATABASE_URL / WARP_TEST_BROKER_URL (the local ones by default); the database and
the broker namespace it creates are removed afterwards. ``chromium`` and ``served`` are also what the console's
browser tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import asyncpg
import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image, ImageDraw
from playwright.async_api import Browser, async_playwright
from sqlalchemy.engine import make_url

import migrations
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.topology import Topology, declare_topology, delete_topology
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
ADMIN_KEY = "console-screenshots-admin-key-0001"
NOW = datetime.now(UTC).replace(microsecond=0)
LABELS = ["Phaser Array", "Disruptor Array", "Photon Torpedo", "Quantum Torpedo", "Shield Array", "Warp Core"]


def chromium_missing() -> str | None:
    """Why the browser cannot run here (None: it can). Where ``WARP_REQUIRE_BROWSER`` is set (.ci/run) the
    browser tests always run, and fail without it."""
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


def icon_png(seed: int) -> bytes:
    """A 64x64 icon-like crop: a coloured field with a shape, different per seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 90, size=3)
    pixels = np.clip(base + rng.normal(0, 12, size=(64, 64, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(120, 255, size=3))
    box = [int(v) for v in rng.integers(8, 24, size=2)] + [int(v) for v in rng.integers(40, 56, size=2)]
    (draw.ellipse if seed % 2 else draw.rectangle)(box, fill=colour, outline=(240, 240, 240))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def curve_png() -> bytes:
    image = Image.new("RGB", (640, 240), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(40, 200), (620, 200)], fill="gray")
    draw.line([(40, 20), (40, 200)], fill="gray")
    accuracy = [(40 + i * 29, 200 - int(170 * (1 - 0.85 ** (i + 1)))) for i in range(20)]
    loss = [(40 + i * 29, 40 + int(150 * (1 - 0.8 ** (i + 1)))) for i in range(20)]
    draw.line(accuracy, fill=(31, 119, 180), width=3)
    draw.line(loss, fill=(255, 127, 14), width=3)
    draw.text((50, 24), "held-out top-1 (blue), train loss (orange) by minute", fill="black")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def _blob(connection: asyncpg.Connection, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    await connection.execute(
        "INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        sha,
        len(data),
        data,
    )
    return sha


async def seed(dsn: str) -> dict[str, str]:
    """A small community, its training and releases; answers the keys the pages are shot at."""
    connection = await asyncpg.connect(dsn)
    try:
        installs = [
            f"install-{name}" for name in ("aurora", "borealis", "cygnus", "draco", "eridani", "fornax")
        ]
        swarm = [f"swarm-{n:02d}" for n in range(4)]
        origins = {install: f"{i:02x}" * 8 for i, install in enumerate(installs + swarm)}
        origins.update({install: "ee" * 8 for install in swarm})  # the swarm posts from one network
        items = []
        for number in range(8):
            key = f"{number:02x}" * 32
            truth = LABELS[number % len(LABELS)]
            sha = await _blob(connection, icon_png(number))
            voters = installs[: 3 + number % 4]
            ballots = {install: truth for install in voters}
            if number < 3:  # contested: the swarm votes another label
                ballots.update({install: LABELS[(number + 1) % len(LABELS)] for install in swarm})
            for index, (install, label) in enumerate(ballots.items()):
                contribution = f"demo-{number}-{install}"
                at = NOW - timedelta(hours=index * 3 + number)
                payload = {
                    "origin": origins[install],
                    "model_guess": truth if index % 3 else LABELS[0],
                    "label": label,
                }
                await connection.execute(
                    "INSERT INTO contributions (contribution_id, event_type, install_id, item_kind, item_key, "
                    "image_sha256, payload, occurred_at, received_at) VALUES ($1, 'contribution.icon_crop', $2, "
                    "'icon', $3, $4, $5::jsonb, $6, $6)",
                    contribution,
                    install,
                    key,
                    sha,
                    json.dumps(payload),
                    at,
                )
                await connection.execute(
                    "INSERT INTO votes (item_kind, item_key, install_id, label, contribution_id, voted_at, origin, "
                    "model_guess) VALUES ('icon', $1, $2, $3, $4, $5, $6, $7)",
                    key,
                    install,
                    label,
                    contribution,
                    at,
                    payload["origin"],
                    payload["model_guess"],
                )
            status = "withheld" if number < 3 else "accepted"
            await connection.execute(
                "INSERT INTO consensus (item_kind, item_key, label, status, support, confidence) "
                "VALUES ('icon', $1, $2, $3, $4, $5)",
                key,
                None if status == "withheld" else truth,
                status,
                len(ballots),
                0.55 if number < 3 else 0.97,
            )
            items.append(key)
        await connection.execute(
            "INSERT INTO contributions (contribution_id, event_type, install_id, item_kind, item_key, payload, "
            "occurred_at, received_at) SELECT 'bulk-' || g, 'contribution.icon_crop', 'install-aurora', "
            "(ARRAY['icon', 'screen', 'knowledge'])[1 + g % 3], 'bulk-' || g, '{}'::jsonb, t, t "
            "FROM generate_series(1, 3000) AS g, LATERAL (SELECT $1::timestamptz - (g * interval '397 seconds') "
            "* (1 + g % 3) AS t) AS at",
            NOW,
        )
        for index, install in enumerate(installs + swarm):
            cohort = swarm[0] if install in swarm else None
            weight = 0.15 if cohort else 0.95 - index * 0.07
            await connection.execute(
                "INSERT INTO install_trust (install_id, weight, cohort, agree, disagree) VALUES ($1, $2, $3, $4, $5)",
                install,
                weight,
                cohort,
                0 if cohort else 12 - index,
                9 if cohort else index,
            )
        runs = []
        for number, (status, gate) in enumerate((("succeeded", True), ("succeeded", True))):
            snapshot, run = uuid.uuid4(), uuid.uuid4()
            accuracy = 0.88 + 0.03 * number
            metrics = {
                "val_acc": accuracy,
                "published_model_val_acc": accuracy - 0.02,
                "icon_epochs": 14 + number,
                "training_seconds": 540,
                "quality_gate": {
                    "publish": gate,
                    "reason": f"held-out top-1 {accuracy:.3f} >= published - 0.005",
                },
            }
            await connection.execute(
                "INSERT INTO training_snapshots (id, reason, item_count, new_label_count, created_at) "
                "VALUES ($1, 'threshold', 120, 20, $2)",
                snapshot,
                NOW - timedelta(days=2 - number),
            )
            await connection.execute(
                "INSERT INTO training_runs (id, request_message_id, snapshot_id, status, attempts, created_at, "
                "started_at, finished_at, metrics) VALUES ($1, $2, $3, $4, 1, $5, $5, $6, $7::jsonb)",
                run,
                f"demo-request-{number}",
                snapshot,
                status,
                NOW - timedelta(days=2 - number, hours=1),
                NOW - timedelta(days=2 - number),
                json.dumps(metrics),
            )
            per_class = {label: round(0.7 + 0.05 * i, 3) for i, label in enumerate(LABELS)}
            for path, data in (
                ("models/training_curve.png", curve_png()),
                ("models/per_class_accuracy.json", json.dumps(per_class).encode()),
            ):
                await connection.execute(
                    "INSERT INTO model_artifacts (run_id, path, blob_sha256) VALUES ($1, $2, $3)",
                    run,
                    path,
                    await _blob(connection, data),
                )
            trained_at = (NOW - timedelta(days=2 - number)).strftime("%Y-%m-%dT%H:%M:%S.000000+00:00Z")
            version = (
                "v" + trained_at[:10].replace("-", "") + "-" + trained_at[11:19].replace(":", "") + "-000000"
            )
            await connection.execute(
                "INSERT INTO model_versions (version, source_message_id, run_id, snapshot_id, trained_at, status, "
                "metrics, n_classes, n_samples, n_users, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, "
                "$8, 340, 10, $9)",
                version,
                f"demo-trained-{number}",
                run,
                snapshot,
                trained_at,
                "published" if number == 0 else "held",
                json.dumps(metrics),
                len(LABELS),
                NOW - timedelta(days=2 - number),
            )
            runs.append(str(run))
        await connection.execute(
            "INSERT INTO release_mode (id, mode, requested_by) VALUES (1, 'held', 'console-0123456789abcdef')"
        )
        for action, subject, before, after in (
            ("release_mode", "release_mode", {"mode": "automatic"}, {"mode": "held"}),
            (
                "install_moderated",
                "swarm-00",
                {"shadow_banned": None},
                {"shadow_banned": True, "note": "one network"},
            ),
            (
                "item_decided",
                f"icon:{items[3]}",
                {"status": "accepted", "label": LABELS[3]},
                {"item_kind": "icon", "item_key": items[3], "label": LABELS[3], "note": "checked"},
            ),
        ):
            await connection.execute(
                "INSERT INTO console_audit (session, action, subject, before, after, message_id) "
                "VALUES ('console-0123456789abcdef', $1, $2, $3::jsonb, $4::jsonb, $5)",
                action,
                subject,
                json.dumps(before),
                json.dumps(after),
                uuid.uuid4().hex,
            )
        return {"item": items[0], "install": "swarm-01", "run": runs[-1]}
    finally:
        await connection.close()


PAGES = [
    ("login", "/console/login"),
    ("overview", "/console"),
    ("review", "/console/review"),
    ("item", "/console/item?kind=icon&key={item}"),
    ("installs", "/console/installs"),
    ("install", "/console/installs/{install}"),
    ("releases", "/console/releases"),
    ("run", "/console/runs/{run}"),
    ("gold", "/console/gold"),
    ("audit", "/console/audit"),
]


async def shoot(base_url: str, keys: dict[str, str], out: Path) -> list[Path]:
    written = []
    async with chromium() as browser:
        context = await browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        await page.goto("/console/login")
        written.append(out / "login.png")
        await page.screenshot(path=written[-1], full_page=True)
        await page.get_by_label("Admin key").fill(ADMIN_KEY)
        await page.get_by_label("Admin key").press("Enter")
        await page.wait_for_url("**/console")
        for name, path in PAGES[1:]:
            await page.goto(path.format(**keys))
            written.append(out / f"{name}.png")
            await page.screenshot(path=written[-1], full_page=True)
        await context.close()
    return written


async def main(out: Path) -> None:
    if reason := chromium_missing():
        raise SystemExit(reason)
    admin_url = os.environ.get(
        "WARP_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    broker_url = os.environ.get("WARP_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    name = f"warp_console_shots_{uuid.uuid4().hex[:8]}"
    admin_dsn = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    database_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    topology = Topology(namespace=f"shots{uuid.uuid4().hex[:8]}")
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    connection = await aio_pika.connect(broker_url)
    try:
        await declare_topology(await connection.channel(), topology)
        await asyncio.to_thread(migrations.upgrade, database_url)
        keys = await seed(
            make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        settings = IngestSettings(
            database_url=database_url,
            broker_url=broker_url,
            broker_namespace=topology.namespace,
            admin_key=ADMIN_KEY,
            log_level="WARNING",
        )
        out.mkdir(parents=True, exist_ok=True)
        async with served(create_app(settings)) as base_url:
            for path in await shoot(base_url, keys, out):
                print(path)
    finally:
        await delete_topology(await connection.channel(), topology)
        await connection.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/console"), help="where the PNGs go")
    asyncio.run(main(parser.parse_args().out))
