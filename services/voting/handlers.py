"""Voting's service layer: store a batch of contributions as votes in one transaction, and refresh consensus,
make snapshots and request training (one process at a time, under the store's refresh lock)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from services.voting.domain.consensus import ConsensusParams
from services.voting.domain.derived import cap_screen_types
from services.voting.domain.items import batch_of
from services.voting.domain.snapshots import (
    compose_snapshot,
    count_changes,
    decide_snapshot,
    refresh_due,
    refresh_pause,
)
from services.voting.domain.tally import (
    ESTIMATED_KINDS,
    StoredVote,
    Tally,
    consensus_jobs,
    decide_all,
    tally_votes,
)
from services.voting.settings import VotingSettings
from services.voting.store import RefreshUnit, VotingStore
from shared.clock import Clock, utc_now
from shared.events import Contribution, Event, TrainingForceRequested, TrainingRequested

log = logging.getLogger(__name__)
STORED = Counter(
    "warp_voting_contributions_stored_total", "Contribution events stored (redeliveries included)"
)
REFRESH_SECONDS = Histogram("warp_voting_refresh_seconds", "Duration of a consensus refresh")
ACCEPTED_ITEMS = Gauge("warp_voting_accepted_items", "Items with accepted consensus", ["kind"])


@dataclass
class RefreshOutcome:
    refreshed: bool
    snapshot_id: uuid.UUID | None = None
    stats: dict = field(default_factory=dict)


class ConsensusRefresher:
    """Recomputes consensus when votes changed and snapshots when ``domain.snapshots`` says so.

    ``executor`` runs the CPU-bound estimator (the bootstrap's worker process; tests may run it inline);
    ``on_snapshot`` is called after a snapshot committed (the outbox relay's wake-up)."""

    def __init__(
        self,
        store: VotingStore,
        settings: VotingSettings,
        *,
        executor: Executor | None,
        clock: Clock = utc_now,
        on_snapshot: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._clock = clock
        self._on_snapshot = on_snapshot
        self._anchor_min_contributors = settings.anchor_min_contributors
        self.rules = settings.snapshot_rules()
        self.icon_params = ConsensusParams(
            min_posterior=settings.min_posterior, min_support=settings.min_support
        )
        # Screenshots are unique per install and knowledge/OCR keys are often seen by one install: one
        # reliable voter is enough there; contested keys are still withheld.
        self.single_voter_params = ConsensusParams(min_posterior=0.5, min_support=1)

    async def refresh(self, force: TrainingForceRequested | None = None) -> RefreshOutcome:
        """Recompute consensus if votes changed; snapshot and request training when the rules say so.
        Returns without doing anything when another process holds the refresh lock (an admin request waits)."""
        async with self._store.refresh_lock(wait=force is not None) as held:
            if not held:
                return RefreshOutcome(False)
            with REFRESH_SECONDS.time():
                outcome = await self._refresh_locked(force)
        if outcome.snapshot_id is not None:
            self._on_snapshot()
        return outcome

    async def run_forever(
        self, interval_seconds: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        pause = interval_seconds
        while True:
            await asyncio.sleep(pause)
            started = monotonic()
            try:
                await self.refresh()
            except Exception:
                log.exception("consensus refresh failed; retrying at the next interval")
            pause = refresh_pause(interval_seconds, monotonic() - started)

    async def _refresh_locked(self, force: TrainingForceRequested | None) -> RefreshOutcome:
        async with self._store.refresh() as unit:
            fingerprint, last_seq = await unit.vote_fingerprint()
            if not refresh_due(fingerprint, await unit.last_refresh_stats(), forced=force is not None):
                return RefreshOutcome(False)
            decided = await self._tally(await unit.votes())
            await unit.write_consensus(decided.consensus)
            for kind, installs in decided.reliability.items():
                await unit.write_reliability(kind, installs)
            snapshot_id, pending = await self._maybe_snapshot(unit, decided.accepted, force)
            stats = decided.stats | {"fingerprint": fingerprint, "snapshot_pending": pending}
            await unit.log_refresh(last_seq, stats)
        return RefreshOutcome(True, snapshot_id, stats)

    async def _tally(self, votes: list[StoredVote]) -> Tally:
        jobs = consensus_jobs(votes, self.icon_params, self.single_voter_params)
        results = await asyncio.get_running_loop().run_in_executor(self._executor, decide_all, jobs)
        decided = tally_votes(jobs, results, votes, self._anchor_min_contributors)
        for kind in ESTIMATED_KINDS:
            ACCEPTED_ITEMS.labels(kind).set(len(decided.accepted[kind]))
        return decided

    async def _maybe_snapshot(
        self, unit: RefreshUnit, accepted: dict[str, dict], force: TrainingForceRequested | None
    ) -> tuple[uuid.UUID | None, bool]:
        """(the snapshot made, if any; whether a snapshot is due but deferred)."""
        if force is not None and not await unit.claim_message(force.message_id):
            return None, False  # this admin request was already served
        previous = await unit.latest_snapshot()
        before = {} if previous is None else await unit.snapshot_labels(previous.id)
        screens = cap_screen_types(accepted["screen"])
        changes = count_changes(accepted["icon"], screens, before)
        decision = decide_snapshot(
            changes,
            self.rules,
            now=self._clock(),
            previous=previous,
            last_arrival=await unit.last_arrival(),
            forced=force is not None,
        )
        if not decision.make or decision.trigger is None:
            if decision.still_due:
                log.debug("snapshot deferred: %s", decision.reason)
            return None, decision.still_due
        snapshot = compose_snapshot(
            uuid.uuid4(),
            None if previous is None else previous.id,
            accepted,
            screens,
            changes,
            decision.trigger,
            self.rules,
        )
        request = TrainingRequested(
            snapshot_id=snapshot.id,
            reason=snapshot.reason,
            new_labels=snapshot.new_label_count,
            total_labels=snapshot.total_icon_labels,
        )
        await unit.write_snapshot(snapshot, request)
        log.info("snapshot %s made: %s; %d items", snapshot.id, decision.reason, len(snapshot.items))
        return snapshot.id, False


class VotingService:
    """What the queue consumer calls with each batch."""

    def __init__(self, store: VotingStore, refresher: ConsensusRefresher) -> None:
        self._store = store
        self._refresher = refresher

    async def handle(self, events: list[Event]) -> None:
        contributions = [event for event in events if isinstance(event, Contribution)]
        if contributions:
            await self._store.record(batch_of(contributions))
            STORED.inc(len(contributions))
        for event in events:
            if isinstance(event, TrainingForceRequested):
                await self._refresher.refresh(force=event)
