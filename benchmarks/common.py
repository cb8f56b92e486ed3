"""Helpers the benchmark scripts share: realistic crops, a throwaway database and namespace, a local server."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
import uuid
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


def namespace() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


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
