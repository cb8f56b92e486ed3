"""What a consensus refresh costs with a long history stored: it must cost what changed, not the history.

Loads ``--votes`` votes of history (``common.preload_votes``: decided items, trusted installs; kept as a template database that later
runs clone), then, ``--rounds``
times: stores ``--new`` new votes through the real store (some on known items, some on new items, from new
installs) and times the refresh that decides them, trust re-estimation included. A refresh that also makes a
training snapshot (the first round's new labels reach ten times the threshold) is reported apart: a snapshot holds
every accepted label, so it costs the accepted items, once per training run.

    python benchmarks/refresh_scale.py --votes 1000000
    python benchmarks/refresh_scale.py --votes 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    add_server_options,
    drop_database,
    fresh_database_with_history,
    icon_crop,
)
from services.voting.bootstrap import bootstrap  # noqa: E402
from services.voting.settings import VotingSettings  # noqa: E402
from shared.blobstore import sha256_hex  # noqa: E402
from shared.db import create_engine  # noqa: E402
from shared.events import IconCropContributed  # noqa: E402


def new_votes(round_: int, count: int, preloaded_items: int) -> list[IconCropContributed]:
    """60 % on items of the history, 40 % on new items (4 votes each), from installs never seen before."""
    png = icon_crop(round_)
    events = []
    for n in range(count):
        if n < count * 0.6:
            item = (n * 7919 + round_ * 104_729) % preloaded_items
            key, label = hashlib.sha256(f"pre{item}".encode()).hexdigest(), f"Item {item % 1000}"
        else:
            item = n // 4
            key, label = hashlib.sha256(f"new{round_}-{item}".encode()).hexdigest(), f"Item {item % 1000}"
        install = f"new-{round_}-{n % 97}"
        events.append(
            IconCropContributed(
                install_id=install,
                origin=hashlib.md5(install.encode()).hexdigest(),
                crop_sha256=sha256_hex(png),
                png=png,
                slot="Fore Weapon",
                label=label,
                model_guess=label,
                pixels_sha256=key,
                phash=key[:16],
                message_id=f"r{round_}-{n}",
            )
        )
    return events


async def run(args: argparse.Namespace) -> None:
    name = f"warp_refresh_scale_{os.getpid()}"
    try:
        print(f"{args.votes:,} votes of history ...", flush=True)
        url, how = await fresh_database_with_history(args.database_url, name, args.votes)
        print(how, flush=True)
        engine = create_engine(url)
        settings = VotingSettings(database_url=url, health_port=0, trust_seconds=0.001)
        voting = bootstrap(settings, engine=engine)
        stores, refreshes, snapshots = [], [], []
        for round_ in range(args.rounds):
            events = new_votes(round_, args.new, args.votes // 10)
            started = time.perf_counter()
            for start in range(0, len(events), settings.max_batch):
                await voting.service.handle(events[start : start + settings.max_batch])
            stored = time.perf_counter()
            outcome = await voting.refresher.refresh()
            done = time.perf_counter()
            stores.append(stored - started)
            (refreshes if outcome.snapshot_id is None else snapshots).append(done - stored)
            made = "" if outcome.snapshot_id is None else "; made a snapshot"
            print(
                f"round {round_}: stored {len(events)} votes in {stored - started:.3f} s; refresh "
                f"{done - stored:.3f} s ({outcome.stats.get('decided')} items decided, "
                f"{outcome.stats.get('changed')} changed, trust {outcome.stats.get('trust')}{made})",
                flush=True,
            )
        if refreshes:
            print(
                f"\n{args.votes:,} votes stored, {args.new} new votes per round: refresh median "
                f"{statistics.median(refreshes):.3f} s, max {max(refreshes):.3f} s (target <= 1 s)"
            )
        if (
            snapshots
        ):  # a snapshot copies every accepted label: it costs the accepted items, once per training
            print(
                f"refreshes that made a snapshot (of every accepted label): "
                f"{', '.join(f'{s:.3f} s' for s in snapshots)}"
            )
        await engine.dispose()
    finally:
        await drop_database(args.database_url, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--votes", type=int, default=1_000_000, help="votes of history to load")
    parser.add_argument("--new", type=int, default=1000, help="new votes per round")
    parser.add_argument("--rounds", type=int, default=5)
    add_server_options(parser)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
