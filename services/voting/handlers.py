"""Voting's service layer: store a batch of contributions as votes in one transaction, and refresh consensus,
make snapshots and request training (one process at a time, under a Postgres advisory lock)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.voting.domain.consensus import ConsensusParams, ConsensusResult, Vote, robust_consensus
from services.voting.domain.derived import anchor_consensus, cap_screen_types, ocr_corrections
from services.voting.domain.items import Ballot, ballot_of
from services.voting.settings import VotingSettings
from services.voting.tables import consensus_refreshes, training_snapshots
from shared.db import claim_message
from shared.events import Contribution, Event, TrainingForceRequested, TrainingRequested
from shared.outbox import OutboxRelay, enqueue
from shared.processes import exit_with_parent

log = logging.getLogger(__name__)
STORED = Counter(
    "warp_voting_contributions_stored_total", "Contribution events stored (redeliveries included)"
)
REFRESH_SECONDS = Histogram("warp_voting_refresh_seconds", "Duration of a consensus refresh")
ACCEPTED_ITEMS = Gauge("warp_voting_accepted_items", "Items with accepted consensus", ["kind"])
REFRESH_LOCK = 0x57A7_0001  # pg advisory lock key: one consensus refresher at a time across processes
_CONSENSUS_POOL: ProcessPoolExecutor | None = None


def _consensus_pool() -> ProcessPoolExecutor:
    """One worker process per voting process for the consensus computation: it is CPU-bound over every vote
    (seconds at a few hundred thousand), and run on the event loop it stalled the storing of new votes for as
    long (benchmarks/pipeline_load.py: p99 accept-to-vote grew from 0.1 to 2.7 s over 5 minutes)."""
    global _CONSENSUS_POOL
    if _CONSENSUS_POOL is None:
        _CONSENSUS_POOL = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_lower_priority,
            initargs=(os.getpid(),),
        )
    return _CONSENSUS_POOL


def _lower_priority(parent: int) -> None:
    """Storing votes and answering clients come first; consensus can wait for a spare core. The worker also
    stops when its voting process was killed, instead of lingering."""
    os.nice(10)
    exit_with_parent(parent)


def _decide(jobs: list[tuple[str, list[Vote], ConsensusParams]]) -> dict[str, ConsensusResult]:
    return {kind: robust_consensus(votes, params) for kind, votes, params in jobs}


_STORE_BLOBS = """
INSERT INTO blobs (sha256, size, data)
SELECT sha, octet_length(data), data FROM unnest($1::text[], $2::bytea[]) AS v(sha, data)
ON CONFLICT (sha256) DO NOTHING
"""
_STORE_CONTRIBUTIONS = """
INSERT INTO contributions (contribution_id, event_type, install_id, item_kind, item_key, image_sha256, payload, occurred_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::timestamptz[])
ON CONFLICT (contribution_id) DO NOTHING
"""
# Last writer wins by the contribution's time; a redelivery or resend of the same vote changes nothing.
_STORE_VOTES = """
INSERT INTO votes AS v (item_kind, item_key, install_id, label, value, contribution_id, voted_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::timestamptz[])
ON CONFLICT (item_kind, item_key, install_id) DO UPDATE
SET label = excluded.label, value = excluded.value, contribution_id = excluded.contribution_id,
    voted_at = excluded.voted_at, seq = nextval('vote_seq')
WHERE v.voted_at < excluded.voted_at
  AND (v.label IS DISTINCT FROM excluded.label OR v.value IS DISTINCT FROM excluded.value)
