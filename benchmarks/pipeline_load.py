"""Whole-pipe load benchmark: ingest driven at a fixed rate while voting drains, accept-to-vote latency measured.

    .venv/bin/python benchmarks/pipeline_load.py                                  # 500 req/s for 5 minutes
    .venv/bin/python benchmarks/pipeline_load.py --rate 200 --duration 20         # a quick look
    .venv/bin/python benchmarks/pipeline_load.py --voting 2 --plot var/bench/two_voters.png

It starts the real services as local processes (tools/stack.LocalStack: ingest with --ingest-workers HTTP
workers, --voting voting processes) against the local RabbitMQ and Postgres, in a throwaway database and broker
namespace with quotas raised, and removes them all at the end. The load is open loop (benchmarks.common.LoadRun):
--concurrency keep-alive connections send on a fixed schedule adding up to --rate requests/s. Each request is one
icon contribution to POST /contribute/bulk-crops: a realistic 64x64 crop from a pool of a few hundred, sent once
per install, so every (install, crop) pair is distinct and each 2xx answer must become exactly one vote.

What it measures:
- accepted/s: 2xx answers per second (by arrival time of the answer); errors by status.
- accept-to-vote latency: from the arrival of the 2xx answer at the client to the vote being committed in the
  `votes` table. A task polls the table every 100 ms for rows past the last seq it saw and stamps each row with
  the time its query was sent, so the latency OVER-estimates by at most the poll period (100 ms plus the previous
  query's duration). Both times come from time.monotonic() in this process. A vote committed before its HTTP
  answer arrived counts as 0.
- backlog: every second, the voting queue's ready messages (passive declare's message_count). Messages delivered
  to a voting process but not yet acknowledged (up to its prefetch) are NOT included; the "unvoted" column (2xx
  answers whose vote was not seen yet) is the whole pipe's backlog, the queue's unacked messages included.

Then it waits (up to --drain-timeout) until every accepted contribution is counted as a vote, prints a row per
10 s and the totals, judges the issue's targets (>= 500 accepted/s sustained, p99 accept-to-vote <= 2 s, a
stable backlog; how each is judged is printed with it), and saves a plot of backlog, latency and accepted/s over
time. Exit status 0 only when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import migrations  # noqa: E402
from benchmarks.common import (  # noqa: E402
    LoadRun,
    add_server_options,
    asyncpg_dsn,
    drop_database,
    fresh_database,
    fresh_database_with_history,
    icon_crop,
    namespace,
    service_env,
)
from shared.imagekeys import keys_of_png  # noqa: E402
from shared.topology import Topology, delete_topology  # noqa: E402
from tools.stack import LocalStack  # noqa: E402

TARGET_RATE = 500.0  # accepted/s, sustained
TARGET_P99 = 2.0  # seconds, accept to committed vote
WINDOW = 10.0  # seconds per table row
POLL_INTERVAL = 0.1  # seconds between polls of the votes table
GAP_PATIENCE = 30.0  # seconds a skipped seq is looked for again (a racing batch's, or one never to appear)
DRAIN_LIMIT = 10.0  # seconds after the last answer within which everything must be counted ("stable")
TREND_SHARE = 0.01  # a backlog growing by less than this share of the offered rate per second is "stable"
INSTALL_ID = "pipe-{:07d}"  # fixed width, so a request's Content-Length depends only on its crop


@dataclass
class Pipe:
    """The requests, and what was seen of them: answers, votes, backlog samples (times are time.monotonic())."""

    host: str
    crops: list[tuple[bytes, bytes, str]]  # per crop: request bytes before and after the install id, item key
    waiting: dict[tuple[str, str], float] = field(default_factory=dict)  # accepted, vote not seen yet
    voted_first: dict[tuple[str, str], float] = field(default_factory=dict)  # vote seen, no 2xx answer yet
    counted: set[tuple[str, str]] = field(default_factory=set)
    answers: list[tuple[float, int | str]] = field(default_factory=list)
    votes: list[tuple[float, float]] = field(default_factory=list)  # (seen at, accept-to-vote seconds)
    backlog: list[tuple[float, int, int]] = field(default_factory=list)  # (at, ready in queue, unvoted)
    accepted: int = 0
    before_answer: int = 0  # votes seen before their 2xx answer arrived

    @classmethod
    def build(cls, host: str, pool: int) -> Pipe:
        crops = []
        for seed in range(pool):
            png = icon_crop(seed)
            item = {
                "slot": "Fore Weapon",
                "name": f"Item {seed % 150}",
                "crop_png_b64": base64.b64encode(png).decode(),
                "ml_name": "",
            }
            before, after = '{"install_id": "', f'", "items": [{json.dumps(item)}]}}'
            length = len(before) + len(INSTALL_ID.format(0)) + len(after)
            head = (
                f"POST /contribute/bulk-crops HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n\r\n"
            )
            # voting keys an icon vote by the crop's pixels (shared.imagekeys), not by its PNG's sha256
            crops.append(((head + before).encode(), after.encode(), keys_of_png(png).pixels_sha256))
        return cls(host, crops)

    def key(self, index: int) -> tuple[str, str]:
        """Request ``index`` is crop index % pool from install index // pool: every pair once."""
        install, crop = divmod(index, len(self.crops))
        return INSTALL_ID.format(install), self.crops[crop][2]

    def request(self, index: int) -> bytes:
        install, crop = divmod(index, len(self.crops))
        before, after, _ = self.crops[crop]
        return before + INSTALL_ID.format(install).encode() + after

    def answered(self, index: int, status: int | str, at: float) -> None:
        self.answers.append((at, status))
        if isinstance(status, int) and 200 <= status < 300:
            self.accepted += 1
            key = self.key(index)
            if key in self.voted_first:
                self.voted_first.pop(key)
                self.votes.append((at, 0.0))
                self.before_answer += 1
            else:
                self.waiting[key] = at

    def saw(self, key: tuple[str, str], at: float) -> None:
        if key in self.counted:  # the same vote again (its seq was taken anew)
            return
        self.counted.add(key)
        accepted_at = self.waiting.pop(key, None)
        if accepted_at is None:
            self.voted_first[key] = at
        else:
            self.votes.append((at, at - accepted_at))


