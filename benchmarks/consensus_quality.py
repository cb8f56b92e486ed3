"""Quality of the consensus against the community workload (issue 13's targets), beside plain majority.

    .venv/bin/python benchmarks/consensus_quality.py                          # 3 seeds, small scale
    .venv/bin/python benchmarks/consensus_quality.py --scale issue --seeds 1  # 20,000 contributions
    .venv/bin/python benchmarks/consensus_quality.py --json out.json --set min_support=1
    .venv/bin/python benchmarks/consensus_quality.py --workload near_copy_share=0.02 --workload reencoding_builds=0

Per seed: a fresh, migrated database; ``tools.simulator.community`` draws the workload (honest installs,
look-alikes, single-vote and re-encoded crops, spammers, a farming group, 12 planting swarms, an OCR attack, a
screen troll, a moderator settling one screenshot per type); the REAL voting service (``bootstrap``) stores it batch by batch in arrival order, with a
``ConsensusRefresher.refresh()`` every ``--refresh-every`` contributions, as production does, and after the last
one refreshes until one changes nothing (the running service keeps refreshing). Its clock is the simulated time
(the latest contribution's); settings paced by wall-clock seconds (``trust_seconds``) are set so that they are
due at every refresh, since one refresh here stands for hours of the simulated month. The ``consensus`` table
(accepted = status 'accepted') is then scored against the truth, and plain majority is computed from the same
stored votes (most votes per stored item, so under voting's item keys; a tie goes to the label voted first).

The published model (``--no-model`` leaves it out, as before it existed): at each of the workload's model
releases the benchmark publishes a version (a ``model_versions`` row, as the publisher would) trained on a
snapshot of what was accepted then plus a base crop of every item the simulated model knows (the training
data that gives it its classes: ``Workload.model_training``), so its labels become known as a release's do. After every refresh it takes voting's
``model.prediction_requested`` events from the outbox (as the relay would) and answers each with the
``model.predicted`` event the trainer's predictor would send: the workload's ``published_prediction`` per item,
flagged ``trained_on`` when the version's snapshot held it. So voting's real request/answer path is exercised;
only the model itself is simulated.

Item keys are read back, not assumed: an icon crop's row is the one keyed by its ``pixels_sha256`` if voting
stored one, else by its ``crop_sha256``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path
from statistics import mean

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, add_server_options, drop_database, fresh_database, namespace  # noqa: E402
from services.voting.bootstrap import bootstrap  # noqa: E402
from services.voting.domain.consensus import Vote, plain_majority  # noqa: E402
from services.voting.settings import VotingSettings  # noqa: E402
from shared.events import ModelPredicted, Prediction, PredictionRequested, decode_event  # noqa: E402
from tests.utils.rows import add_snapshot, add_version, trained_at  # noqa: E402
from tools.simulator.community import (  # noqa: E402
    ICON,
    KINDS,
    SCALES,
    START,
    WINDOW,
    CommunitySpec,
    Workload,
    describe,
    generate,
    planted_breakdown,
    score,
)

METHODS = ("plain majority", "warp-loop")
# Settings that pace work by wall-clock seconds. A refresh here stands for hours of the simulated month (which
# runs in seconds), so what production would have done between two refreshes is due at every one.
PACED_BY_WALL_TIME = ("trust_seconds",)
SOON = 0.001
# (label, how to read it from a score, target)
ROWS = (
    ("icon labels to training: correct %", lambda s: s["icon"]["correct"], ">= 99.5"),
    ("icon wrong labels accepted", lambda s: s["icon"]["wrong"], "-"),
    ("icon coverage % (single votes incl.)", lambda s: s["icon"]["coverage"], ">= 95"),
    ("icon crops withheld (honest votes on them)", lambda s: s["icon"]["withheld"], "-"),
    ("  of them with a single vote", lambda s: s["icon"]["withheld_one_vote"], "-"),
    ("icon attacked crops correct/withheld %", lambda s: s["icon"]["attacked_safe"], "100"),
    ("planted labels accepted", lambda s: s["planted_total"], "0"),
    ("farming: attacked correct/withheld %", lambda s: s["farming_safe"], ">= 95"),
    ("OCR map correct %", lambda s: s["ocr"]["correct"], ">= 98"),
    ("OCR coverage %", lambda s: s["ocr"]["coverage"], ">= 95"),
    ("OCR attacked keys correct/withheld %", lambda s: s["ocr"]["attacked_safe"], "100"),
    ("knowledge map correct %", lambda s: s["knowledge"]["correct"], ">= 99.5"),
    ("knowledge coverage %", lambda s: s["knowledge"]["coverage"], ">= 95"),
    ("screen labels correct %", lambda s: s["screen"]["correct"], ">= 98"),
    ("screen coverage %", lambda s: s["screen"]["coverage"], "-"),
    ("screen troll's shots correct/withheld %", lambda s: s["screen"]["attacked_safe"], "100"),
)


class SimulatedPredictor:
    """Publishes the workload's model versions when their time comes and answers voting's prediction requests
    (from its outbox) as the trainer's predictor would, with the workload's simulated model."""

    _TRAINED = (
        "SELECT item_kind, item_key, label FROM consensus "
        "WHERE status = 'accepted' AND item_kind IN ('icon', 'screen') AND label IS NOT NULL"
    )
    _TAKE_REQUESTS = (
        "UPDATE outbox SET published_at = now() "
        "WHERE routing_key = 'model.prediction_requested' AND published_at IS NULL RETURNING body"
    )

    def __init__(self, workload: Workload, engine: AsyncEngine) -> None:
        self._workload = workload
        self._engine = engine
        self._pending = list(enumerate(workload.model_releases))
        self._published: tuple[str, set[tuple[str, str]]] | None = None
        self.asked = 0

    async def publish_due(self, now) -> None:
        t = (now - START) / WINDOW
        while self._pending and self._pending[0][1] <= t:
            number, _ = self._pending.pop(0)
            version = f"sim-r{number}"
            async with self._engine.begin() as db:
                items = {(r.item_kind, r.item_key): r.label for r in await db.execute(text(self._TRAINED))}
                for kind, key, label in self._workload.model_training(number):
                    items.setdefault((kind, key), label)
                snapshot = await add_snapshot(
                    db, [(*ref, label, None) for ref, label in sorted(items.items())]
                )
                await add_version(db, version, trained_at=trained_at(number), snapshot_id=snapshot)
            self._published = (version, set(items))

    async def answer(self, now) -> list[ModelPredicted]:
        async with self._engine.begin() as db:
            bodies = (await db.execute(text(self._TAKE_REQUESTS))).scalars().all()
        if not bodies or self._published is None:
            return []
        version, trained = self._published
        t = (now - START) / WINDOW
        answers = []
        for body in bodies:
            request = decode_event(bytes(body))
            assert isinstance(request, PredictionRequested)
            predictions = []
            for item in request.items:
                seen = self._workload.published_prediction(item.item_kind, item.item_key, t)
                label, confidence, ref = seen if seen is not None else (None, 0.0, None)
                predictions.append(
                    Prediction(
                        item_kind=item.item_kind,
                        item_key=item.item_key,
                        label=label,
                        confidence=confidence,
                        trained_on=ref is None or ref in trained,
                    )
                )
            self.asked += len(predictions)
            answers.append(
                ModelPredicted(model_version=version, request_id=request.message_id, predictions=predictions)
            )
        return answers


async def feed(workload: Workload, database_url: str, args: argparse.Namespace) -> dict:
    overrides = {name: SOON for name in PACED_BY_WALL_TIME if name in VotingSettings.model_fields}
    settings = VotingSettings(
        database_url=database_url,
        broker_url=args.broker_url,
        broker_namespace=namespace(),
        training_debounce_seconds=0,
        health_port=0,
        **(overrides | dict(args.set)),
    )
    stream = workload.stream()
    now = [stream[0].occurred_at]  # the service's clock: the time of the latest contribution
    voting = bootstrap(settings, clock=lambda: now[0])
    predictor = None if args.no_model else SimulatedPredictor(workload, voting.engine)
    stored = refreshing = 0.0
    refreshes = since_refresh = 0

    async def refresh() -> bool:
        """One refresh, then the predictions it asked for; whether it changed anything or left work waiting."""
        nonlocal refreshing, refreshes
        began = time.perf_counter()
        outcome = await voting.refresher.refresh()
        refreshing += time.perf_counter() - began
        refreshes += 1
        answered = await predictor.answer(now[0]) if predictor else []
        if answered:
            await voting.service.handle(answered)
        return bool(answered) or (
            outcome.refreshed and bool(outcome.stats.get("changed") or outcome.stats.get("waiting"))
        )

    try:
        step = min(settings.max_batch, args.refresh_every)
        for start in range(0, len(stream), step):
            batch = stream[start : start + step]
            now[0] = batch[-1].occurred_at
            if predictor:
                await predictor.publish_due(now[0])
            began = time.perf_counter()
            await voting.service.handle(batch)
            stored += time.perf_counter() - began
            since_refresh += len(batch)
            if since_refresh >= args.refresh_every:
                await refresh()
                since_refresh = 0
        for _ in range(args.settle):  # the running service keeps refreshing after the last contribution
            if not await refresh():
                break
        async with voting.engine.connect() as db:
            votes = (
                await db.execute(
                    text("SELECT item_kind, item_key, install_id, label FROM votes ORDER BY seq")
                )
            ).all()
            rows = (await db.execute(text("SELECT item_kind, item_key, label, status FROM consensus"))).all()
    finally:
        await voting.engine.dispose()
    return {
        "votes": votes,
        "consensus": rows,
        "timing": {
            "store_s": stored,
            "refresh_s": refreshing,
            "refreshes": refreshes,
            "predicted": predictor.asked if predictor else 0,
        },
    }


def decided_by_unit(
    workload: Workload, stored_keys: set[tuple[str, str]], labels: dict[tuple[str, str], str | None]
) -> tuple[dict[str, dict[str, str | None]], int]:
    """Each scoring unit's accepted label, through the key voting stored it under; and how many units have no
    stored item at all (votes voting did not keep)."""
    decided: dict[str, dict[str, str | None]] = {kind: {} for kind in KINDS}
    missing = 0
    for kind in KINDS:
        for unit in workload.truth[kind]:
            key = unit
            if kind == ICON and (ICON, workload.icon_pixels_key[unit]) in stored_keys:
                key = workload.icon_pixels_key[unit]
            if (kind, key) not in stored_keys:
                missing += 1
            decided[kind][unit] = labels.get((kind, key))
    return decided, missing


def measure(workload: Workload, fed: dict) -> dict:
    stored_keys = {(v.item_kind, v.item_key) for v in fed["votes"]}
    accepted = {(r.item_kind, r.item_key): r.label for r in fed["consensus"] if r.status == "accepted"}
    by_kind = defaultdict(list)
    for seq, v in enumerate(fed["votes"]):
        if v.label is not None:
            by_kind[v.item_kind].append(Vote(v.item_key, v.install_id, v.label, seq))
    majority = {
        (kind, item): label
        for kind, votes in by_kind.items()
        for item, label in plain_majority(votes).items()
    }
    out = {}
    for method, labels in zip(METHODS, (majority, accepted), strict=True):
        decided, missing = decided_by_unit(workload, stored_keys, labels)
        out[method] = score(workload, decided) | {"units_not_stored": missing}
    return out


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table(columns: list[str], scores: list[dict], targets: bool = True) -> str:
    head = ["metric", *(["target"] if targets else []), *columns]
    lines = [head]
    for label, read, target in ROWS:
        lines.append([label, *([target] if targets else []), *(fmt(read(s)) for s in scores)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def mean_score(scores: list[dict]) -> dict:
    """Field-wise mean of scores (None where no seed had a value)."""

    def merge(values: list):
        if isinstance(values[0], dict):
            return {k: merge([v[k] for v in values]) for k in values[0]}
        present = [v for v in values if v is not None]
        return mean(present) if present else None

    return merge(scores)


async def run(args: argparse.Namespace) -> int:
    spec = replace(SCALES[args.scale], **dict(args.workload))
    per_seed = {}
    for seed in args.seeds:
        began = time.perf_counter()
        workload = generate(replace(spec, seed=seed))
        drawn = time.perf_counter() - began
        print(f"seed {seed}: {describe(workload)}; drawn in {drawn:.1f}s", flush=True)
        name = f"warp_bench_quality_{seed}_{os.getpid()}"
        database_url = await fresh_database(args.database_url, name)
        try:
            env = {**os.environ, "WARP_DATABASE_URL": database_url, "WARP_LOG_LEVEL": "WARNING"}
            subprocess.run(
                [sys.executable, "-m", "migrations"], cwd=ROOT, env=env, check=True, capture_output=True
            )
            fed = await feed(workload, database_url, args)
        finally:
            await drop_database(args.database_url, name)
        result = measure(workload, fed)
        result["timing"] = fed["timing"]
        per_seed[seed] = result
        timing = fed["timing"]
        print(
            f"  stored in {timing['store_s']:.1f}s; {timing['refreshes']} refreshes took "
            f"{timing['refresh_s']:.1f}s; {timing['predicted']} items predicted; units with no stored item: "
            f"{result['warp-loop']['units_not_stored']}"
        )
        print(table(list(METHODS), [result[m] for m in METHODS], targets=False))
        for method in METHODS:
            breakdown = planted_breakdown(result[method]["planted"])
            print(
                f"  {method}: planted accepted {result[method]['planted_total']} of "
                f"{result[method]['planted_crops']} planted crops: "
                + ", ".join(f"{k} {v}" for k, v in breakdown.items())
            )
        print(flush=True)
    means = {m: mean_score([per_seed[s][m] for s in args.seeds]) for m in METHODS}
    print(f"mean over seeds {', '.join(map(str, args.seeds))} ({args.scale} scale):")
    print(table(list(METHODS), [means[m] for m in METHODS]))
    for method in METHODS:
        totals = planted_breakdown(
            {k: round(v * len(args.seeds)) for k, v in means[method]["planted"].items()}
        )
        print(f"  {method}: planted accepted, all seeds: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"scale": args.scale, "seeds": per_seed, "mean": means}, indent=2, default=str)
        )
    return 0


def setting(text_value: str) -> tuple[str, str]:
    name, sep, value = text_value.partition("=")
    if not sep or name not in VotingSettings.model_fields:
        raise argparse.ArgumentTypeError(
            f"{text_value!r}: expected NAME=VALUE with a VotingSettings field name"
        )
    return name, value


def workload_field(text_value: str) -> tuple[str, float]:
    name, sep, value = text_value.partition("=")
    kinds = {f.name: f.type for f in fields(CommunitySpec)}
    if not sep or kinds.get(name) not in ("int", "float"):
        raise argparse.ArgumentTypeError(
            f"{text_value!r}: expected NAME=VALUE with a number field of CommunitySpec"
        )
    return name, int(value) if kinds[name] == "int" else float(value)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument(
        "--refresh-every", type=int, default=500, help="contributions stored between consensus refreshes"
    )
    parser.add_argument(
        "--settle",
        type=int,
        default=10,
        help="refreshes after the last contribution, until one changes nothing (at most this many)",
    )
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a voting setting for the run (repeatable), e.g. --set min_support=1",
    )
    parser.add_argument(
        "--workload",
        type=workload_field,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a CommunitySpec field over the scale's (repeatable), e.g. --workload near_copy_share=0.02",
    )
    parser.add_argument(
        "--no-model",
        action="store_true",
        help="no published model: no release, no predictions (voting as before the predictor existed)",
    )
    parser.add_argument("--json", help="also write every figure to this file")
    add_server_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