"""


class VoteStore:
    """Stores contributions, their images and votes. Safe with several processes: every statement locks its
    rows in sorted key order, so concurrent batches cannot deadlock."""

    def __init__(self, engine: AsyncEngine, known_images: int = 100_000) -> None:
        self._engine = engine
        self._known: OrderedDict[str, None] = OrderedDict()  # images already stored: skip sending their bytes
        self._known_limit = known_images

    async def record(self, events: Sequence[Contribution]) -> None:
        ballots = [(event, ballot_of(event)) for event in events]
        images = {
            b.image_sha256: b.image
            for _, b in ballots
            if b.image_sha256 and b.image_sha256 not in self._known
        }
        contributions = {event.message_id: (event, ballot) for event, ballot in ballots}
        latest: dict[tuple[str, str, str], tuple[Contribution, Ballot]] = {}
        for event, ballot in ballots:
            key = (ballot.item_kind, ballot.item_key, event.install_id)
            held = latest.get(key)
            if held is None or (event.occurred_at, event.message_id) > (
                held[0].occurred_at,
                held[0].message_id,
            ):
                latest[key] = (event, ballot)
        async with self._engine.begin() as connection:
            raw = await _asyncpg(connection)
            if images:
                shas = sorted(images)
                await raw.execute(_STORE_BLOBS, shas, [images[sha] for sha in shas])
            ids = sorted(contributions)
            await raw.execute(
                _STORE_CONTRIBUTIONS,
                ids,
                [contributions[i][0].event_type for i in ids],
                [contributions[i][0].install_id for i in ids],
                [contributions[i][1].item_kind for i in ids],
                [contributions[i][1].item_key for i in ids],
                [contributions[i][1].image_sha256 for i in ids],
                [json.dumps(_payload(contributions[i][0])) for i in ids],
                [contributions[i][0].occurred_at for i in ids],
            )
            keys = sorted(latest)
            await raw.execute(
                _STORE_VOTES,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [latest[k][1].label for k in keys],
                [None if latest[k][1].value is None else json.dumps(latest[k][1].value) for k in keys],
                [latest[k][0].message_id for k in keys],
                [latest[k][0].occurred_at for k in keys],
            )
        STORED.inc(len(events))
        for sha in images:
            self._known[sha] = None
        while len(self._known) > self._known_limit:
            self._known.popitem(last=False)


def _payload(event: Contribution) -> dict:
    return event.model_dump(mode="json", exclude={"png"}) | {"event_type": event.event_type}


async def _asyncpg(connection: AsyncConnection):
    """The asyncpg connection under SQLAlchemy's, for array-parameter statements (one round trip per batch)."""
    raw = await connection.get_raw_connection()
    return raw.driver_connection


@dataclass
class RefreshOutcome:
    refreshed: bool
    snapshot_id: uuid.UUID | None = None
    stats: dict = field(default_factory=dict)