async def poll_votes(database_url: str, pipe: Pipe) -> None:
    """Every POLL_INTERVAL, the vote rows past the last seq seen, plus any skipped seqs: a batch committed by
    another voting process may have taken lower seqs and commit later; a seq also stays unused for good when a
    batch rolls back or a conflict updates nothing, hence GAP_PATIENCE."""
    # custom plans: a generic plan of ``seq > $1`` walks the whole seq index (seconds at 10⁷ votes), and the
    # poll's own duration would be counted as latency
    connection = await asyncpg.connect(
        asyncpg_dsn(database_url), server_settings={"plan_cache_mode": "force_custom_plan", "jit": "off"}
    )
    last = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM votes")  # not the preloaded history
    gaps: dict[int, float] = {}
    try:
        while True:
            asked = time.monotonic()
            rows = await connection.fetch(
                "SELECT seq, install_id, item_key FROM votes WHERE seq > $1 OR seq = ANY($2::bigint[]) ORDER BY seq",
                last,
                list(gaps),
            )
            for seq, install_id, item_key in rows:
                if seq <= last:
                    gaps.pop(seq, None)
                else:
                    gaps.update(dict.fromkeys(range(last + 1, seq), asked))
                    last = seq
                pipe.saw((install_id, item_key), asked)
            for seq in [s for s, since in gaps.items() if asked - since > GAP_PATIENCE]:
                del gaps[seq]
            await asyncio.sleep(max(0.0, asked + POLL_INTERVAL - time.monotonic()))
    finally:
        await connection.close()


async def sample_backlog(channel: AbstractChannel, queue_name: str, pipe: Pipe) -> None:
    """Every second: the voting queue's ready messages (unacked ones are not in message_count)."""
    while True:
        at = time.monotonic()
        declared = await channel.declare_queue(queue_name, passive=True)
        pipe.backlog.append((at, declared.declaration_result.message_count, len(pipe.waiting)))
        await asyncio.sleep(max(0.0, at + 1.0 - time.monotonic()))


def check(tasks: list[asyncio.Task]) -> None:
    """Raise what a measuring task died of (otherwise its figures would silently stop)."""
    for task in tasks:
        if task.done():
            task.result()


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else math.nan


