"""Contribution workload simulator with ground truth.

    .venv/bin/python -m tools.simulator feed --via http --url http://127.0.0.1:8000
    .venv/bin/python -m tools.simulator feed --via queue              # straight into <ns>.voting
    .venv/bin/python -m tools.simulator check                         # score what the running system decided
    .venv/bin/python -m tools.simulator community --scale small --seed 1   # issue 13's workload, plain majority

``community`` draws the community workload of ``tools/simulator/community.py`` (every contribution kind,
origins, model guesses, attacks) and scores plain majority on it offline; ``benchmarks/consensus_quality.py``
feeds it through the voting service.

``feed`` sends every vote of the workload (in arrival order) through the ingest HTTP API or straight into the
voting queue; ``check`` reads the consensus table and scores it against the same workload's truth.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from services.voting.domain.consensus import Vote, plain_majority
from tools.simulator.workload import (
    WorkloadSpec,
    bulk_crops_body,
    generate,
    icon_events,
    score,
)


def spec_from(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec(
        classes=args.classes,
        installs=args.installs,
        honest_error=args.honest_error,
        spammer_share=args.spammers,
        group_size=args.group,
        attacked_class_share=args.attacked,
        seed=args.seed,
    )


async def feed(args: argparse.Namespace) -> int:
    workload = generate(spec_from(args))
    events = icon_events(workload)
    started = time.perf_counter()
    if args.via == "queue":
        from shared.broker import EventPublisher
        from shared.settings import CommonSettings, load_settings

        settings = load_settings(CommonSettings)
        publisher = EventPublisher(settings.broker_url, settings.topology())
        await publisher.connect()
        try:
            for start in range(0, len(events), 500):
                await asyncio.gather(*(publisher.publish(e) for e in events[start : start + 500]))
        finally:
            await publisher.close()
        sent = len(events)
    else:
        import httpx

        sent = 0
        async with httpx.AsyncClient(base_url=args.url, timeout=30) as client:
            semaphore = asyncio.Semaphore(16)

            async def post(event) -> None:
                nonlocal sent
                async with semaphore:
                    response = await client.post("/contribute/bulk-crops", json=bulk_crops_body(event))
                response.raise_for_status()
                sent += response.json()["accepted"]

            await asyncio.gather(*(post(e) for e in events))
    print(f"fed {sent} contributions via {args.via} in {time.perf_counter() - started:.1f}s")
    return 0


async def check(args: argparse.Namespace) -> int:
    from sqlalchemy import text

    from shared.db import create_engine
    from shared.imagekeys import keys_of_png

    workload = generate(spec_from(args))
    engine = create_engine(
        os.environ.get("WARP_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/warp")
    )
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT item_key, label FROM consensus WHERE item_kind = 'icon' AND status = 'accepted'")
        )
        decided = {row.item_key: row.label for row in rows}
    await engine.dispose()
    # voting keys an icon crop by its pixels as the client's model sees them
    key_of = {
        crop: keys_of_png(workload.crop_png(crop)).pixels_sha256 for crop in {v.crop for v in workload.votes}
    }
    print(score(workload, decided, key=lambda crop: key_of[crop]).row("running system"))
    return 0


def community(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tools.simulator import community as sim

    workload = sim.generate(replace(sim.SCALES[args.scale], seed=args.seed))
    print(sim.describe(workload))
    votes: dict[str, list[Vote]] = {kind: [] for kind in sim.KINDS}
    for seq, event in enumerate(workload.events):
        kind, unit = workload.unit_of(event)
        label = {
            sim.ICON: getattr(event, "label", None),
            sim.KNOWLEDGE: getattr(event, "item_name", None),
            sim.OCR: getattr(event, "corrected_text", None),
            sim.SCREEN: getattr(event, "screen_type", None),
        }[kind]
        votes[kind].append(Vote(unit, event.install_id, label, seq))
    result = sim.score(workload, {kind: plain_majority(kind_votes) for kind, kind_votes in votes.items()})
    for kind in sim.KINDS:
        print(f"plain majority, {kind}: {result[kind]}")
    print(f"plain majority: planted labels accepted {result['planted_total']} of {result['planted_crops']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["feed", "check", "community"])
    parser.add_argument(
        "--scale", choices=["small", "issue"], default="small", help="community workload size"
    )
    parser.add_argument("--via", choices=["http", "queue"], default="http")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--installs", type=int, default=150)
    parser.add_argument("--honest-error", type=float, default=0.08)
    parser.add_argument("--spammers", type=float, default=0.05)
    parser.add_argument("--group", type=int, default=6)
    parser.add_argument("--attacked", type=float, default=0.01, help="share of classes the group attacks")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.command == "community":
        return community(args)
    return asyncio.run(feed(args) if args.command == "feed" else check(args))


if __name__ == "__main__":
    sys.exit(main())
