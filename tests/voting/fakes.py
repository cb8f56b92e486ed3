"""In-memory stand-ins for voting's adapters: the store (same protocol as ``PostgresVotingStore``), a clock
that moves only when told, and an executor that runs the estimator inline."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.voting.domain.items import BallotBatch, VoteKey
from services.voting.domain.snapshots import NewSnapshot, PreviousSnapshot
from services.voting.domain.tally import InstallReliability, ItemConsensus, StoredVote
from shared.events import TrainingRequested
from shared.reads import FINISHED_RUN_STATUSES


class ShiftedClock:
    """The real time moved on by ``advance``: for tests against the real store, where the database stamps
    arrivals and snapshots with its own now()."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift

    def advance(self, **delta: float) -> None:
        self.shift += timedelta(**delta)


class InlineExecutor(Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


class FakeRelay:
    def __init__(self) -> None:
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1

    async def run(self) -> None:
        raise NotImplementedError("nothing to relay in memory: the fake store keeps the outbox")


@dataclass
class StoredRow:
    label: str | None
    value: dict[str, Any] | None
    contribution_id: str
    voted_at: datetime
    seq: int


class FakeVotingStore:
    """Keeps what ``PostgresVotingStore`` would write, with the same rules: a contribution once, a vote replaced
    only by a newer and different one (taking a new seq), snapshots with their training requests."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self.blobs: dict[str, bytes] = {}
        self.received: dict[str, datetime] = {}  # contribution id: when it arrived
        self.votes: dict[VoteKey, StoredRow] = {}
        self.consensus: dict[tuple[str, str], ItemConsensus] = {}
        self.reliability: dict[tuple[str, str], InstallReliability] = {}
        self.claimed: set[str] = set()
        self.snapshots: list[tuple[NewSnapshot, datetime]] = []
        self.runs: dict[uuid.UUID, list[str]] = {}  # the trainer's runs of each snapshot, by status
        self.outbox: list[TrainingRequested] = []
        self.refreshes: list[dict[str, Any]] = []
        self.lock_held_elsewhere = False
        self._seq = 0

    async def record(self, batch: BallotBatch) -> None:
        self.blobs.update(batch.images)
        for message_id in batch.contributions:
            self.received.setdefault(message_id, self._clock())
        for key, (event, ballot) in batch.votes.items():
            held = self.votes.get(key)
            if held is not None and (
                held.voted_at >= event.occurred_at or (held.label, held.value) == (ballot.label, ballot.value)
            ):
                continue
            self._seq += 1
            self.votes[key] = StoredRow(
                ballot.label, ballot.value, event.message_id, event.occurred_at, self._seq
            )

    @contextlib.asynccontextmanager
    async def refresh_lock(self, *, wait: bool) -> AsyncIterator[bool]:
        yield wait or not self.lock_held_elsewhere

    @contextlib.asynccontextmanager
    async def refresh(self) -> AsyncIterator[FakeRefresh]:
        unit = FakeRefresh(self)
        yield unit
        for write in unit.writes:  # committed only when the block ends without an error
            write()

    def add_run(self, snapshot_id: uuid.UUID, status: str) -> None:
        self.runs.setdefault(snapshot_id, []).append(status)


class FakeRefresh:
    def __init__(self, store: FakeVotingStore) -> None:
        self._store = store
        self.writes: list[Callable[[], None]] = []

    async def vote_fingerprint(self) -> tuple[str, int]:
        seqs = [row.seq for row in self._store.votes.values()]
        return f"{len(seqs)}:{sum(seqs)}", max(seqs, default=0)

    async def last_refresh_stats(self) -> dict[str, Any] | None:
        return self._store.refreshes[-1] if self._store.refreshes else None

    async def votes(self) -> list[StoredVote]:
        ordered = sorted(self._store.votes.items(), key=lambda kv: (kv[1].voted_at, kv[1].seq))
        return [StoredVote(kind, key, install, row.label, row.value) for (kind, key, install), row in ordered]

    async def write_consensus(self, items: Sequence[ItemConsensus]) -> None:
        self.writes.append(lambda: self._store.consensus.update({(i.kind, i.key): i for i in items}))

    async def write_reliability(self, kind: str, installs: Sequence[InstallReliability]) -> None:
        self.writes.append(lambda: self._store.reliability.update({(kind, i.install): i for i in installs}))

    async def claim_message(self, message_id: str) -> bool:
        if message_id in self._store.claimed:
            return False
        self.writes.append(lambda: self._store.claimed.add(message_id))
        return True

    async def latest_snapshot(self) -> PreviousSnapshot | None:
        if not self._store.snapshots:
            return None
        snapshot, created_at = self._store.snapshots[-1]
        runs = self._store.runs.get(snapshot.id, [])
        finished = sum(1 for status in runs if status in FINISHED_RUN_STATUSES)
        return PreviousSnapshot(snapshot.id, created_at, len(runs), finished)

    async def snapshot_labels(self, snapshot_id: Any) -> dict[tuple[str, str], str | None]:
        [snapshot] = [s for s, _ in self._store.snapshots if s.id == snapshot_id]
        return {(i.kind, i.key): i.label for i in snapshot.items if i.kind in ("icon", "screen")}

    async def last_arrival(self) -> datetime | None:
        return max(self._store.received.values(), default=None)

    async def write_snapshot(self, snapshot: NewSnapshot, request: TrainingRequested) -> None:
        created_at = self._store._clock()
        self.writes.append(lambda: self._store.snapshots.append((snapshot, created_at)))
        self.writes.append(lambda: self._store.outbox.append(request))

    async def log_refresh(self, last_vote_seq: int, stats: dict[str, Any]) -> None:
        self.writes.append(lambda: self._store.refreshes.append(stats))