def milliseconds(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{1000 * seconds:.0f}"


async def run(args: argparse.Namespace) -> int:
    bench_namespace = namespace()
    database_name = f"warp_{bench_namespace}"
    topology = Topology(namespace=bench_namespace)
    workdir = Path(tempfile.mkdtemp(prefix="warp-pipeline-"))
    print(
        f"database {database_name}, broker namespace {bench_namespace}, service logs in {workdir}", flush=True
    )
    if args.preload_votes:
        print(f"{args.preload_votes:,} votes of history ...", flush=True)
        database_url, how = await fresh_database_with_history(
            args.database_url, database_name, args.preload_votes
        )
        print(how, flush=True)
    else:
        database_url = await fresh_database(args.database_url, database_name)
        await asyncio.to_thread(migrations.upgrade, database_url)
    env = service_env(database_url, args.broker_url, bench_namespace)
    stack = LocalStack(env, workdir)
    broker = await aio_pika.connect(args.broker_url)
    tasks: list[asyncio.Task] = []
    passed = False
    try:
        ingest = stack.start("ingest", WARP_HTTP_WORKERS=str(args.ingest_workers))
        for _ in range(args.voting):  # as compose runs them: consumers, and the refresher apart
            stack.start("voting", WARP_ROLE="consumer" if args.refresher == "apart" else "all")
        if args.refresher == "apart":
            stack.start("voting", WARP_ROLE="refresher")
        await stack.wait_ready()
        host, port = "127.0.0.1", ingest.port
        print(f"generating {args.crops} distinct 64x64 crops ...", flush=True)
        pipe = Pipe.build(host, args.crops)
        channel = await broker.channel()
        tasks = [
            asyncio.create_task(poll_votes(database_url, pipe)),
            asyncio.create_task(sample_backlog(channel, topology.queue("voting"), pipe)),
        ]
        print(
            f"ingest ({args.ingest_workers} workers) and {args.voting} voting process(es) ready "
            f"(refresher {args.refresher}); "
            f"{args.concurrency} connections, offered {args.rate:.0f} req/s for {args.duration:.0f} s",
            flush=True,
        )
        begin = time.monotonic()
        load = LoadRun(
            host,
            port,
            pipe.request,
            warm_until=begin,
            stop_at=begin + args.duration,
            interval=args.concurrency / args.rate,
            answered=pipe.answered,
        )
        await asyncio.gather(
            *(load.connection(load.interval * i / args.concurrency) for i in range(args.concurrency))
        )
        check(tasks)
        last_answer = time.monotonic()
        print(
            f"load done; waiting up to {args.drain_timeout:.0f} s for {len(pipe.waiting)} votes", flush=True
        )
        while pipe.waiting and time.monotonic() - last_answer < args.drain_timeout:
            await asyncio.sleep(POLL_INTERVAL / 2)
            check(tasks)
        drained = time.monotonic() - last_answer if not pipe.waiting else math.nan
        await asyncio.sleep(
            max(0.0, pipe.backlog[-1][0] + 1.05 - time.monotonic())
        )  # one more backlog sample
        end = time.monotonic()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        passed = report(args, pipe, load, begin, last_answer, end, drained)
        plot(args, pipe, begin, begin + args.duration)
        return 0 if passed else 1
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(stack.stop_all)
        with contextlib.suppress(Exception):
            await delete_topology(await broker.channel(), topology)
        await broker.close()
        await drop_database(args.database_url, database_name)
        if passed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"service logs kept in {workdir}")


