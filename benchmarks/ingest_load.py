"""Load benchmark of the ingest service: realistic icon-crop contributions at a fixed concurrency.

    .venv/bin/python benchmarks/ingest_load.py --concurrency 32 --duration 60             # capacity
    .venv/bin/python benchmarks/ingest_load.py --concurrency 32 --duration 60 --rate 1000 # latency at a load

By default it starts its own ingest (uvicorn, --workers 2) against the local RabbitMQ and Postgres, in a
throwaway database and broker namespace with quotas raised, so nothing else is touched. It prints accepted/s,
latency percentiles and errors, then counts the messages in the voting queue: every 2xx must be there.

The client (benchmarks.common.LoadRun) is a minimal keep-alive HTTP/1.1 loop over asyncio streams rather than
httpx or aiohttp: on a 2-core machine the load generator competes with the server for CPU, and a
general-purpose client would spend several times more of it per request than the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    LoadRun,
    add_server_options,
    free_port,
    fresh_database,
    histogram_summary,
    icon_crop,
    namespace,
    service_env,
    start_ingest,
    wait_ready,
    window_p99,
)
from shared.topology import Topology, delete_topology  # noqa: E402


def request_bytes(host: str, index: int, crop_b64: str) -> bytes:
    body = json.dumps(
        {
            "install_id": f"bench-install-{index % 5000:05d}",
            "items": [
                {
                    "slot": "Fore Weapon",
                    "name": f"Item {index % 500}",
                    "crop_png_b64": crop_b64,
                    "ml_name": "",
                }
            ],
        }
    ).encode()
    head = (
        f"POST /contribute/bulk-crops HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def run(args: argparse.Namespace) -> int:
    server = None
    bench_namespace = namespace()
    host, port = "127.0.0.1", args.port or free_port()
    if args.url is None:
        database_url = await fresh_database(args.database_url, "warp_bench")
        env = service_env(database_url, args.broker_url, bench_namespace)
        migrate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "migrations",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await migrate.wait()
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="warp-bench-metrics-")
        server = start_ingest(env, port, args.workers)
        await wait_ready(host, port)
    else:
        host, _, port_text = args.url.removeprefix("http://").partition(":")
        port = int(port_text or 80)
    print(f"generating {args.distinct} distinct 64x64 crops ...", flush=True)
    crops = [base64.b64encode(icon_crop(seed)).decode() for seed in range(args.distinct)]
    requests = [request_bytes(host, i, crops[i % len(crops)]) for i in range(args.distinct * 4)]
    pacing = f"offered {args.rate:.0f} req/s" if args.rate else "closed loop"
    print(
        f"mean base64 crop: {statistics.mean(len(c) for c in crops) / 1024:.1f} KB; {args.concurrency} connections, "
        f"{pacing}, {args.warmup}s warm-up, {args.duration}s measured",
        flush=True,
    )
    try:
        begin = time.monotonic()
        load = LoadRun(
            host,
            port,
            lambda index: requests[index % len(requests)],
            warm_until=begin + args.warmup,
            stop_at=begin + args.warmup + args.duration,
            interval=args.concurrency / args.rate if args.rate else 0.0,
        )
        await asyncio.gather(
            *(load.connection(load.interval * i / args.concurrency) for i in range(args.concurrency))
        )
        warm_until, statuses, latencies, timeline = (
            load.warm_until,
            load.statuses,
            load.latencies,
            load.timeline,
        )
        elapsed = time.monotonic() - warm_until
        accepted = statuses[200]
        latencies.sort()
        errors = {str(k): v for k, v in statuses.items() if k != 200}
        print(f"accepted/s: {accepted / elapsed:.0f}   ({accepted} in {elapsed:.1f}s)")
        print(
            f"latency ms: p50 {1000 * latencies[len(latencies) // 2]:.1f}   "
            f"p90 {1000 * latencies[int(len(latencies) * 0.9)]:.1f}   p99 {1000 * latencies[int(len(latencies) * 0.99)]:.1f}   "
            f"max {1000 * latencies[-1]:.1f}"
        )
        print(f"errors: {errors or 0}")
        if load.send_lags:
            lags = sorted(load.send_lags)
            print(
                f"load generator timer lateness ms (part of the latencies): p50 {1000 * lags[len(lags) // 2]:.1f}"
                f"   p99 {1000 * lags[int(len(lags) * 0.99)]:.1f}   max {1000 * lags[-1]:.1f}"
            )
        print("p99 ms per 10 s:", " ".join(window_p99(timeline, warm_until, 10)))
        for name, shares in (
            await histogram_summary(host, port, ("warp_ingest_quota_seconds", "warp_ingest_publish_seconds"))
        ).items():
            print(f"server {name}: {shares}")
        if server is not None:
            await asyncio.sleep(1)
            topology = Topology(namespace=bench_namespace)
            connection = await aio_pika.connect(args.broker_url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(topology.queue("voting"), passive=True)
                in_queue = queue.declaration_result.message_count
                total_2xx = load.all_statuses[200]
                print(
                    f"messages in the voting queue: {in_queue}  (2xx answered, warm-up included: {total_2xx})"
                )
                await delete_topology(channel, topology)
            return 0 if not errors and in_queue == total_2xx else 1
        return 0 if not errors else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an already running ingest (http://host:port); default: start one")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--rate", type=float, help="offered requests/s in total (open loop); default: as fast as answered"
    )
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the ingest it starts")
    parser.add_argument("--distinct", type=int, default=2000, help="distinct crops to cycle through")
    parser.add_argument("--port", type=int)
    add_server_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
