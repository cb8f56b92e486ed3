"""See warp-loop work: feed the running system from the simulator through the ingest HTTP API and follow it
until the first (or next) model is published.

    scripts/run.sh                  # in one terminal: the system
    .venv/bin/python -m tools.demo  # in another: contributions -> consensus -> training -> release

It posts a simulated community's icon contributions (ground truth known: a few installs mislabel, one spams)
to ``/contribute/bulk-crops``, then shows what the system does with them: consensus items accepted (read from
Postgres), the training request, every training epoch with its held-out accuracy and the release (events
followed on a queue of its own, bound to the events exchange), and ends with ``GET /model/version`` and where
the published files are. Settings come from the same ``WARP_*`` variables as the services.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aio_pika
import httpx
from sqlalchemy import text

from services.publisher.settings import PublisherSettings
from shared.db import create_engine
from shared.events import ModelPublished, ModelTrained, TrainingProgress, TrainingRequested, decode_event
from shared.settings import load_settings
from tools.simulator.workload import WorkloadSpec, bulk_crops_body, generate, icon_events

FOLLOWED = {
    TrainingRequested.event_type,
    TrainingProgress.event_type,
    ModelTrained.event_type,
    ModelPublished.event_type,
}


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)


async def feed(url: str, spec: WorkloadSpec) -> tuple[int, int]:
    workload = generate(spec)
    events = icon_events(workload)
    accepted = failed = 0
    semaphore = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def post(event) -> None:
            nonlocal accepted, failed
            async with semaphore:
                response = await client.post("/contribute/bulk-crops", json=bulk_crops_body(event))
            if response.status_code == 200 and response.json().get("accepted") == 1:
                accepted += 1
            else:
                failed += 1
                if failed == 1:
                    say(f"ingest answered {response.status_code}: {response.text[:200]}")

        tasks = [asyncio.create_task(post(e)) for e in events]
        say(
            f"sending {len(events)} contributions: {spec.classes} items x {spec.variants} variants, "
            f"{spec.installs} installs (some mislabel, one spams)"
        )
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1)
            say(f"  sent {accepted + failed}/{len(events)}, accepted {accepted}")
        await asyncio.gather(*tasks)
    return accepted, failed


def where_files_are(settings: PublisherSettings) -> str:
    if settings.hf_token is None:
        current = Path(settings.local_hub_dir) / settings.hf_repo_id / "main"
        files = sorted(str(p.relative_to(current)) for p in current.rglob("*") if p.is_file())
        return f"files in {current.resolve()}:\n    " + "\n    ".join(files)
    return f"files on the Hub: {settings.hf_endpoint}/datasets/{settings.hf_repo_id}/tree/main"


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(PublisherSettings)
    topology = settings.topology()
    async with httpx.AsyncClient(base_url=args.url, timeout=10) as client:
        try:
            ready = await client.get("/ready")
        except httpx.HTTPError as error:
            say(
                f"ingest does not answer at {args.url} ({error!r}): start the system first with scripts/run.sh"
            )
            return 1
        if ready.status_code != 200:
            say(f"ingest is not ready: {ready.text}")
            return 1
        before = (await client.get("/model/version")).json()
    say(f"ingest ready at {args.url}; published now: {before.get('version') or 'nothing yet'}")

    connection = await aio_pika.connect_robust(settings.broker_url)
    engine = create_engine(settings.database_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.events_exchange)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for routing_key in FOLLOWED:
            await queue.bind(exchange, routing_key)
        arrived: asyncio.Queue = asyncio.Queue()
        await queue.consume(arrived.put, no_ack=True)

        classes = args.classes
        if before.get("available") and before.get("n_classes", 0) >= classes:
            # same items again would add no new consensus (and so no training): bring new items into play
            classes = before["n_classes"] + 10
            say(f"a model of {before['n_classes']} items is out: simulating {classes} items, 10 of them new")
        spec = WorkloadSpec(
            classes=classes,
            installs=args.installs,
            mean_labels_per_install=args.labels_per_install,
            attacked_class_share=0,
            group_size=0,
            seed=args.seed,
        )
        accepted, failed = await feed(args.url, spec)
        say(f"fed: {accepted} accepted, {failed} not")
        deadline = time.monotonic() + args.timeout
        fed_at = time.monotonic()
        last_count, published, imprints = -1, None, set()
        while published is None:
            if time.monotonic() > deadline:
                say(f"no release within {args.timeout:.0f}s; see the services' logs")
                return 1
            async with engine.connect() as db:
                count = await db.scalar(
                    text("SELECT count(*) FROM consensus WHERE item_kind = 'icon' AND status = 'accepted'")
                )
            if count != last_count:
                say(f"voting: {count} icon crops have an accepted label")
                last_count = count
            try:
                message = await asyncio.wait_for(arrived.get(), timeout=2)
            except TimeoutError:
                continue
            event = decode_event(message.body)
            if isinstance(event, TrainingRequested):
                say(
                    f"voting: training requested ({event.new_labels} new labels, {event.total_labels} in all)"
                )
            elif isinstance(event, TrainingProgress):
                accuracy = "-" if event.val_accuracy is None else f"{event.val_accuracy:.0%}"
                say(
                    f"trainer: {event.model} epoch {event.epoch}: loss {event.train_loss:.3f}, held-out "
                    f"accuracy {accuracy}, {event.elapsed_seconds:.0f}s of {event.deadline_seconds:.0f}s"
                )
            elif isinstance(event, ModelTrained):
                gate = event.metrics.get("quality_gate", {})
                kind = "run finished"
                if event.metrics.get("release") == "imprint":
                    imprints.add(event.run_id)
                    kind = f"imprint release of {len(event.metrics.get('imprinted_crops', {}))} new items"
                say(
                    f"trainer: {kind}, {event.n_classes} classes from {event.n_samples} crops, held-out "
                    f"{event.metrics.get('val_acc', 0):.0%} through the client path; quality gate: "
                    f"{'publish' if event.quality_gate_passed else 'hold back'} ({gate.get('reason', '')})"
                )
            elif isinstance(event, ModelPublished) and event.run_id in imprints:
                say(
                    f"publisher: released {event.version}, the new items imprinted "
                    f"{time.monotonic() - fed_at:.0f}s after the feed; the full training goes on"
                )
            elif isinstance(event, ModelPublished):
                published = event
        async with httpx.AsyncClient(base_url=args.url, timeout=10) as client:
            version = (await client.get("/model/version")).json()
        say(f"publisher: released {published.version} (Hub commit {published.hub_commit[:12]})")
        say(f"GET {args.url}/model/version -> {version}")
        say(where_files_are(settings))
        return 0
    finally:
        await engine.dispose()
        await connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the ingest service")
    parser.add_argument("--classes", type=int, default=20, help="items in the simulated game")
    parser.add_argument("--installs", type=int, default=40, help="players contributing")
    parser.add_argument("--labels-per-install", type=float, default=20)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the release")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