def report(
    args: argparse.Namespace,
    pipe: Pipe,
    load: LoadRun,
    begin: float,
    last_answer: float,
    end: float,
    drained: float,
) -> bool:
    stop = begin + args.duration
    print(
        f"\nper {WINDOW:.0f} s (latency: accept-to-vote of the votes seen in the window, over-estimated by at most "
        f"the {1000 * POLL_INTERVAL:.0f} ms poll; backlog: ready messages in the voting queue at the window's "
        f"end, unacked not included; unvoted: 2xx answers whose vote was not committed yet)"
    )
    print(
        f"{'t s':>6} {'accepted/s':>10} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'backlog':>8} {'unvoted':>8}"
    )
    window_rates = []
    for number in range(math.ceil((end - begin) / WINDOW)):
        start, finish = begin + number * WINDOW, min(begin + (number + 1) * WINDOW, end)
        answers = [status for at, status in pipe.answers if start <= at < finish]
        accepted = sum(1 for s in answers if isinstance(s, int) and 200 <= s < 300)
        latencies = sorted(latency for at, latency in pipe.votes if start <= at < finish)
        samples = [(ready, unvoted) for at, ready, unvoted in pipe.backlog if at < finish]
        ready, unvoted = samples[-1] if samples else (0, 0)
        if finish <= stop:  # a full window of load
            window_rates.append(accepted / (finish - start))
        phase = "" if start < stop else "  (load over)"
        print(
            f"{finish - begin:6.0f} {accepted / (finish - start):10.0f} {len(answers) - accepted:6d} "
            f"{milliseconds(percentile(latencies, 0.5)):>7} {milliseconds(percentile(latencies, 0.99)):>7} "
            f"{ready:8d} {unvoted:8d}{phase}"
        )

    rate = pipe.accepted / args.duration
    errors = Counter(
        str(status) for _, status in pipe.answers if not (isinstance(status, int) and status < 300)
    )
    latencies = sorted(latency for _, latency in pipe.votes)
    http = sorted(load.latencies)
    readies = [ready for _, ready, _ in pipe.backlog]
    print(
        f"\naccepted/s: {rate:.1f}  ({pipe.accepted} 2xx in {args.duration:.0f} s; offered {args.rate:.0f}/s, "
        f"{len(pipe.answers)} answered)"
    )
    print(f"errors: {dict(errors) or 0}")
    print(
        f"HTTP answer ms (from the scheduled send): p50 {milliseconds(percentile(http, 0.5))}  "
        f"p99 {milliseconds(percentile(http, 0.99))}  max {milliseconds(percentile(http, 1))}"
    )
    print(
        f"accept-to-vote ms (over-estimated by <= {1000 * POLL_INTERVAL:.0f} ms): "
        + "  ".join(f"p{q:g} {milliseconds(percentile(latencies, q / 100))}" for q in (50, 90, 99))
        + f"  max {milliseconds(percentile(latencies, 1))}  ({len(latencies)} votes; "
        f"{pipe.before_answer} committed before their answer arrived, counted as 0)"
    )
    print(f"backlog (ready messages): min {min(readies)}  max {max(readies)}  final {readies[-1]}")
    counted_all = not pipe.waiting
    print(
        f"votes counted: {len(pipe.votes)} of {pipe.accepted} accepted -> "
        f"{'every accepted contribution counted' if counted_all else f'{len(pipe.waiting)} MISSING'}"
        + (
            f", in {drained:.1f} s after the last answer"
            if counted_all
            else f" after {args.drain_timeout:.0f} s"
        )
        + f"; votes without a 2xx answer: {len(pipe.voted_first)}"
    )

    throughput_ok = rate >= 0.99 * TARGET_RATE and min(window_rates, default=0) >= 0.9 * TARGET_RATE
    p99 = percentile(latencies, 0.99)
    latency_ok = counted_all and p99 <= TARGET_P99
    span = min(60.0, args.duration / 2)
    tail = [(at - begin, ready) for at, ready, _ in pipe.backlog if stop - span <= at <= stop]
    trend = (
        statistics.linear_regression([t for t, _ in tail], [r for _, r in tail]).slope
        if len({t for t, _ in tail}) >= 2
        else math.nan
    )
    tail_max = max((r for _, r in tail), default=0)
    bounded = tail_max <= args.rate or trend <= TREND_SHARE * args.rate
    stable_ok = bounded and counted_all and drained <= DRAIN_LIMIT
    passed = throughput_ok and latency_ok and stable_ok and counted_all
    print(
        f"\ntargets ({TARGET_RATE:.0f}/s sustained, p99 accept-to-vote <= {TARGET_P99:g} s, stable backlog):"
    )
    print(
        f"  throughput  {'PASS' if throughput_ok else 'FAIL'}: {rate:.1f} accepted/s overall (needs >= "
        f"{0.99 * TARGET_RATE:.0f}, the target less 1 % for the schedule's edges); slowest full {WINDOW:.0f} s "
        f"window {min(window_rates, default=0):.0f}/s (needs >= {0.9 * TARGET_RATE:.0f})"
    )
    print(
        f"  latency     {'PASS' if latency_ok else 'FAIL'}: p99 {milliseconds(p99)} ms over every vote "
        f"(needs <= {1000 * TARGET_P99:.0f} ms and every accepted contribution counted)"
    )
    print(
        f"  backlog     {'PASS' if stable_ok else 'FAIL'}: over the last {span:.0f} s of load the ready backlog "
        f"peaked at {tail_max} (<= {args.rate:.0f} = 1 s of load counts as bounded) with a trend of "
        f"{trend:+.1f} msgs/s (<= {TREND_SHARE * args.rate:.1f} = {100 * TREND_SHARE:g} % of the offered rate "
        f"counts as not growing); bounded or not growing, and everything counted within {DRAIN_LIMIT:.0f} s of "
        f"the last answer ({'not at all' if math.isnan(drained) else f'{drained:.1f} s'})"
    )
    print(f"  counted     {'PASS' if counted_all else 'FAIL'}: votes counted == accepted")
    minute = min(60.0, args.duration / 2)
    first = sorted(latency for at, latency in pipe.votes if begin <= at < begin + minute)
    last = sorted(latency for at, latency in pipe.votes if stop - minute <= at < stop)
    flat_ok = percentile(last, 0.99) <= max(percentile(first, 0.99), TARGET_P99 / 4)
    passed = passed and flat_ok
    print(
        f"  flat        {'PASS' if flat_ok else 'FAIL'}: p99 accept-to-vote of the last {minute:.0f} s of load "
        f"{milliseconds(percentile(last, 0.99))} ms, of the first {milliseconds(percentile(first, 0.99))} ms "
        f"(the last no higher than the first, or under {1000 * TARGET_P99 / 4:.0f} ms: a refresh costs what "
        f"changed, not the history; {args.preload_votes:,} votes preloaded)"
    )
    if args.rate < TARGET_RATE or args.duration < 300:
        print(f"  (offered {args.rate:.0f}/s for {args.duration:.0f} s: the target is 500/s for 300 s)")
    print(f"{'PASS' if passed else 'FAIL'}")
    return passed


