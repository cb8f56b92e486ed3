"""All of voting's SQL: storing contributions and votes, the consensus refresh's reads and writes, snapshots
with their training request (outbox), and its reads of the trainer's ``training_runs``.

``VotingStore`` and ``RefreshUnit`` are the protocols the handlers use; ``PostgresVotingStore`` is the real
adapter and ``tests/voting/fakes.py`` an in-memory one."""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.voting.domain.items import BallotBatch
from services.voting.domain.snapshots import NewSnapshot, PreviousSnapshot
from services.voting.domain.tally import InstallReliability, ItemConsensus, StoredVote
from services.voting.tables import consensus_refreshes, training_snapshots
from shared import db, reads
from shared.events import Contribution, TrainingRequested
from shared.outbox import enqueue

REFRESH_LOCK = 0x57A7_0001  # pg advisory lock key: one consensus refresher at a time across processes
CONSUMER = "voting"


class RefreshUnit(Protocol):
    """One consensus refresh's reads and writes, in one transaction."""

    async def vote_fingerprint(self) -> tuple[str, int]:
        """(a fingerprint that changes with any vote insert or change, the highest vote seq)."""

    async def last_refresh_stats(self) -> dict[str, Any] | None: ...

    async def votes(self) -> list[StoredVote]:
        """Every vote, in arrival order."""

    async def write_consensus(self, items: Sequence[ItemConsensus]) -> None: ...

    async def write_reliability(self, kind: str, installs: Sequence[InstallReliability]) -> None: ...

    async def claim_message(self, message_id: str) -> bool:
        """False when this message was served before."""

    async def latest_snapshot(self) -> PreviousSnapshot | None: ...

    async def snapshot_labels(self, snapshot_id: Any) -> dict[tuple[str, str], str | None]: ...

    async def last_arrival(self) -> datetime | None:
        """When the latest contribution was received."""

    async def write_snapshot(self, snapshot: NewSnapshot, request: TrainingRequested) -> None:
        """The snapshot, its items, and its training request in the outbox."""

    async def log_refresh(self, last_vote_seq: int, stats: dict[str, Any]) -> None: ...


class VotingStore(Protocol):
    async def record(self, batch: BallotBatch) -> None:
        """Store a batch's images, contributions and votes in one transaction."""

    def refresh_lock(self, *, wait: bool) -> contextlib.AbstractAsyncContextManager[bool]:
        """Yields whether this process holds the refresh lock (``wait``: until it does)."""

    def refresh(self) -> contextlib.AbstractAsyncContextManager[RefreshUnit]:
        """A transaction for one refresh: committed when the block ends without an error."""


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
# Every insert or change of a vote takes a new seq, so (count, sum of seq) changes with any of them, even when
# processes commit their seqs out of order (max(seq) alone would miss those).
_FINGERPRINT = text("SELECT count(*), coalesce(sum(seq), 0), coalesce(max(seq), 0) FROM votes")
# Arrival order for consensus is the contribution's acceptance time (seq only says "changed since").
_VOTES = text("SELECT item_kind, item_key, install_id, label, value FROM votes ORDER BY voted_at, seq")
_UPSERT_CONSENSUS = """
INSERT INTO consensus AS c (item_kind, item_key, label, value, status, support, confidence)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::int[], $7::float8[])
ON CONFLICT (item_kind, item_key) DO UPDATE
SET label = excluded.label, value = excluded.value, status = excluded.status,
    support = excluded.support, confidence = excluded.confidence, updated_at = now()
WHERE (c.label, c.value, c.status, c.support) IS DISTINCT FROM
      (excluded.label, excluded.value, excluded.status, excluded.support)
"""
_UPSERT_RELIABILITY = """
INSERT INTO install_reliability AS r (item_kind, install_id, reliability, votes, cohort)
SELECT $1, * FROM unnest($2::text[], $3::float8[], $4::int[], $5::int[])
ON CONFLICT (item_kind, install_id) DO UPDATE
SET reliability = excluded.reliability, votes = excluded.votes, cohort = excluded.cohort, updated_at = now()
"""
# The trainer's runs of a snapshot (its ``training_runs``): voting lets one snapshot at a time wait for them.
_LATEST_SNAPSHOT = text(
    "SELECT s.id, s.created_at, count(r.id) AS runs, "
    "count(*) FILTER (WHERE r.status = ANY(:finished)) AS finished_runs FROM training_snapshots s "
    "LEFT JOIN training_runs r ON r.snapshot_id = s.id "
    "WHERE s.id = (SELECT id FROM training_snapshots ORDER BY created_at DESC LIMIT 1) GROUP BY s.id, s.created_at"
)
_LAST_ARRIVAL = text("SELECT max(received_at) FROM contributions")
_STORE_SNAPSHOT_ITEMS = """
INSERT INTO snapshot_items (snapshot_id, item_kind, item_key, label, value, image_sha256)
SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
"""


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _payload(event: Contribution) -> dict:
    return event.model_dump(mode="json", exclude={"png"}) | {"event_type": event.event_type}


