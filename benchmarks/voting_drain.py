"""Drain benchmark of the voting service: pre-fill its queue, start voting processes, time the drain.

    .venv/bin/python benchmarks/voting_drain.py --contributions 30000 --processes 1
    .venv/bin/python benchmarks/voting_drain.py --contributions 30000 --processes 3   # racing; totals checked

Runs in a throwaway database and broker namespace. The contributions are simulator icon-crop votes (one per
install and crop; 10 % are sent twice, as redeliveries). It prints the drain rate and checks that the votes
table holds exactly the workload's votes, whatever the number of processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import psutil
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, add_server_options, fresh_database, namespace  # noqa: E402
from shared.broker import EventPublisher  # noqa: E402
from shared.db import create_engine  # noqa: E402
from shared.imagekeys import keys_of_png  # noqa: E402
from shared.topology import Topology, declare_topology, delete_topology  # noqa: E402
from tools.simulator.workload import WorkloadSpec, generate, icon_events  # noqa: E402


async def run(args: argparse.Namespace) -> int:
    database_url = await fresh_database(args.database_url, "warp_bench_voting")
    bench_namespace = namespace()
    env = {
        **os.environ,
        "WARP_DATABASE_URL": database_url,
        "WARP_BROKER_URL": args.broker_url,
        "WARP_BROKER_NAMESPACE": bench_namespace,
        "WARP_LOG_LEVEL": "WARNING",
        "WARP_HEALTH_PORT": "0",
    }
    subprocess.run([sys.executable, "-m", "migrations"], cwd=ROOT, env=env, check=True, capture_output=True)
    topology = Topology(namespace=bench_namespace)
    installs = max(150, args.contributions // 100)
    workload = generate(
        WorkloadSpec(installs=installs, mean_labels_per_install=args.contributions / installs * 1.25)
    )
    # as ingest sends them: each icon crop with its identity by pixels and its pHash
    keys = {}
    events = [
        e.model_copy(
            update={
                "pixels_sha256": (k := keys.setdefault(e.crop_sha256, keys_of_png(e.png))).pixels_sha256,
                "phash": k.phash,
            }
        )
        for e in icon_events(workload)[: args.contributions]
    ]
    redelivered = events[::10]
    print(f"pre-filling {len(events)} contributions (+{len(redelivered)} duplicates) ...", flush=True)
    publisher = EventPublisher(args.broker_url, topology)
    await publisher.connect()
    connection = await aio_pika.connect(args.broker_url)
    try:
        batch = events + redelivered
        for start in range(0, len(batch), 1000):
            await asyncio.gather(*(publisher.publish(e) for e in batch[start : start + 1000]))
        channel = await connection.channel()
        await declare_topology(channel, topology)
        queue = await channel.declare_queue(topology.queue("voting"), passive=True)
        total = queue.declaration_result.message_count
        print(f"queue holds {total} messages; starting {args.processes} voting process(es)", flush=True)
        started = time.monotonic()
        workers = [
            subprocess.Popen([sys.executable, "-m", "services.voting"], cwd=ROOT, env=env)
            for _ in range(args.processes)
        ]
        try:
            while True:
                await asyncio.sleep(0.2)
                if dead := [w.returncode for w in workers if w.poll() is not None]:
                    raise SystemExit(f"a voting process exited ({dead}) before the queue drained")
                declared = await channel.declare_queue(topology.queue("voting"), passive=True)
                if declared.declaration_result.message_count == 0:
                    break
            # the last batch may still be committing: wait until the database holds every vote
            engine = create_engine(database_url)
            expected = {(e.install_id, e.pixels_sha256, e.label) for e in events}
            async with engine.connect() as db:
                while (await db.scalar(text("SELECT count(*) FROM votes"))) < len(expected):
                    await asyncio.sleep(0.05)
                elapsed = time.monotonic() - started
                stored = {
                    tuple(r) for r in await db.execute(text("SELECT install_id, item_key, label FROM votes"))
                }
            await engine.dispose()
            # CPU seconds the voting processes spent (start-up included): steadier than the wall clock on a
            # shared machine, whose other core also runs Postgres and RabbitMQ
            cpu = sum(sum(psutil.Process(w.pid).cpu_times()[:2]) for w in workers)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
        print(
            f"drained {total} messages in {elapsed:.1f}s: {total / elapsed:.0f} contributions/s "
            f"({args.processes} process(es), start-up included)"
        )
        print(f"voting CPU: {cpu:.1f} s, {total / cpu:.0f} contributions per CPU-second")
        print(f"votes stored: {len(stored)}; identical to the workload's: {stored == expected}")
        await delete_topology(channel, topology)
        return 0 if stored == expected else 1
    finally:
        await publisher.close()
        await connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contributions", type=int, default=30000)
    parser.add_argument("--processes", type=int, default=1)
    add_server_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
