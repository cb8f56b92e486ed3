"""Helpers the benchmark scripts share: realistic crops, a throwaway database and namespace, a local server,
and the minimal keep-alive HTTP/1.1 load client (``LoadRun``).

The client is a bare loop over asyncio streams rather than httpx or aiohttp: on a 2-core machine the load
generator competes with the server for CPU, and a general-purpose client would spend several times more of it
per request than the server does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent


def icon_crop(seed: int, size: int = 64) -> bytes:
    """A 64x64 game-icon-like PNG (~4-5 KB): a gradient frame, a few coloured shapes, mild sensor noise."""
    rng = np.random.default_rng(seed)
    base = np.linspace(rng.uniform(0, 80), rng.uniform(80, 200), size)[None, :, None]
    pixels = np.broadcast_to(base, (size, size, 3)).copy() * rng.uniform(0.5, 1.0, 3)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 5)):
        box = sorted(rng.integers(4, size - 4, 2)), sorted(rng.integers(4, size - 4, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        xy = (box[0][0], box[1][0], box[0][1] + 2, box[1][1] + 2)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(xy, fill=colour, outline=(255, 255, 255))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-2, 3, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def fresh_database(admin_url: str, name: str) -> str:
    url = make_url(admin_url)
    admin = await asyncpg.connect(
        url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    )
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return url.set(database=name).render_as_string(hide_password=False)


def asyncpg_dsn(database_url: str, database: str | None = None) -> str:
    """A SQLAlchemy URL (postgresql+asyncpg://...) as a DSN for asyncpg.connect, optionally of another database."""
    url = make_url(database_url).set(drivername="postgresql")
    return (url.set(database=database) if database else url).render_as_string(hide_password=False)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop a database made by fresh_database (connections still open to it are ended)."""
    admin = await asyncpg.connect(asyncpg_dsn(admin_url, database="postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def start_ingest(env: dict[str, str], port: int, workers: int) -> subprocess.Popen:
    """The production entry point (services.ingest.serve), on 127.0.0.1:port."""
    settings = {"WARP_HOST": "127.0.0.1", "WARP_PORT": str(port), "WARP_HTTP_WORKERS": str(workers)}
    return subprocess.Popen(
        [sys.executable, "-m", "services.ingest.serve"], cwd=ROOT, env={**os.environ, **env, **settings}
    )


async def wait_ready(host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            if answer.startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"ingest on {host}:{port} not ready after {timeout}s")


def service_env(database_url: str, broker_url: str, broker_namespace: str) -> dict[str, str]:
    """Settings for services under benchmark: their own database and namespace, quotas out of the way."""
    return {
        "WARP_DATABASE_URL": database_url,
        "WARP_BROKER_URL": broker_url,
        "WARP_BROKER_NAMESPACE": broker_namespace,
        "WARP_INSTALL_DAILY_LIMIT": "100000000",
        "WARP_IP_DAILY_LIMIT": "100000000",
        "WARP_LOG_LEVEL": "WARNING",
        "WARP_DATABASE_POOL_SIZE": "10",
    }


def namespace() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


def window_p99(timeline: list[tuple[float, float]], start: float, width: float) -> list[str]:
    """p99 latency in ms of each ``width``-second window of (sent at, latency in s) pairs from ``start``."""
    windows: dict[int, list[float]] = {}
    for sent, latency in timeline:
        windows.setdefault(int((sent - start) // width), []).append(latency)
    return [
        f"{1000 * sorted(v)[min(int(len(v) * 0.99), len(v) - 1)]:.0f}" for _, v in sorted(windows.items())
    ]


async def histogram_summary(host: str, port: int, names: tuple[str, ...]) -> dict[str, str]:
    """Read /metrics and give, per histogram, the share of observations within a few bucket bounds."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    summary = {}
    for name in names:
        buckets = {}
        for line in text.splitlines():
            if line.startswith(f"{name}_bucket{{") and 'le="' in line:
                bound = line.split('le="')[1].split('"')[0]
                buckets[bound] = buckets.get(bound, 0) + float(line.rsplit(" ", 1)[1])
        total = buckets.get("+Inf", 0)
        if total:
            summary[name] = "  ".join(
                f"<={float(b) * 1000:g}ms {100 * buckets[b] / total:.1f}%"
                for b in ("0.005", "0.01", "0.025", "0.05", "0.1")
            )
    return summary


def add_server_options(parser) -> None:
    """--broker-url and --database-url (an admin connection: the benchmark makes its own database)."""
    parser.add_argument(
        "--broker-url", default=os.environ.get("WARP_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "WARP_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        ),
    )


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


@dataclass
class LoadRun:
    """What every connection of one load run shares: the requests, the schedule and the tallies.

    ``request(i)`` gives the bytes of the i-th request (numbered across all connections in send order);
    ``answered(i, status, at)``, if given, is called with each answer and its ``time.monotonic()`` arrival."""

    host: str
    port: int
    request: Callable[[int], bytes]
    warm_until: float
    stop_at: float
    interval: float  # seconds between sends on one connection; 0 = closed loop
    answered: Callable[[int, int | str, float], None] | None = None
    counter: Iterator[int] = field(default_factory=lambda: iter(range(10**12)))
    latencies: list[float] = field(default_factory=list)
    timeline: list[tuple[float, float]] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # after warm-up
    send_lags: list[float] = field(default_factory=list)  # open loop: timer lateness of sends, after warm-up
    all_statuses: Counter = field(default_factory=Counter)  # warm-up included

    async def connection(self, offset: float) -> None:
        """One keep-alive connection. With an interval it sends on a fixed schedule (open loop) and measures
        latency from the scheduled send time, so falling behind shows up as latency instead of hiding (no
        coordinated omission); without one, it sends the next request as soon as the previous is answered."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        scheduled = time.monotonic() + offset
        try:
            while time.monotonic() < self.stop_at:
                index = next(self.counter)
                payload = self.request(index)
                if self.interval:
                    scheduled += self.interval
                    delay = scheduled - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        if scheduled >= self.warm_until:  # the generator's own lateness, not the server's
                            self.send_lags.append(time.monotonic() - scheduled)
                    started = scheduled
                else:
                    started = time.monotonic()
                writer.write(payload)
                try:
                    status: int | str = await read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    status = "connection_error"
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                now = time.monotonic()
                if self.answered is not None:
                    self.answered(index, status, now)
                self.all_statuses[status] += 1
                if started >= self.warm_until:
                    self.statuses[status] += 1
                    if status != "connection_error":
                        self.latencies.append(now - started)
                        self.timeline.append((started, self.latencies[-1]))
        finally:
            writer.close()


# A community's history, loaded set-based: ``votes`` icon votes, 10 per item, from 20,000 installs of 10,000
# origins, each item decided (accepted) and the installs trusted, as a running deployment would hold them.
PRELOAD_INSTALLS = 20_000
PRELOAD_VOTES_PER_ITEM = 10
_PRELOAD = [
    "SET synchronous_commit = off",
    """INSERT INTO contributions (contribution_id, event_type, install_id, item_kind, item_key, payload, occurred_at)
    SELECT 'pre-' || g, 'contribution.icon_crop',
           'pre-install-' || ((g % 10) * 2000 + (g / 10) % 2000), 'icon',
           encode(sha256(('pre' || (g / 10))::bytea), 'hex'), '{}'::jsonb, now() - interval '30 days'
    FROM generate_series(0, $1::bigint - 1) AS g""",
    """INSERT INTO votes (item_kind, item_key, install_id, label, contribution_id, voted_at, origin, model_guess)
    SELECT 'icon', encode(sha256(('pre' || (g / 10))::bytea), 'hex'),
           'pre-install-' || ((g % 10) * 2000 + (g / 10) % 2000), 'Item ' || ((g / 10) % 1000),
           'pre-' || g, now() - interval '30 days',
           md5('origin' || (((g % 10) * 2000 + (g / 10) % 2000) / 2)), 'Item ' || ((g / 10) % 1000)
    FROM generate_series(0, $1::bigint - 1) AS g""",
    """INSERT INTO consensus (item_kind, item_key, label, status, support, confidence, reason, settled_seq)
    SELECT 'icon', item_key, min(label), 'accepted', count(*), 1.0, 'accepted', max(seq)
    FROM votes WHERE item_kind = 'icon' GROUP BY item_key""",
    """INSERT INTO icon_phashes (item_key, phash, band0, band1, band2, band3)
    SELECT key, h, (h & 65535)::int, ((h >> 16) & 65535)::int, ((h >> 32) & 65535)::int, ((h >> 48) & 65535)::int
    FROM (SELECT encode(sha256(('pre' || i)::bytea), 'hex') AS key,
                 ('x' || substr(md5('phash' || i), 1, 16))::bit(64)::bigint AS h
          FROM generate_series(0, $1::bigint / 10 - 1) AS i) AS p""",
    # every item's first image (one stored blob stands for them all: a snapshot copies the references)
    """INSERT INTO blobs (sha256, size, data) VALUES (repeat('0', 64), 0, ''::bytea)""",
    """INSERT INTO item_images (item_kind, item_key, image_sha256)
    SELECT 'icon', encode(sha256(('pre' || i)::bytea), 'hex'), repeat('0', 64)
    FROM generate_series(0, $1::bigint / 10 - 1) AS i""",
    """INSERT INTO install_trust (install_id, weight)
    SELECT 'pre-install-' || i, 0.35 FROM generate_series(0, 19999) AS i""",
    """INSERT INTO known_labels (item_kind, label, source)
    SELECT 'icon', 'Item ' || i, 'published' FROM generate_series(0, 999) AS i""",
]


async def preload_votes(database_url: str, votes: int) -> float:
    """Load ``votes`` votes of history into a migrated database; returns the seconds it took."""
    started = time.monotonic()
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for statement in _PRELOAD:
            await connection.execute(statement, *([votes] if "$1" in statement else []))
        await connection.execute("VACUUM ANALYZE")  # as autovacuum has left a month-old history
    finally:
        await connection.close()
    return time.monotonic() - started


def history_template(votes: int) -> str:
    """The template database that keeps a loaded history: named by its size, the schema's migration head and
    the load's statements, so a changed schema or history is loaded again."""
    from alembic.script import ScriptDirectory

    from migrations import alembic_config

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    digest = hashlib.sha256("\n".join(_PRELOAD).encode()).hexdigest()[:8]
    return f"warp_history_{votes}_{head}_{digest}"


async def fresh_database_with_history(admin_url: str, name: str, votes: int) -> tuple[str, str]:
    """A fresh migrated database ``name`` holding ``votes`` votes of history (``preload_votes``); returns its URL
    and how it was made. The first load of a size is kept as a template database (``history_template``) that
    later runs clone in seconds instead of loading again (ten minutes at 10⁷ votes on a small machine); drop the
    ``warp_history_*`` databases to reclaim their disk."""
    from migrations import upgrade

    template = history_template(votes)
    admin = await asyncpg.connect(asyncpg_dsn(admin_url, database="postgres"))
    try:
        kept = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", template)
    finally:
        await admin.close()
    how = ""
    if not kept:
        url = await fresh_database(admin_url, template)
        await asyncio.to_thread(upgrade, url)
        how = f"loaded in {await preload_votes(url, votes):.0f} s, kept as {template}; "
    started = time.monotonic()
    admin = await asyncpg.connect(asyncpg_dsn(admin_url, database="postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return url, f"{how}cloned from {template} in {time.monotonic() - started:.0f} s"
