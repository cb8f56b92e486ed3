"""Server time of every console page on a database pre-loaded with 10^6 votes on 10^5 items (the issue's target:
<= 300 ms each).

    .venv/bin/python benchmarks/console_pages.py [--votes 1000000 --items 100000 --repeat 5]

Loads a throwaway database server-side (INSERT ... SELECT over generate_series: contributions and votes, one
per vote, spread over 30 days from 10,000 installs; consensus for every item, a tenth withheld and a twentieth
contested; each install's trust; training runs, releases and console actions), then serves ingest in this
process (the ASGI app, no network) and times each page: its first request (the overview counts the whole
14-day window then; later ones only the hours since the last settled one) and ``--repeat`` more (median,
slowest), in ms. ``--keep`` keeps the database for another run (``--reuse NAME`` then skips the load).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import migrations  # noqa: E402
from benchmarks.common import (  # noqa: E402
    add_server_options,
    asyncpg_dsn,
    drop_database,
    fresh_database,
    icon_crop,
    namespace,
)
from services.ingest.app import create_app  # noqa: E402
from services.ingest.settings import IngestSettings  # noqa: E402
from shared.topology import Topology, declare_topology, delete_topology  # noqa: E402

ADMIN_KEY = "console-benchmark-admin-key-0001"
LABELS = 2_000
VOTES_PER_INSTALL = 100


async def load(dsn: str, votes: int, items: int) -> dict[str, str]:
    connection = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        crop = icon_crop(1)
        sha = hashlib.sha256(crop).hexdigest()
        await connection.execute(
            "INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3)", sha, len(crop), crop
        )
        per_item = max(votes // items, 1)
        # vote g: item g % items, install (g // items) + per_item * (item % (installs / per_item)): one vote per
        # (item, install), VOTES_PER_INSTALL votes per install.
        installs = max(votes // VOTES_PER_INSTALL, per_item)
        spread = max(installs // per_item, 1)
        await connection.execute(
            """
            INSERT INTO contributions (contribution_id, event_type, install_id, item_kind, item_key, image_sha256,
                                       payload, occurred_at, received_at)
            SELECT 'c' || g, 'contribution.icon_crop', 'install-' || ((g / $2) + $3 * ((g % $2) % $4)), 'icon',
                   md5((g % $2)::text) || md5((g % $2)::text || 'k'), $5,
                   jsonb_build_object('origin', substr(md5(((g / $2) + $3 * ((g % $2) % $4))::text), 1, 16),
                                      'model_guess', 'label-' || (g % $6)),
                   now() - (g % 2592000) * interval '1 second', now() - (g % 2592000) * interval '1 second'
            FROM generate_series(0, $1 - 1) AS g
            """,
            votes,
            items,
            per_item,
            spread,
            sha,
            LABELS,
        )
        await connection.execute(
            """
            INSERT INTO votes (item_kind, item_key, install_id, label, contribution_id, voted_at, origin, model_guess)
            SELECT item_kind, item_key, install_id, payload->>'model_guess', contribution_id, received_at,
                   payload->>'origin', payload->>'model_guess'
            FROM contributions
            """
        )
        await connection.execute(
            """
            INSERT INTO consensus (item_kind, item_key, label, status, support, confidence)
            SELECT 'icon', md5(i::text) || md5(i::text || 'k'),
                   CASE WHEN i % 10 = 0 THEN NULL ELSE 'label-' || (i % $2) END,
                   CASE WHEN i % 10 = 0 THEN 'withheld' ELSE 'accepted' END, 1 + i % 17,
                   CASE WHEN i % 20 = 1 THEN 0.7 ELSE 0.98 END
            FROM generate_series(0, $1 - 1) AS i
            """,
            items,
            LABELS,
        )
        await connection.execute(
            "INSERT INTO install_trust (install_id, weight, cohort, agree, disagree) "
            "SELECT install_id, 0.5 + random() / 2, CASE WHEN random() < 0.01 THEN 'install-1' END, 3, 1 "
            "FROM (SELECT DISTINCT install_id FROM votes) AS i"
        )
        run_id = uuid.uuid4()
        for number in range(30):
            snapshot, run = uuid.uuid4(), uuid.uuid4() if number else run_id
            metrics = json.dumps({"val_acc": 0.9, "quality_gate": {"publish": True, "reason": "benchmark"}})
            await connection.execute(
                "INSERT INTO training_snapshots (id, reason, item_count, new_label_count) VALUES ($1, 'threshold', 1, 1)",
                snapshot,
            )
            await connection.execute(
                "INSERT INTO training_runs (id, request_message_id, snapshot_id, status, metrics) "
                "VALUES ($1, $2, $3, 'succeeded', $4::jsonb)",
                run,
                f"r{number}",
                snapshot,
                metrics,
            )
            await connection.execute(
                "INSERT INTO model_versions (version, source_message_id, run_id, snapshot_id, trained_at, status, "
                "metrics, n_classes, n_samples, n_users) VALUES ($1, $2, $3, $4, $5, 'published', $6::jsonb, 1, 1, 1)",
                f"v{number:04d}",
                f"m{number}",
                run,
                snapshot,
                f"2026-01-{1 + number:02d}T00:00:00.000000+00:00Z",
                metrics,
            )
        await connection.execute(
            "INSERT INTO console_audit (session, action, subject, after, message_id) "
            "SELECT 'console-bench', 'item_decided', 'icon:' || md5(i::text) || md5(i::text || 'k'), "
            "jsonb_build_object('item_kind', 'icon', 'item_key', md5(i::text) || md5(i::text || 'k'), "
            "'label', 'label-1'), 'a' || i FROM generate_series(0, 9999) AS i"
        )
        await connection.execute("ANALYZE")
        counts = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM votes) AS votes, (SELECT count(*) FROM consensus) AS items, "
            "(SELECT count(DISTINCT install_id) FROM votes) AS installs"
        )
        print(
            f"loaded {counts['votes']:,} votes on {counts['items']:,} items from {counts['installs']:,} installs "
            f"in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        withheld = await connection.fetchval(
            "SELECT item_key FROM consensus WHERE status = 'withheld' LIMIT 1"
        )
        install = await connection.fetchval("SELECT install_id FROM votes LIMIT 1")
        return {"item": withheld, "install": install, "run": str(run_id)}
    finally:
        await connection.close()


PAGES = [
    ("overview", "/console"),
    ("review queue", "/console/review"),
    ("review queue, page 50", "/console/review?page=50"),
    ("item", "/console/item?kind=icon&key={item}"),
    ("installs", "/console/installs"),
    ("installs, search", "/console/installs?q=install-12"),
    ("install", "/console/installs/{install}"),
    ("training and releases", "/console/releases"),
    ("run", "/console/runs/{run}"),
    ("gold set", "/console/gold"),
    ("gold set export (csv)", "/console/gold.csv"),
    ("audit log", "/console/audit"),
]


async def measure(
    settings: IngestSettings, keys: dict[str, str], repeat: int
) -> list[tuple[str, float, float, float]]:
    app = create_app(settings)
    rows = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest", timeout=60) as client:
            assert (await client.post("/console/login", data={"admin_key": ADMIN_KEY})).status_code == 303
            for name, path in PAGES:
                url = path.format(**keys)
                started = time.perf_counter()
                assert (await client.get(url)).status_code == 200, url  # the first: caches are cold
                first = (time.perf_counter() - started) * 1000
                times = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    answer = await client.get(url)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (url, answer.text[:300])
                rows.append((name, first, statistics.median(times), max(times)))
    return rows


async def main(args: argparse.Namespace) -> None:
    name = args.reuse or f"warp_console_bench_{uuid.uuid4().hex[:8]}"
    topology = Topology(namespace=namespace())
    if args.reuse:
        database_url = asyncpg_dsn(args.database_url, name).replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
        connection = await asyncpg.connect(asyncpg_dsn(args.database_url, name))
        keys = {
            "item": await connection.fetchval(
                "SELECT item_key FROM consensus WHERE status = 'withheld' LIMIT 1"
            ),
            "install": await connection.fetchval("SELECT install_id FROM votes LIMIT 1"),
            "run": str(await connection.fetchval("SELECT id FROM training_runs LIMIT 1")),
        }
        await connection.close()
    else:
        database_url = await fresh_database(args.database_url, name)
        await asyncio.to_thread(migrations.upgrade, database_url)
        keys = await load(asyncpg_dsn(database_url), args.votes, args.items)
    broker = await aio_pika.connect(args.broker_url)
    try:
        await declare_topology(await broker.channel(), topology)
        settings = IngestSettings(
            database_url=database_url,
            broker_url=args.broker_url,
            broker_namespace=topology.namespace,
            admin_key=ADMIN_KEY,
            log_level="WARNING",
        )
        rows = await measure(settings, keys, args.repeat)
        print(f"\n| page | first ms | median ms | slowest ms (of {args.repeat} after the first) |")
        print("| --- | --- | --- | --- |")
        for page, first, median, slowest in rows:
            print(f"| {page} | {first:.0f} | {median:.0f} | {slowest:.0f} |")
        over = [page for page, _, median, _ in rows if median > 300]
        print(f"\ntarget <= 300 ms: {'met by every page' if not over else 'missed by ' + ', '.join(over)}")
    finally:
        await delete_topology(await broker.channel(), topology)
        await broker.close()
        if args.keep or args.reuse:
            print(f"database kept: --reuse {name}")
        else:
            await drop_database(args.database_url, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_options(parser)
    parser.add_argument("--votes", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the loaded database")
    parser.add_argument("--reuse", help="a database kept by --keep: skip the load")
    asyncio.run(main(parser.parse_args()))
