"""Voting's service layer: store a batch of contributions as votes in one transaction, and refresh consensus,
make snapshots and request training (one process at a time, under the store's refresh lock)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from prometheus_client import Counter, Gauge, Histogram

from services.voting.domain.consensus import cohort_names, find_cohorts
from services.voting.domain.derived import cap_screen_types
from services.voting.domain.evidence import ItemDecision
from services.voting.domain.items import batch_of
from services.voting.domain.snapshots import compose_snapshot, decide_snapshot, refresh_pause
from services.voting.domain.tally import (
    ESTIMATED_KINDS,
    MODEL_OF_KIND,
    DecisionInputs,
    ItemRef,
    consensus_rows,
    decide,
    group_votes,
    judgements,
    trust_weights,
)
from services.voting.settings import VotingSettings
from services.voting.store import RefreshUnit, VotingStore
from shared.clock import Clock, utc_now
from shared.events import (
    Contribution,
    Event,
    InstallModerated,
    ItemModerated,
    ModelPredicted,
    PredictionItem,
    PredictionRequested,
    TrainingForceRequested,
    TrainingRequested,
)

log = logging.getLogger(__name__)
STORED = Counter(
    "warp_voting_contributions_stored_total", "Contribution events stored (redeliveries included)"
)
REFRESH_SECONDS = Histogram("warp_voting_refresh_seconds", "Duration of a consensus refresh")
DECIDED = Counter("warp_voting_items_decided_total", "Items a refresh decided again", ["kind"])
CHANGED = Counter("warp_voting_decisions_changed_total", "Consensus rows a refresh changed", ["kind"])
PREDICTIONS_REQUESTED = Counter(
    "warp_voting_predictions_requested_total", "Items voting asked the published model to predict"
)
PREDICTIONS_STORED = Counter(
    "warp_voting_predictions_stored_total", "The published model's predictions voting stored"
)
# Votes weighed between two yields to the event loop (an item counts its votes plus one): deciding is pure
# Python, and the queue consumer shares the loop, so a large refresh, or one of items with hundreds of votes each,
# must not hold back the votes arriving meanwhile (accept-to-vote latency).
DECIDE_CHUNK_VOTES = 2_000
DIRTY_LEFT = Gauge("warp_voting_items_waiting", "Items queued for the next refresh beyond this one's limit")


@dataclass
class RefreshOutcome:
    refreshed: bool
    snapshot_id: uuid.UUID | None = None
    stats: dict = field(default_factory=dict)


class ConsensusRefresher:
    """Decides the items whose votes (or other inputs) changed, re-estimates trust on its slower cadence, and
    snapshots when ``domain.snapshots`` says so. Each refresh is one transaction under the store's lock.

    ``monotonic`` paces trust re-estimation; ``on_snapshot`` is called after a snapshot committed (the outbox
    relay's wake-up)."""

    def __init__(
        self,
        store: VotingStore,
        settings: VotingSettings,
        *,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        on_snapshot: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._on_snapshot = on_snapshot
        self._settings = settings
        self.rules = settings.snapshot_rules()
        self.trust_params = settings.trust_params()
        self.evidence_params = settings.evidence_params()
        self._trust_estimated_at: float | None = None
        self._model_version: str | None = None  # the published version the last refresh saw

    async def refresh(self, force: TrainingForceRequested | None = None) -> RefreshOutcome:
        """Decide what changed; snapshot and request training when the rules say so. Returns without doing
        anything when another process holds the refresh lock (an admin request waits)."""
        async with self._store.refresh_lock(wait=force is not None) as held:
            if not held:
                return RefreshOutcome(False)
            with REFRESH_SECONDS.time():
                outcome = await self._refresh_locked(force)
        if outcome.snapshot_id is not None:
            self._on_snapshot()
        return outcome

    async def recompute(self) -> RefreshOutcome:
        """A full recompute: every item queued and decided again against the current trust (admin). Runs
        refreshes until the queue is empty; the result must equal the incremental state."""
        async with self._store.refresh_lock(wait=True):
            async with self._store.refresh() as unit:
                queued = await unit.mark_all_dirty()
            decided = 0
            while True:
                outcome = await self._refresh_locked(None, estimate_trust=False)
                decided += outcome.stats.get("decided", 0)
                if not outcome.stats.get("waiting"):
                    break
        return RefreshOutcome(True, None, {"queued": queued, "decided": decided})

    async def run_forever(self, interval_seconds: float) -> None:
        pause = interval_seconds
        while True:
            await asyncio.sleep(pause)
            started = self._monotonic()
            try:
                await self.refresh()
            except Exception:
                log.exception("consensus refresh failed; retrying at the next interval")
            pause = refresh_pause(interval_seconds, self._monotonic() - started)

    def _trust_due(self) -> bool:
        at = self._trust_estimated_at
        return at is None or self._monotonic() - at >= self._settings.trust_seconds

    async def _refresh_locked(
        self, force: TrainingForceRequested | None, *, estimate_trust: bool = True
    ) -> RefreshOutcome:
        stats: dict = {}
        if estimate_trust and (self._trust_due() or force is not None):
            # its own transaction: the items it queues are visible to the consumer's upserts (which would
            # otherwise wait for the whole refresh) and to the decisions below
            async with self._store.refresh() as unit:
                stats["trust"] = await self._estimate_trust(unit)
            self._trust_estimated_at = self._monotonic()
        async with self._store.refresh() as unit:
            work = await unit.take_dirty(self._settings.refresh_max_items)
            pending = bool((await unit.last_refresh_stats() or {}).get("snapshot_pending"))
            if not work and "trust" not in stats and force is None and not pending:
                return RefreshOutcome(False)
            stats |= await self._decide(unit, work)
            snapshot_id, stats["snapshot_pending"] = await self._maybe_snapshot(
                unit, force, changed=stats["changed"] > 0 or pending
            )
            await unit.log_refresh(stats)
        return RefreshOutcome(True, snapshot_id, stats)

    async def _decide(self, unit: RefreshUnit, work: list[ItemRef]) -> dict:
        """Judge the new votes against the items' settled labels, then decide the items (and the icons whose
        family they are in) and write the rows that changed."""
        refs = set(work)
        distance = self._settings.family_max_distance
        icons = [key for kind, key in refs if kind == "icon"]
        # the queued icons' families, and those members' own families (they are decided again too): one query
        families = await unit.families(icons, distance, hops=2)
        refs |= {("icon", member) for key in icons for member in families.get(key, ())}
        members = {("icon", m) for key, ms in families.items() if ("icon", key) in refs for m in ms}
        votes = group_votes(await unit.votes_of(refs | members))
        current = await unit.consensus_of(refs)
        gold = await unit.gold_of(refs)
        installs = {vote.install_id for item_votes in votes.values() for vote in item_votes}
        trust = await unit.trust_of(installs)
        known = await unit.known_labels()
        predictions, model_versions = await self._model_inputs(unit, refs)
        own_votes = [vote for ref in refs for vote in votes.get(ref, ())]
        await unit.write_judgements(judgements(own_votes, current, gold))
        inputs = DecisionInputs(
            votes,
            families,
            trust,
            gold,
            known,
            self._settings.anchor_min_contributors,
            self._settings.cold_start_labels,
            predictions,
            model_versions,
        )
        decisions: dict = {}
        chunk: list[ItemRef] = []
        weight = 0
        ordered = sorted(refs)
        for position, ref in enumerate(ordered, 1):
            chunk.append(ref)
            weight += 1 + len(votes.get(ref, ()))
            if weight >= DECIDE_CHUNK_VOTES or position == len(ordered):
                decisions |= decide(chunk, inputs, self.evidence_params, self.trust_params)
                chunk, weight = [], 0
                await asyncio.sleep(0)  # the consumer's batches (same process) are stored between chunks
        requested = await self._request_predictions(unit, decisions, model_versions)
        rows = consensus_rows(decisions, current, votes)
        changed = await unit.write_consensus(rows)
        establishing: dict[str, set[str]] = {}
        for (kind, _), decision in decisions.items():
            if isinstance(decision, ItemDecision) and decision.establishes and decision.label is not None:
                if decision.label not in known.get(kind, set()):
                    establishing.setdefault(kind, set()).add(decision.label)
        for kind, labels in establishing.items():
            added = await unit.add_known_labels(kind, labels, "accepted")
            if added:
                log.info("labels now known for %s: %s", kind, ", ".join(sorted(added)))
        decided: Tally[str] = Tally()
        moved: Tally[str] = Tally()
        for row in rows:
            decided[row.kind] += 1
            held = current.get((row.kind, row.key))
            if held is None or (held.label, held.status) != (row.label, row.status):
                moved[row.kind] += 1
        for kind, count in decided.items():
            DECIDED.labels(kind).inc(count)
        for kind, count in moved.items():
            CHANGED.labels(kind).inc(count)
        waiting = len(work) >= self._settings.refresh_max_items
        DIRTY_LEFT.set(1 if waiting else 0)
        return {
            "decided": len(rows),
            "changed": changed,
            "waiting": waiting,
            "predictions_requested": requested,
            "model_version": self._model_version,
        }

    async def _model_inputs(self, unit: RefreshUnit, refs: set[ItemRef]) -> tuple[dict, dict[str, str]]:
        """The stored predictions of the items and the published version of each model; a version not seen
        before queues every withheld item it could decide (for the next refresh)."""
        version = await unit.published_version()
        if self._model_version is None:  # a process that just started: the version the last refresh saw
            self._model_version = (await unit.last_refresh_stats() or {}).get("model_version")
        if version is not None and version != self._model_version:
            queued = await unit.queue_withheld(sorted(MODEL_OF_KIND))
            log.info("published model %s: %d withheld items queued for its predictions", version, queued)
        self._model_version = version
        predictions = await unit.predictions_of([ref for ref in refs if ref[0] in MODEL_OF_KIND])
        if version is None or self._settings.prediction_max_per_refresh == 0:
            return predictions, {}  # no model to wait for or to ask
        versions = {model: version for model in set(MODEL_OF_KIND.values())}
        return predictions, versions

    async def _request_predictions(
        self, unit: RefreshUnit, decisions: dict, model_versions: dict[str, str]
    ) -> int:
        """Ask the trainer for the published model's prediction on the items whose decision it could change
        (deduplicated per version and bounded per refresh; answered by ``model.predicted``)."""
        wanted = [
            ref
            for ref, decision in decisions.items()
            if isinstance(decision, ItemDecision) and decision.wants_prediction
        ]
        versions = {model_versions.get(MODEL_OF_KIND[kind]) for kind, _ in wanted} - {None}
        if not versions:
            return 0
        settings = self._settings
        [version] = versions  # one release carries both models
        due = await unit.request_predictions(
            wanted,
            version,
            self._clock(),
            timedelta(seconds=settings.prediction_retry_seconds),
            settings.prediction_max_per_refresh,
        )
        for start in range(0, len(due), settings.prediction_batch):
            chunk = due[start : start + settings.prediction_batch]
            items = [PredictionItem(item_kind=k, item_key=key, image_sha256=sha) for k, key, sha in chunk]
            await unit.send(PredictionRequested(model_version=version, items=items))
        PREDICTIONS_REQUESTED.inc(len(due))
        if due:
            self._on_snapshot()  # the outbox relay's wake-up
        return len(due)

    async def _estimate_trust(self, unit: RefreshUnit) -> dict:
        """Weights of the installs with new judgements, cohorts from every contradiction of a settled label,
        and the labels of the published model; queues the items of every install whose voice changed."""
        counts, banned = await unit.stale_trust()
        weights = trust_weights(counts, banned, self.trust_params)
        flips = await unit.flips()
        named = cohort_names(
            find_cohorts(flips, self._settings.cohort_min_shared_flips, self._settings.cohort_min_size)
        )
        before = await unit.cohorts()
        moved = {i: named.get(i) for i in set(before) | set(named) if before.get(i) != named.get(i)}
        held = await unit.trust_of(weights)
        changed = {i for i, w in weights.items() if i not in held or held[i].weight != w} | set(moved)
        await unit.write_trust(counts, weights, moved, changed)
        published = await unit.published_labels()
        for kind in ESTIMATED_KINDS:
            if published.get(kind):
                await unit.add_known_labels(kind, published[kind], "published")
        return {"estimated": len(weights), "reweighed": len(changed), "cohorts": len(set(named.values()))}

    async def _maybe_snapshot(
        self, unit: RefreshUnit, force: TrainingForceRequested | None, *, changed: bool
    ) -> tuple[uuid.UUID | None, bool]:
        """(the snapshot made, if any; whether a snapshot is due but deferred)."""
        if force is not None and not await unit.claim_message(force.message_id):
            return None, False  # this admin request was already served
        if force is None and not changed:
            return None, False
        previous = await unit.latest_snapshot()
        changes = await unit.label_changes(previous)
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
        accepted = await unit.accepted()
        snapshot = compose_snapshot(
            uuid.uuid4(),
            None if previous is None else previous.id,
            accepted,
            cap_screen_types(accepted.of("screen")),
            changes,
            decision.trigger,
            self.rules,
        )
        icons = await unit.write_snapshot(snapshot)
        request = TrainingRequested(
            snapshot_id=snapshot.id,
            reason=snapshot.reason,
            new_labels=snapshot.new_label_count,
            total_labels=icons,
        )
        await unit.send(request)
        log.info(
            "snapshot %s made: %s; %d icons, %d other items",
            snapshot.id,
            decision.reason,
            icons,
            len(snapshot.items),
        )
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
            if isinstance(event, ItemModerated):
                await self._store.moderate_item(event)
            elif isinstance(event, InstallModerated):
                await self._store.moderate_install(event)
            elif isinstance(event, ModelPredicted):
                PREDICTIONS_STORED.inc(await self._store.store_predictions(event))
            elif isinstance(event, TrainingForceRequested):
                await self._refresher.refresh(force=event)