def plot(args: argparse.Namespace, pipe: Pipe, begin: float, stop: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds: dict[int, list[float]] = {}
    for at, latency in pipe.votes:
        seconds.setdefault(int(at - begin), []).append(latency)
    accepted = Counter(
        int(at - begin) for at, status in pipe.answers if isinstance(status, int) and 200 <= status < 300
    )
    figure, (backlog_axes, latency_axes, rate_axes) = plt.subplots(
        3, 1, sharex=True, figsize=(11, 9), height_ratios=(2, 2, 1.3)
    )
    times = [at - begin for at, _, _ in pipe.backlog]
    backlog_axes.plot(times, [r for _, r, _ in pipe.backlog], label="ready in voting queue")
    backlog_axes.plot(
        times, [u for _, _, u in pipe.backlog], label="unvoted (accepted, vote not seen)", alpha=0.7
    )
    backlog_axes.set_ylabel("messages")
    backlog_axes.set_title(
        f"pipeline load: offered {args.rate:.0f} req/s, {args.ingest_workers} ingest workers, "
        f"{args.voting} voting process(es), refresher {args.refresher}"
    )
    ordered = sorted(seconds)
    latency_axes.plot(ordered, [percentile(sorted(seconds[s]), 0.5) for s in ordered], label="p50")
    latency_axes.plot(ordered, [percentile(sorted(seconds[s]), 0.99) for s in ordered], label="p99")
    latency_axes.axhline(TARGET_P99, color="red", linestyle=":", label=f"target p99 {TARGET_P99:g} s")
    latency_axes.set_ylabel("accept-to-vote s\n(per second seen)")
    span = range(0, math.ceil(stop - begin) + 1)
    rate_axes.plot(list(span), [accepted[s] for s in span], label="accepted/s")
    rate_axes.axhline(TARGET_RATE, color="red", linestyle=":", label=f"target {TARGET_RATE:.0f}/s")
    rate_axes.set_ylabel("accepted/s")
    rate_axes.set_xlabel("seconds since the load started")
    for axes in (backlog_axes, latency_axes, rate_axes):
        axes.axvline(stop - begin, color="grey", linestyle="--", linewidth=0.8)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    path = Path(args.plot)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"plot: {path.resolve()}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="offered requests/s in total")
    parser.add_argument("--duration", type=float, default=300, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--ingest-workers", type=int, default=2, help="HTTP worker processes of ingest")
    parser.add_argument("--voting", type=int, default=1, help="voting processes")
    parser.add_argument("--crops", type=int, default=300, help="distinct crops in the pool")
    parser.add_argument(
        "--drain-timeout", type=float, default=60, help="seconds to wait for the last votes after the load"
    )
    parser.add_argument("--plot", default="var/bench/pipeline_load.png")
    parser.add_argument(
        "--refresher",
        choices=["apart", "inline"],
        default="apart",
        help="the consensus refresher in a process of its own (compose's deployment) or in every voting process",
    )
    parser.add_argument(
        "--preload-votes", type=int, default=0, help="votes of history loaded before the load (e.g. 10000000)"
    )
    add_server_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