class ConsensusRefresher:
    def __init__(
        self, engine: AsyncEngine, settings: VotingSettings, relay: OutboxRelay | None = None
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._relay = relay
        self.icon_params = ConsensusParams(
            min_posterior=settings.min_posterior, min_support=settings.min_support
        )
        # Screenshots are unique per install and knowledge/OCR keys are often seen by one install: one
        # reliable voter is enough there; contested keys are still withheld.
        self.single_voter_params = ConsensusParams(min_posterior=0.5, min_support=1)

    async def refresh(self, force: TrainingForceRequested | None = None) -> RefreshOutcome:
        """Recompute consensus if votes changed; snapshot and request training when the rules say so.
        Returns without doing anything when another process holds the refresh lock."""
        async with self._engine.connect() as lock_connection:
            if not await lock_connection.scalar(select(func.pg_try_advisory_lock(REFRESH_LOCK))):
                if force is None:
                    return RefreshOutcome(False)
                await lock_connection.scalar(select(func.pg_advisory_lock(REFRESH_LOCK)))
            try:
                with REFRESH_SECONDS.time():
                    return await self._refresh_locked(force)
            finally:
                await lock_connection.scalar(select(func.pg_advisory_unlock(REFRESH_LOCK)))
                await lock_connection.commit()

    async def _refresh_locked(self, force: TrainingForceRequested | None) -> RefreshOutcome:
        async with self._engine.begin() as connection:
            # Every insert or change of a vote takes a new seq, so (count, sum of seq) changes with any of them,
            # even when processes commit their seqs out of order (max(seq) alone would miss those).
            count, seq_sum, last_seq = (
                await connection.execute(
                    text("SELECT count(*), coalesce(sum(seq), 0), coalesce(max(seq), 0) FROM votes")
                )
            ).one()
            fingerprint = f"{count}:{seq_sum}"
            previous = (
                await connection.execute(
                    select(consensus_refreshes.c.stats).order_by(consensus_refreshes.c.id.desc()).limit(1)
                )
            ).scalar()
            unchanged = previous is not None and previous.get("fingerprint") == fingerprint
            if force is None and unchanged and not previous.get("snapshot_pending"):
                return RefreshOutcome(False)
            # Arrival order for consensus is the contribution's acceptance time (seq only says "changed since").
            rows = (
                await connection.execute(
                    text(
                        "SELECT item_kind, item_key, install_id, label, value FROM votes ORDER BY voted_at, seq"
                    )
                )
            ).all()
            accepted, stats = await self._write_consensus(connection, rows)
            snapshot_id, pending = await self._maybe_snapshot(connection, rows, accepted, force)
            stats |= {"fingerprint": fingerprint, "snapshot_pending": pending}
            await connection.execute(consensus_refreshes.insert().values(last_vote_seq=last_seq, stats=stats))
        if snapshot_id and self._relay is not None:
            self._relay.wake()
        return RefreshOutcome(True, snapshot_id, stats)

    async def _write_consensus(self, connection: AsyncConnection, rows) -> tuple[dict[str, dict], dict]:
        by_kind: dict[str, list] = {}
        for row in rows:
            by_kind.setdefault(row.item_kind, []).append(row)
        accepted: dict[str, dict] = {kind: {} for kind in ("icon", "knowledge", "screen", "ocr", "anchor")}
        decided: list[tuple] = []
        stats: dict = {}
        jobs = []
        for kind in ("icon", "knowledge", "screen", "ocr"):
            votes = [
                Vote(r.item_key, r.install_id, r.label, i)
                for i, r in enumerate(by_kind.get(kind, []))
                if r.label is not None
            ]
            jobs.append((kind, votes, self.icon_params if kind == "icon" else self.single_voter_params))
        results = await asyncio.get_running_loop().run_in_executor(_consensus_pool(), _decide, jobs)
        for kind, votes, _ in jobs:
            result = results[kind]
            for item, decision in result.decisions.items():
                status = "accepted" if decision.accepted else "withheld"
                decided.append(
                    (kind, item, decision.label, None, status, decision.support, decision.confidence)
                )
                if decision.accepted:
                    accepted[kind][item] = decision.label
            await self._write_reliability(connection, kind, result, votes)
            ACCEPTED_ITEMS.labels(kind).set(len(accepted[kind]))
            stats[kind] = {
                "items": len(result.decisions),
                "accepted": len(accepted[kind]),
                "cohorts": [sorted(c) for c in result.cohorts],
            }
        groups: dict[str, list[dict]] = {}
        for row in by_kind.get("anchor", []):
            groups.setdefault(row.item_key, []).append(row.value)
        for group, grids in groups.items():
            merged = anchor_consensus(group, grids, self._settings.anchor_min_contributors)
            status = "accepted" if merged else "withheld"
            decided.append(("anchor", group, None, merged, status, len(grids), 1.0 if merged else 0.0))
            if merged:
                accepted["anchor"][group] = merged
        stats["anchor"] = {"items": len(groups), "accepted": len(accepted["anchor"])}
        if decided:
            raw = await _asyncpg(connection)
            decided.sort(key=lambda d: (d[0], d[1]))
            await raw.execute(
                """
                INSERT INTO consensus AS c (item_kind, item_key, label, value, status, support, confidence)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::int[], $7::float8[])
                ON CONFLICT (item_kind, item_key) DO UPDATE
                SET label = excluded.label, value = excluded.value, status = excluded.status,
                    support = excluded.support, confidence = excluded.confidence, updated_at = now()
                WHERE (c.label, c.value, c.status, c.support) IS DISTINCT FROM
                      (excluded.label, excluded.value, excluded.status, excluded.support)
                """,
                [d[0] for d in decided],
                [d[1] for d in decided],
                [d[2] for d in decided],
                [None if d[3] is None else json.dumps(d[3]) for d in decided],
                [d[4] for d in decided],
                [d[5] for d in decided],
                [min(1.0, max(0.0, d[6])) for d in decided],
            )
        return accepted, stats

    @staticmethod
    async def _write_reliability(connection: AsyncConnection, kind: str, result, votes: list[Vote]) -> None:
        if not result.reliability:
            return
        counts: dict[str, int] = {}
        for vote in votes:
            counts[vote.install] = counts.get(vote.install, 0) + 1
        cohort_of = {install: i for i, cohort in enumerate(result.cohorts) for install in cohort}
        installs = sorted(result.reliability)
        raw = await _asyncpg(connection)
        await raw.execute(
            """
            INSERT INTO install_reliability AS r (item_kind, install_id, reliability, votes, cohort)
            SELECT $1, * FROM unnest($2::text[], $3::float8[], $4::int[], $5::int[])
            ON CONFLICT (item_kind, install_id) DO UPDATE
            SET reliability = excluded.reliability, votes = excluded.votes, cohort = excluded.cohort, updated_at = now()
            """,
            kind,
            installs,
            [result.reliability[i] for i in installs],
            [counts.get(i, 0) for i in installs],
            [cohort_of.get(i) for i in installs],
        )

    async def _maybe_snapshot(
        self,
        connection: AsyncConnection,
        rows,
        accepted: dict[str, dict],
        force: TrainingForceRequested | None,
    ) -> tuple[uuid.UUID | None, bool]:
        """(the snapshot made, if any; whether a snapshot is due but deferred, so the next refresh looks again
        even if no vote changed)."""
        if force is not None and not await claim_message(connection, "voting", force.message_id):
            return None, False  # this admin request was already served
        previous = (
            await connection.execute(
                select(training_snapshots.c.id).order_by(training_snapshots.c.created_at.desc()).limit(1)
            )
        ).scalar()
        before: dict[tuple[str, str], str | None] = {}
        if previous is not None:
            for row in await connection.execute(
                text(
                    "SELECT item_kind, item_key, label FROM snapshot_items WHERE snapshot_id = :s AND item_kind IN ('icon', 'screen')"
                ),
                {"s": previous},
            ):
                before[(row.item_kind, row.item_key)] = row.label
        screens = cap_screen_types(accepted["screen"])
        new_icons = sum(1 for key, label in accepted["icon"].items() if before.get(("icon", key)) != label)
        new_screens = sum(1 for key, label in screens.items() if before.get(("screen", key)) != label)
        if force is None:
            if new_icons >= self._settings.training_threshold:
                trigger = "icon_threshold"
            elif new_screens >= self._settings.screen_training_threshold:
                trigger = "screen_threshold"
            else:
                return None, False
            if previous is not None and await self._awaits_training(connection, previous):
                return None, True
            if not await self._quiet_or_overdue(connection, max(new_icons, new_screens)):
                return None, True
        else:
            trigger = "admin"
        snapshot_id = await self._write_snapshot(
            connection, previous, accepted, screens, trigger, new_icons, new_screens
        )
        return snapshot_id, False

    async def _awaits_training(self, connection: AsyncConnection, snapshot_id: uuid.UUID) -> bool:
        """The snapshot still waits: its run is unfinished, or it has none yet and was made recently (a request
        lost on its way, e.g. dead-lettered, must not block training forever)."""
        row = (
            await connection.execute(
                text(
                    "SELECT count(*) FILTER (WHERE r.status IN ('succeeded', 'failed', 'skipped')) AS finished, "
                    "count(r.id) AS runs, s.created_at FROM training_snapshots s "
                    "LEFT JOIN training_runs r ON r.snapshot_id = s.id WHERE s.id = :s GROUP BY s.created_at"
                ),
                {"s": snapshot_id},
            )
        ).one()
        if row.finished:
            return False
        if row.runs:
            return True
        return datetime.now(UTC) - row.created_at < timedelta(hours=self._settings.training_wait_hours)

    async def _quiet_or_overdue(self, connection: AsyncConnection, pending_changes: int) -> bool:
        """Debounce: wait for a burst to end (no vote for the debounce period) unless changes pile up."""
        last_arrival = await connection.scalar(text("SELECT max(received_at) FROM contributions"))
        quiet = last_arrival is None or datetime.now(UTC) - last_arrival >= timedelta(
            seconds=self._settings.training_debounce_seconds
        )
        return quiet or pending_changes >= 10 * self._settings.training_threshold

    async def _write_snapshot(
        self, connection, previous, accepted, screens, trigger, new_icons, new_screens
    ) -> uuid.UUID:
        snapshot_id = uuid.uuid4()
        items: list[tuple] = [("icon", key, label, None, key) for key, label in accepted["icon"].items()]
        items += [("screen", key, label, None, key) for key, label in screens.items()]
        items += [("knowledge", key, label, None, None) for key, label in accepted["knowledge"].items()]
        # derived maps go in their published form: {raw OCR text: corrected name}
        items += [("ocr", raw, fixed, None, None) for raw, fixed in ocr_corrections(accepted["ocr"]).items()]
        items += [("anchor", key, None, value, None) for key, value in accepted["anchor"].items()]
        details = {
            "trigger": trigger,
            "new_icon_labels": new_icons,
            "new_screen_images": new_screens,
            "icon_threshold": self._settings.training_threshold,
            "screen_threshold": self._settings.screen_training_threshold,
            "ocr_corrections": len(ocr_corrections(accepted["ocr"])),
        }
        await connection.execute(
            training_snapshots.insert().values(
                id=snapshot_id,
                parent_id=previous,
                reason="admin" if trigger == "admin" else "threshold",
                item_count=len(items),
                new_label_count=new_icons,
                details=details,
            )
        )
        raw = await _asyncpg(connection)
        items.sort(key=lambda i: (i[0], i[1]))
        await raw.execute(
            """
            INSERT INTO snapshot_items (snapshot_id, item_kind, item_key, label, value, image_sha256)
            SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
            """,
            snapshot_id,
            [i[0] for i in items],
            [i[1] for i in items],
            [i[2] for i in items],
            [None if i[3] is None else json.dumps(i[3]) for i in items],
            [i[4] for i in items],
        )
        await enqueue(
            connection,
            TrainingRequested(
                snapshot_id=snapshot_id,
                reason="admin" if trigger == "admin" else "threshold",
                new_labels=new_icons,
                total_labels=len(accepted["icon"]),
            ),
        )
        log.info(
            "snapshot %s made (%s): %d items, %d new icon labels", snapshot_id, trigger, len(items), new_icons
        )
        return snapshot_id


class VotingService:
    """What the queue consumer calls with each batch."""

    def __init__(self, store: VoteStore, refresher: ConsensusRefresher) -> None:
        self._store = store
        self._refresher = refresher

    async def handle(self, events: list[Event]) -> None:
        contributions = [event for event in events if isinstance(event, Contribution)]
        if contributions:
            await self._store.record(contributions)
        for event in events:
            if isinstance(event, TrainingForceRequested):
                await self._refresher.refresh(force=event)
