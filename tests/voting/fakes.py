"""In-memory stand-ins for voting's adapters: the store (same protocol as ``PostgresVotingStore``), a clock
that moves only when told, and a relay that counts its wake-ups."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.voting.domain.consensus import Flip
from services.voting.domain.evidence import SETTLED_BY_MODERATOR, Gold, ModelPrediction, TrustCounts
from services.voting.domain.items import BallotBatch, VoteKey
from services.voting.domain.snapshots import (
    Accepted,
    LabelChanges,
    NewSnapshot,
    PreviousSnapshot,
    SnapshotItem,
)
from services.voting.domain.tally import (
    KNOWN_FROM,
    CurrentConsensus,
    InstallTrust,
    ItemConsensus,
    ItemRef,
    Judgement,
    StoredVote,
)
from shared.events import Event, InstallModerated, ItemModerated, ModelPredicted
from shared.imagekeys import hamming
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
    origin: str | None = None
    model_guess: str | None = None
    image_sha256: str | None = None


@dataclass
class TrustRow:
    weight: float
    counts: TrustCounts = TrustCounts()
    cohort: str | None = None
    banned: bool = False
    stale: bool = False


class FakeVotingStore:
    """Keeps what ``PostgresVotingStore`` would write, with the same rules: a contribution once, a vote replaced
    only by a newer and different one (taking a new seq) and its item queued, judgements once per install and
    item, moderator decisions and bans once per message, snapshots with their training requests."""

    def __init__(self, clock: Callable[[], datetime], fresh_weight: float = 0.35) -> None:
        self._clock = clock
        self.fresh_weight = fresh_weight
        self.blobs: dict[str, bytes] = {}
        self.received: dict[str, datetime] = {}  # contribution id: when it arrived
        self.votes: dict[VoteKey, StoredRow] = {}
        self.phashes: dict[str, str] = {}
        self.dirty: set[ItemRef] = set()
        self.consensus: dict[ItemRef, ItemConsensus] = {}
        self.updated: dict[ItemRef, datetime] = {}
        self.judged: dict[tuple[str, str, str], Judgement] = {}
        self.trust: dict[str, TrustRow] = {}
        self.known: dict[str, dict[str, str]] = {}
        self.gold: dict[ItemRef, Gold] = {}
        self.moderated: set[str] = set()
        self.bans: dict[str, tuple[bool, datetime]] = {}
        self.claimed: set[str] = set()
        self.snapshots: list[tuple[NewSnapshot, datetime]] = []
        self.runs: dict[uuid.UUID, list[str]] = {}  # the trainer's runs of each snapshot, by status
        self.outbox: list[Event] = []
        self.published: str | None = None  # the published model version
        self.predictions: dict[ItemRef, ModelPrediction] = {}
        self.asked: dict[ItemRef, tuple[str, datetime]] = {}  # item: (version, when) of its last request
        self.refreshes: list[dict[str, Any]] = []
        self.lock_held_elsewhere = False
        self._seq = 0

    async def record(self, batch: BallotBatch) -> None:
        self.blobs.update(batch.images)
        for key, phash in batch.phashes.items():
            self.phashes.setdefault(key, phash)
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
                ballot.label,
                ballot.value,
                event.message_id,
                event.occurred_at,
                self._seq,
                event.origin,
                ballot.model_guess,
                ballot.image_sha256,
            )
            self.dirty.add((key[0], key[1]))

    def _queue_installs(self, installs: Collection[str]) -> None:
        self.dirty |= {(kind, key) for (kind, key, install) in self.votes if install in installs}

    def _queue_labels(self, kinds: Collection[str], labels: Collection[str]) -> None:
        self.dirty |= {
            (kind, key) for (kind, key, _), row in self.votes.items() if kind in kinds and row.label in labels
        }

    def _add_known(self, kind: str, labels: Collection[str], source: str) -> list[str]:
        held = self.known.setdefault(kind, {})
        added = sorted(label for label in labels if label not in held)
        held.update(dict.fromkeys(added, source))
        self._queue_labels([k for k, sources in KNOWN_FROM.items() if kind in sources], added)
        return added

    async def moderate_item(self, decision: ItemModerated) -> bool:
        if decision.message_id in self.moderated:
            return False
        self.moderated.add(decision.message_id)
        self.gold[(decision.item_kind, decision.item_key)] = Gold(decision.label, decision.moderator)
        self.dirty.add((decision.item_kind, decision.item_key))
        if decision.label is not None:
            self._add_known(decision.item_kind, [decision.label], "moderator")
        return True

    async def moderate_install(self, decision: InstallModerated) -> bool:
        held = self.bans.get(decision.install_id)
        if held is not None and held[1] > decision.occurred_at:
            return False
        self.bans[decision.install_id] = (decision.shadow_banned, decision.occurred_at)
        row = self.trust.setdefault(decision.install_id, TrustRow(self.fresh_weight))
        row.banned, row.stale = decision.shadow_banned, True
        if decision.shadow_banned:
            row.weight = 0.0
        self._queue_installs([decision.install_id])
        return True

    async def store_predictions(self, event: ModelPredicted) -> int:
        for p in event.predictions:
            ref = (p.item_kind, p.item_key)
            self.predictions[ref] = ModelPrediction(p.label, p.confidence, event.model_version, p.trained_on)
            self.dirty.add(ref)
        return len({(p.item_kind, p.item_key) for p in event.predictions})

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
    """Reads see the store as it was; writes apply when the refresh commits (some, like the queue, at once:
    nothing else runs between them in a test)."""

    def __init__(self, store: FakeVotingStore) -> None:
        self._store = store
        self.writes: list[Callable[[], None]] = []

    async def take_dirty(self, limit: int) -> list[ItemRef]:
        taken = sorted(self._store.dirty)[:limit]
        self._store.dirty -= set(taken)
        return taken

    async def mark_all_dirty(self) -> int:
        refs = {(kind, key) for kind, key, _ in self._store.votes}
        self._store.dirty |= refs
        return len(refs)

    async def families(
        self, icon_keys: Collection[str], max_distance: int, *, hops: int = 1
    ) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        frontier = set(icon_keys)
        for _ in range(hops):
            for key in frontier - set(out):
                mine = self._store.phashes.get(key)
                if mine is None or max_distance < 0:
                    continue
                near = {
                    other
                    for other, phash in self._store.phashes.items()
                    if other != key and hamming(mine, phash) <= max_distance and _share_band(mine, phash)
                }
                if near:
                    out[key] = near
            frontier = {member for key in frontier for member in out.get(key, ())}
        return out

    async def votes_of(self, refs: Collection[ItemRef]) -> list[StoredVote]:
        wanted = set(refs)
        rows = [
            StoredVote(kind, key, install, row.label, row.value, row.origin, row.model_guess, row.seq)
            for (kind, key, install), row in self._store.votes.items()
            if (kind, key) in wanted
        ]
        return sorted(rows, key=lambda v: (v.item_kind, v.item_key, v.seq))

    async def consensus_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, CurrentConsensus]:
        held = self._store.consensus
        return {
            ref: CurrentConsensus(held[ref].label, held[ref].status, held[ref].settled_seq)
            for ref in refs
            if ref in held
        }

    async def trust_of(self, installs: Collection[str]) -> dict[str, InstallTrust]:
        return {
            i: InstallTrust(i, row.weight, row.cohort, row.banned)
            for i in installs
            if (row := self._store.trust.get(i)) is not None
        }

    async def gold_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, Gold]:
        return {ref: self._store.gold[ref] for ref in refs if ref in self._store.gold}

    async def known_labels(self) -> dict[str, dict[str, str]]:
        return {kind: dict(labels) for kind, labels in self._store.known.items()}

    async def add_known_labels(self, kind: str, labels: Collection[str], source: str) -> list[str]:
        return self._store._add_known(kind, labels, source)

    async def write_judgements(self, judgements: Sequence[Judgement]) -> None:
        store = self._store
        for judgement in judgements:
            key = (judgement.kind, judgement.key, judgement.install)
            if store.judged.get(key) == judgement:
                continue
            store.judged[key] = judgement
            row = store.trust.setdefault(judgement.install, TrustRow(store.fresh_weight))
            row.stale = True

    async def write_consensus(self, items: Sequence[ItemConsensus]) -> int:
        held = self._store.consensus
        changed = [
            i for i in items if (ref := (i.kind, i.key)) not in held or _decision(held[ref]) != _decision(i)
        ]

        for item in changed:  # at once, as the refresh's own later reads see its writes
            held[(item.kind, item.key)] = item
            self._store.updated[(item.kind, item.key)] = self._store._clock()
        return len(changed)

    async def stale_trust(self) -> tuple[dict[str, TrustCounts], set[str]]:
        counts: dict[str, list[int]] = {i: [0, 0, 0, 0] for i, row in self._store.trust.items() if row.stale}
        for (_, _, install), judgement in self._store.judged.items():
            if install in counts:
                index = (0 if judgement.agree else 1) + (2 if judgement.gold else 0)
                counts[install][index] += 1
        banned = {i for i in counts if self._store.trust[i].banned}
        return {i: TrustCounts(*c) for i, c in counts.items()}, banned

    async def flips(self) -> list[Flip]:
        return [
            Flip((j.kind, j.key), j.label, j.install)
            for j in self._store.judged.values()
            if not j.agree and not j.gold
        ]

    async def cohorts(self) -> dict[str, str]:
        return {i: row.cohort for i, row in self._store.trust.items() if row.cohort is not None}

    async def write_trust(
        self,
        counts: Mapping[str, TrustCounts],
        weights: Mapping[str, float],
        cohorts: Mapping[str, str | None],
        changed: Collection[str],
    ) -> None:
        for install, weight in weights.items():
            row = self._store.trust[install]
            row.weight, row.counts, row.stale = weight, counts[install], False
        for install, cohort in cohorts.items():
            if install in self._store.trust:
                self._store.trust[install].cohort = cohort
        self._store._queue_installs(changed)

    async def published_labels(self) -> dict[str, set[str]]:
        return {}

    async def label_changes(self, previous: PreviousSnapshot | None) -> LabelChanges:
        before = {}
        if previous is not None:
            [snapshot] = [s for s, _ in self._store.snapshots if s.id == previous.id]
            before = {(i.kind, i.key): i.label for i in snapshot.items}
        classes = {label for (kind, _), label in before.items() if kind == "icon"}
        counts, new_classes = {"icon": 0, "screen": 0}, set()
        for ref, row in self._store.consensus.items():
            changed_after = previous is None or self._store.updated[ref] > previous.created_at
            if (
                row.kind in counts
                and row.status == "accepted"
                and changed_after
                and before.get(ref) != row.label
            ):
                counts[row.kind] += 1
                if row.kind == "icon" and previous is not None and row.label not in classes:
                    new_classes.add(row.label)
        return LabelChanges(counts["icon"], counts["screen"], len(new_classes))

    async def accepted(self) -> Accepted:
        out = Accepted()
        for (kind, key), row in sorted(self._store.consensus.items()):
            if row.status == "accepted" and kind != "icon":
                out.labels.setdefault(kind, {})[key] = row.value if kind == "anchor" else row.label
        return out

    def _icons(self) -> list[SnapshotItem]:
        """Every accepted icon with its first stored crop (what the Postgres store copies in SQL)."""
        icons = []
        for (kind, key), row in sorted(self._store.consensus.items()):
            if kind != "icon" or row.status != "accepted":
                continue
            images = sorted(
                (r.seq, r.image_sha256)
                for (k, item, _), r in self._store.votes.items()
                if (k, item) == (kind, key) and r.image_sha256
            )
            if images:
                value = {"confidence": round(row.confidence, 4), "gold": row.reason == SETTLED_BY_MODERATOR}
                icons.append(SnapshotItem("icon", key, row.label, value, images[0][1]))
        return icons

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

    async def last_arrival(self) -> datetime | None:
        return max(self._store.received.values(), default=None)

    async def write_snapshot(self, snapshot: NewSnapshot) -> int:
        created_at = self._store._clock()
        icons = self._icons()
        whole = dataclasses.replace(
            snapshot, items=sorted(icons + snapshot.items, key=lambda i: (i.kind, i.key))
        )
        self.writes.append(lambda: self._store.snapshots.append((whole, created_at)))
        return len(icons)

    async def published_version(self) -> str | None:
        return self._store.published

    async def predictions_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, ModelPrediction]:
        return {ref: self._store.predictions[ref] for ref in refs if ref in self._store.predictions}

    async def request_predictions(
        self, refs: Collection[ItemRef], version: str, now: datetime, retry_after: timedelta, limit: int
    ) -> list[tuple[str, str, str]]:
        images: dict[ItemRef, tuple[int, str]] = {}
        for (kind, key, _), row in self._store.votes.items():
            if row.image_sha256 is not None and images.get((kind, key), (row.seq + 1,))[0] > row.seq:
                images[(kind, key)] = (row.seq, row.image_sha256)
        due = []
        for ref in sorted(set(refs) & set(images)):
            held = self._store.predictions.get(ref)
            asked = self._store.asked.get(ref)
            if held is not None and held.version == version:
                continue
            if asked is not None and asked[0] == version and asked[1] >= now - retry_after:
                continue
            due.append(ref)
        self._store.dirty |= set(due[limit:])
        due = due[:limit]
        for ref in due:
            self._store.asked[ref] = (version, now)
        return [(kind, key, images[(kind, key)][1]) for kind, key in due]

    async def queue_withheld(self, kinds: Collection[str]) -> int:
        refs = {
            ref for ref, row in self._store.consensus.items() if row.status == "withheld" and ref[0] in kinds
        }
        self._store.dirty |= refs
        return len(refs)

    async def send(self, event: Event) -> None:
        self.writes.append(lambda: self._store.outbox.append(event))

    async def last_refresh_stats(self) -> dict[str, Any] | None:
        return self._store.refreshes[-1] if self._store.refreshes else None

    async def log_refresh(self, stats: dict[str, Any]) -> None:
        self.writes.append(lambda: self._store.refreshes.append(stats))


def _decision(row: ItemConsensus) -> tuple:
    return (row.label, row.value, row.status, row.support, row.reason, row.settled_seq)


def _share_band(first: str, second: str) -> bool:
    a, b = int(first, 16), int(second, 16)
    return any((a >> (16 * i)) & 0xFFFF == (b >> (16 * i)) & 0xFFFF for i in range(4))