async def _asyncpg(connection: AsyncConnection):
    """The asyncpg connection under SQLAlchemy's, for array-parameter statements (one round trip per batch)."""
    raw = await connection.get_raw_connection()
    return raw.driver_connection


class PostgresVotingStore:
    """Safe with several processes: every statement locks its rows in sorted key order, so concurrent batches
    cannot deadlock."""

    def __init__(self, engine: AsyncEngine, known_images: int = 100_000) -> None:
        self._engine = engine
        self._known: OrderedDict[str, None] = OrderedDict()  # images already stored: skip sending their bytes
        self._known_limit = known_images

    async def record(self, batch: BallotBatch) -> None:
        images = {sha: png for sha, png in batch.images.items() if sha not in self._known}
        contributions, votes = batch.contributions, batch.votes
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
            keys = sorted(votes)
            await raw.execute(
                _STORE_VOTES,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [votes[k][1].label for k in keys],
                [_json(votes[k][1].value) for k in keys],
                [votes[k][0].message_id for k in keys],
                [votes[k][0].occurred_at for k in keys],
            )
        for sha in images:
            self._known[sha] = None
        while len(self._known) > self._known_limit:
            self._known.popitem(last=False)

    @contextlib.asynccontextmanager
    async def refresh_lock(self, *, wait: bool) -> AsyncIterator[bool]:
        async with self._engine.connect() as connection:
            held = await connection.scalar(select(func.pg_try_advisory_lock(REFRESH_LOCK)))
            if not held and wait:
                await connection.scalar(select(func.pg_advisory_lock(REFRESH_LOCK)))
                held = True
            try:
                yield held
            finally:
                if held:
                    await connection.scalar(select(func.pg_advisory_unlock(REFRESH_LOCK)))
                    await connection.commit()

    @contextlib.asynccontextmanager
    async def refresh(self) -> AsyncIterator[PostgresRefresh]:
        async with self._engine.begin() as connection:
            yield PostgresRefresh(connection)


class PostgresRefresh:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def vote_fingerprint(self) -> tuple[str, int]:
        count, seq_sum, last_seq = (await self._connection.execute(_FINGERPRINT)).one()
        return f"{count}:{seq_sum}", last_seq

    async def last_refresh_stats(self) -> dict[str, Any] | None:
        latest = select(consensus_refreshes.c.stats).order_by(consensus_refreshes.c.id.desc()).limit(1)
        return (await self._connection.execute(latest)).scalar()

    async def votes(self) -> list[StoredVote]:
        return [StoredVote(*row) for row in await self._connection.execute(_VOTES)]

    async def write_consensus(self, items: Sequence[ItemConsensus]) -> None:
        if not items:
            return
        raw = await _asyncpg(self._connection)
        await raw.execute(
            _UPSERT_CONSENSUS,
            [i.kind for i in items],
            [i.key for i in items],
            [i.label for i in items],
            [_json(i.value) for i in items],
            [i.status for i in items],
            [i.support for i in items],
            [i.confidence for i in items],
        )

    async def write_reliability(self, kind: str, installs: Sequence[InstallReliability]) -> None:
        if not installs:
            return
        raw = await _asyncpg(self._connection)
        await raw.execute(
            _UPSERT_RELIABILITY,
            kind,
            [i.install for i in installs],
            [i.reliability for i in installs],
            [i.votes for i in installs],
            [i.cohort for i in installs],
        )

    async def claim_message(self, message_id: str) -> bool:
        return await db.claim_message(self._connection, CONSUMER, message_id)

    async def latest_snapshot(self) -> PreviousSnapshot | None:
        row = (
            await self._connection.execute(_LATEST_SNAPSHOT, {"finished": list(reads.FINISHED_RUN_STATUSES)})
        ).first()
        return None if row is None else PreviousSnapshot(row.id, row.created_at, row.runs, row.finished_runs)

    async def snapshot_labels(self, snapshot_id: Any) -> dict[tuple[str, str], str | None]:
        return await reads.snapshot_labels(self._connection, snapshot_id)

    async def last_arrival(self) -> datetime | None:
        return await self._connection.scalar(_LAST_ARRIVAL)

    async def write_snapshot(self, snapshot: NewSnapshot, request: TrainingRequested) -> None:
        await self._connection.execute(
            training_snapshots.insert().values(
                id=snapshot.id,
                parent_id=snapshot.parent_id,
                reason=snapshot.reason,
                item_count=len(snapshot.items),
                new_label_count=snapshot.new_label_count,
                details=snapshot.details,
            )
        )
        items = snapshot.items
        raw = await _asyncpg(self._connection)
        await raw.execute(
            _STORE_SNAPSHOT_ITEMS,
            snapshot.id,
            [i.kind for i in items],
            [i.key for i in items],
            [i.label for i in items],
            [_json(i.value) for i in items],
            [i.image_sha256 for i in items],
        )
        await enqueue(self._connection, request)

    async def log_refresh(self, last_vote_seq: int, stats: dict[str, Any]) -> None:
        await self._connection.execute(
            consensus_refreshes.insert().values(last_vote_seq=last_vote_seq, stats=stats)
        )
