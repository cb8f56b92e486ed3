"""Abuse benchmark of ingest (issue 15): honest clients at a fixed rate while one origin attacks.

    .venv/bin/python benchmarks/abuse.py --duration 20

Starts its own ingest (``services.ingest.serve``) against the local RabbitMQ and Postgres, in a throwaway
database and broker namespace, with 127.0.0.1 as a trusted proxy so that ``X-Forwarded-For`` gives each client
its own address on loopback. Then, for ``--duration`` seconds after a short warm-up:

- honest clients send one-crop bulk contributions at ``--rate`` requests/s (open loop, from many addresses);
- one origin (192.0.2.66) sends expensive rejects as fast as it is answered: requests of 20 near-uniform
  3840x2160 screenshots (each a full decode before it is found uniform), 8192x8192 ones (refused on the
  header), bodies that declare 100 MiB and trickle a byte a second (slow loris), and bodies that declare
  more than any route takes.

It prints the honest clients' p50/p99 latency and errors, what the attacker was answered, and the RSS of the
ingest processes over time. Bounded in count and time, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika  # noqa: E402

from benchmarks.common import (  # noqa: E402
    LoadRun,
    add_server_options,
    drop_database,
    free_port,
    fresh_database,
    icon_crop,
    namespace,
    read_response,
    service_env,
    start_ingest,
    wait_ready,
    window_p99,
)
from shared.topology import Topology, delete_topology  # noqa: E402

ATTACKER = "192.0.2.66"
SLOW_CONNECTIONS = 8
SCREEN_CONNECTIONS = 4


def http_request(path: str, body: bytes, origin: str, declared: int | None = None) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"
        f"X-Forwarded-For: {origin}\r\nContent-Length: {len(body) if declared is None else declared}\r\n\r\n"
    )
    return head.encode() + body


def uniform_screenshot(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 32, 35)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def screens_body(png_b64: str) -> bytes:
    items = [{"png_b64": png_b64}] * 20
    return json.dumps({"install_id": "attacker-0001", "screen_type": "TRAITS", "items": items}).encode()


class Attacker:
    """One origin sending expensive rejects; counts what each kind of attack was answered."""

    def __init__(self, host: str, port: int, stop_at: float) -> None:
        self.host, self.port, self.stop_at = host, port, stop_at
        self.answers: dict[str, Counter] = {"screens": Counter(), "slow": Counter(), "oversized": Counter()}
        four_k, huge = uniform_screenshot(3840, 2160), uniform_screenshot(8192, 8192)
        self.screen_requests = [
            http_request("/upload/screen-types", screens_body(png), ATTACKER) for png in (four_k, huge)
        ]

    async def _closed_loop(self, kind: str, payload: bytes) -> None:
        """Send ``payload`` again as soon as it is answered, on a new connection each time (an answer given
        before the body was read leaves the connection unusable)."""
        while time.monotonic() < self.stop_at:
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(payload)
                status: int | str = await asyncio.wait_for(
                    read_response(reader), self.stop_at - time.monotonic()
                )
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                status = "no answer" if time.monotonic() >= self.stop_at else "closed"
            finally:
                if writer is not None:
                    writer.close()
            self.answers[kind][status] += 1

    async def screens(self, index: int) -> None:
        await self._closed_loop("screens", self.screen_requests[index % 2])

    async def oversized(self) -> None:
        await self._closed_loop("oversized", http_request("/upload/screen-types", b"", ATTACKER, 200 << 20))

    async def slow(self) -> None:
        """A body that declares 100 MiB and trickles a byte a second, until answered; then again."""
        while time.monotonic() < self.stop_at:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(http_request("/upload/screen-types", b"", ATTACKER, 100 << 20))
            trickling = asyncio.create_task(_trickle(writer))
            try:
                status: int | str = await asyncio.wait_for(
                    read_response(reader), self.stop_at - time.monotonic()
                )
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                status = "no answer yet" if time.monotonic() >= self.stop_at else "closed"
            trickling.cancel()
            writer.close()
            if status == "closed":
                await asyncio.sleep(0.1)
            self.answers["slow"][status] += 1


async def _trickle(writer: asyncio.StreamWriter) -> None:
    while True:
        await asyncio.sleep(1)
        writer.write(b" ")
        await writer.drain()


def run_attacker(host: str, port: int, stop_at: float) -> dict[str, Counter]:
    """The attacker's loops until ``stop_at`` (``time.monotonic()``, the same clock in every process), in the
    calling process; what each kind was answered."""

    async def attack() -> dict[str, Counter]:
        attacker = Attacker(host, port, stop_at)
        loops = [attacker.screens(i) for i in range(SCREEN_CONNECTIONS)] + [attacker.oversized()]
        await asyncio.gather(*loops, *(attacker.slow() for _ in range(SLOW_CONNECTIONS)))
        return attacker.answers

    return asyncio.run(attack())


def honest_request(index: int, crops: list[str]) -> bytes:
    item = {"slot": "Fore Weapon", "name": f"Item {index % 500}", "crop_png_b64": crops[index % len(crops)]}
    body = json.dumps({"install_id": f"honest-install-{index % 5000:05d}", "items": [item]}).encode()
    return http_request(
        "/contribute/bulk-crops", body, f"10.{index % 7}.{index // 7 % 250}.{index % 250 + 1}"
    )


def rss_mib(server: psutil.Process) -> float:
    processes = [server, *server.children(recursive=True)]
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / (1 << 20)


async def sample_rss(server: psutil.Process, stop_at: float, every: float, samples: list) -> None:
    begin = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - begin, rss_mib(server)))
        await asyncio.sleep(every)


def percentile(values: list[float], share: float) -> float:
    return 1000 * values[min(int(len(values) * share), len(values) - 1)]


async def run(args: argparse.Namespace) -> int:
    bench_namespace, database = namespace(), "warp_bench_abuse"
    host, port = "127.0.0.1", free_port()
    database_url = await fresh_database(args.database_url, database)
    env = service_env(database_url, args.broker_url, bench_namespace) | {
        "WARP_TRUSTED_PROXIES": "127.0.0.1/32",
        "WARP_BODY_READ_TIMEOUT_SECONDS": str(args.body_timeout),
        "WARP_INSTALL_DAILY_BYTES": str(10**12),
        "WARP_IP_DAILY_BYTES": str(10**12),
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="warp-bench-metrics-"),
    }
    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "migrations", env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL
    )
    await migrate.wait()
    server = start_ingest(env, port, args.workers)
    try:
        await wait_ready(host, port)
        crops = [base64.b64encode(icon_crop(seed)).decode() for seed in range(500)]
        begin = time.monotonic()
        warm_until, stop_at = begin + args.warmup, begin + args.warmup + args.duration
        honest = LoadRun(
            host,
            port,
            lambda index: honest_request(index, crops),
            warm_until=warm_until,
            stop_at=stop_at,
            interval=args.connections / args.rate,
        )
        rss: list[tuple[float, float]] = []
        attack = None
        if not args.no_attack:  # in its own process: its loops must not delay the honest clients' sends
            attack = multiprocessing.get_context("spawn").Pool(1)
            attacked = attack.apply_async(run_attacker, (host, port, stop_at))
        await asyncio.gather(
            *(honest.connection(honest.interval * i / args.connections) for i in range(args.connections)),
            sample_rss(psutil.Process(server.pid), stop_at, 2.0, rss),
        )
        latencies = sorted(honest.latencies)
        errors = {str(k): v for k, v in honest.statuses.items() if k != 200}
        print(
            f"honest clients: offered {args.rate:.0f} req/s for {args.duration:.0f} s over {args.connections} "
            f"connections; answered {sum(honest.statuses.values())}"
        )
        print(
            f"honest latency ms: p50 {percentile(latencies, 0.5):.1f}   p99 {percentile(latencies, 0.99):.1f}"
            f"   max {1000 * latencies[-1]:.1f}"
        )
        print("honest p99 ms per 5 s:", " ".join(window_p99(honest.timeline, warm_until, 5)))
        print(f"honest errors: {errors or 0}")
        if honest.send_lags:
            lags = sorted(honest.send_lags)
            print(
                f"load generator timer lateness ms (part of the latencies): p50 {percentile(lags, 0.5):.1f}"
                f"   p99 {percentile(lags, 0.99):.1f}"
            )
        if attack is not None:
            for kind, answers in attacked.get(timeout=60).items():
                print(f"attacker {kind}: {dict(answers)}")
            attack.close()
        print("ingest RSS MiB (all processes) over time: " + "  ".join(f"{t:.0f}s {m:.0f}" for t, m in rss))
        return 0 if not errors else 1
    finally:
        server.terminate()
        server.wait(timeout=30)
        connection = await aio_pika.connect(args.broker_url)
        async with connection:
            await delete_topology(await connection.channel(), Topology(namespace=bench_namespace))
        await drop_database(args.database_url, database)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rate", type=float, default=500, help="honest requests/s in total")
    parser.add_argument("--connections", type=int, default=16, help="honest keep-alive connections")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--body-timeout", type=float, default=5, help="WARP_BODY_READ_TIMEOUT_SECONDS of ingest"
    )
    parser.add_argument("--no-attack", action="store_true", help="the honest clients alone, for comparison")
    add_server_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
