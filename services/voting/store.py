"""All of voting's SQL: storing contributions and votes, the consensus refresh's reads and writes, snapshots
with their training request (outbox), and its reads of the trainer's ``training_runs``.

``VotingStore`` and ``RefreshUnit`` are the protocols the handlers use; ``PostgresVotingStore`` is the real
adapter and ``tests/voting/fakes.py`` an in-memory one."""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.voting.domain.consensus import Flip
from services.voting.domain.evidence import SETTLED_BY_MODERATOR, Gold, ModelPrediction, TrustCounts
from services.voting.domain.items import BallotBatch
from services.voting.domain.snapshots import Accepted, LabelChanges, NewSnapshot, PreviousSnapshot
from services.voting.domain.tally import (
    KNOWN_FROM,
    CurrentConsensus,
    InstallTrust,
    ItemConsensus,
    ItemRef,
    Judgement,
    StoredVote,
)
from services.voting.tables import consensus_refreshes
from shared import db, reads
from shared.events import (
    Contribution,
    Event,
    InstallModerated,
    ItemModerated,
    ModelPredicted,
)
from shared.outbox import enqueue

REFRESH_LOCK = 0x57A7_0001  # pg advisory lock key: one consensus refresher at a time across processes
CONSUMER = "voting"


class RefreshUnit(Protocol):
    """One consensus refresh's reads and writes, in one transaction."""

    async def take_dirty(self, limit: int) -> list[ItemRef]:
        """Up to ``limit`` items whose votes (or inputs) changed, taken off the queue."""

    async def mark_all_dirty(self) -> int:
        """Queue every item (a full recompute); returns how many."""

    async def families(
        self, icon_keys: Collection[str], max_distance: int, *, hops: int = 1
    ) -> dict[str, set[str]]:
        """{icon key: other icon keys within ``max_distance`` bits of its pHash}; with ``hops`` = 2 also the
        families of those members (and so on), in one query."""

    async def votes_of(self, refs: Collection[ItemRef]) -> list[StoredVote]: ...

    async def consensus_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, CurrentConsensus]: ...

    async def trust_of(self, installs: Collection[str]) -> dict[str, InstallTrust]: ...

    async def gold_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, Gold]: ...

    async def known_labels(self) -> dict[str, dict[str, str]]:
        """{kind: {label: where it is known from (published, accepted, moderator)}}."""

    async def add_known_labels(self, kind: str, labels: Collection[str], source: str) -> list[str]:
        """Adds those not known yet and queues the items voted for them; returns the ones added."""

    async def write_judgements(self, judgements: Sequence[Judgement]) -> None:
        """Upsert; the installs whose judgements changed are marked stale for the next trust estimate."""

    async def write_consensus(self, items: Sequence[ItemConsensus]) -> int:
        """Writes the rows whose decision changed; returns how many."""

    async def stale_trust(self) -> tuple[dict[str, TrustCounts], set[str]]:
        """({stale install: its judgement counts}, banned installs among them)."""

    async def flips(self) -> list[Flip]:
        """Every vote judged against a settled label it contradicted (cohort evidence)."""

    async def cohorts(self) -> dict[str, str]:
        """{install: cohort} as stored."""

    async def write_trust(
        self,
        counts: Mapping[str, TrustCounts],
        weights: Mapping[str, float],
        cohorts: Mapping[str, str | None],
        changed: Collection[str],
    ) -> None:
        """Counts and weights of the estimated installs (no longer stale), the cohorts of ``cohorts``'
        installs; queues the items of the ``changed`` installs."""

    async def published_labels(self) -> dict[str, set[str]]:
        """{kind: labels} of the published model's snapshot (empty before the first release)."""

    async def label_changes(self, previous: PreviousSnapshot | None) -> LabelChanges:
        """Accepted icon and screen labels new or changed since that snapshot."""

    async def accepted(self) -> Accepted:
        """Every accepted item but icons (``write_snapshot`` copies those), for a snapshot."""

    async def claim_message(self, message_id: str) -> bool:
        """False when this message was served before."""

    async def latest_snapshot(self) -> PreviousSnapshot | None: ...

    async def last_arrival(self) -> datetime | None:
        """When the latest contribution was received."""

    async def write_snapshot(self, snapshot: NewSnapshot) -> int:
        """The snapshot with its items and a copy of every accepted icon with its first stored crop; returns the
        icons copied."""

    async def last_refresh_stats(self) -> dict[str, Any] | None: ...

    async def log_refresh(self, stats: dict[str, Any]) -> None: ...

    async def published_version(self) -> str | None:
        """The version of the release clients are told about; None before the first."""

    async def predictions_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, ModelPrediction]:
        """The published model's predictions stored for these items (answered requests only)."""

    async def request_predictions(
        self, refs: Collection[ItemRef], version: str, now: datetime, retry_after: timedelta, limit: int
    ) -> list[tuple[str, str, str]]:
        """Of ``refs``, those not yet predicted by ``version`` nor asked of it within ``retry_after``, at most
        ``limit``, marked as asked: (kind, key, image sha256 of its first stored crop) each. Those over the
        limit are queued for the next refresh."""

    async def queue_withheld(self, kinds: Collection[str]) -> int:
        """Queue every withheld item of ``kinds`` for the next refresh (a new model can decide them)."""

    async def send(self, event: Event) -> None:
        """Send ``event`` once this refresh commits (the outbox)."""


class VotingStore(Protocol):
    async def record(self, batch: BallotBatch) -> None:
        """Store a batch's images, contributions and votes in one transaction, queueing their items."""

    async def moderate_item(self, decision: ItemModerated) -> bool:
        """Record a moderator's decision (once per message) and queue the item; False for a redelivery."""

    async def store_predictions(self, event: ModelPredicted) -> int:
        """Store the published model's predictions and queue their items; returns how many were stored."""

    async def moderate_install(self, decision: InstallModerated) -> bool:
        """Shadow-ban or unban an install (once per message) and queue its items; False for a redelivery."""

    def refresh_lock(self, *, wait: bool) -> contextlib.AbstractAsyncContextManager[bool]:
        """Yields whether this process holds the refresh lock (``wait``: until it does)."""

    def refresh(self) -> contextlib.AbstractAsyncContextManager[RefreshUnit]:
        """A transaction for one refresh: committed when the block ends without an error."""


# Queueing an item for the refresh gives it a new version (the refresh removes only the versions it read).
_REQUEUE = "ON CONFLICT (item_kind, item_key) DO UPDATE SET version = excluded.version"
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
# Last writer wins by the contribution's time; a redelivery or resend of the same vote changes nothing. The
# items of the votes written are queued for the next refresh in the same statement.
_STORE_VOTES = f"""
WITH written AS (
    INSERT INTO votes AS v (item_kind, item_key, install_id, label, value, contribution_id, voted_at, origin, model_guess)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])
    ON CONFLICT (item_kind, item_key, install_id) DO UPDATE
    SET label = excluded.label, value = excluded.value, contribution_id = excluded.contribution_id,
        voted_at = excluded.voted_at, origin = excluded.origin, model_guess = excluded.model_guess,
        seq = nextval('vote_seq')
    WHERE v.voted_at < excluded.voted_at
      AND (v.label IS DISTINCT FROM excluded.label OR v.value IS DISTINCT FROM excluded.value)
    RETURNING item_kind, item_key
)
INSERT INTO dirty_items (item_kind, item_key)
SELECT DISTINCT item_kind, item_key FROM written ORDER BY 1, 2
{_REQUEUE}
"""
# An item's first stored image (per batch, the earliest contribution's): what a snapshot and the published model get.
_STORE_ITEM_IMAGES = """
INSERT INTO item_images (item_kind, item_key, image_sha256)
SELECT DISTINCT ON (kind, key) kind, key, sha
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS i(kind, key, sha, at)
ORDER BY kind, key, at, sha
ON CONFLICT (item_kind, item_key) DO NOTHING
"""
_STORE_PHASHES = """
INSERT INTO icon_phashes (item_key, phash, band0, band1, band2, band3)
SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[], $4::int4[], $5::int4[], $6::int4[])
ON CONFLICT (item_key) DO NOTHING
"""
# The queue is read without locks (one refresher at a time holds the refresh lock), oldest change first; the
# rows read are removed when the refresh commits, unless their item was queued again meanwhile (a new version).
# Storing a vote therefore never waits for a refresh transaction, only for this last statement's row locks.
_TAKE_DIRTY = "SELECT item_kind, item_key, version FROM dirty_items ORDER BY version LIMIT $1"
_DONE_DIRTY = """
DELETE FROM dirty_items d USING (
    SELECT x.item_kind, x.item_key FROM dirty_items x
    JOIN unnest($1::text[], $2::text[], $3::int8[]) AS t(kind, key, version)
      ON x.item_kind = t.kind AND x.item_key = t.key AND x.version = t.version
    ORDER BY 1, 2 FOR UPDATE OF x
) t WHERE d.item_kind = t.item_kind AND d.item_key = t.item_key
"""
_MARK_DIRTY = f"""
INSERT INTO dirty_items (item_kind, item_key)
SELECT DISTINCT * FROM unnest($1::text[], $2::text[]) ORDER BY 1, 2 {_REQUEUE}
"""
_MARK_ALL_DIRTY = f"""
INSERT INTO dirty_items (item_kind, item_key)
SELECT DISTINCT item_kind, item_key FROM votes ORDER BY 1, 2 {_REQUEUE}
"""
_MARK_DIRTY_BY_LABELS = f"""
INSERT INTO dirty_items (item_kind, item_key)
SELECT DISTINCT item_kind, item_key FROM votes WHERE item_kind = ANY($1::text[]) AND label = ANY($2::text[])
ORDER BY 1, 2 {_REQUEUE}
"""
_MARK_DIRTY_BY_INSTALLS = f"""
INSERT INTO dirty_items (item_kind, item_key)
SELECT DISTINCT item_kind, item_key FROM votes WHERE install_id = ANY($1::text[])
ORDER BY 1, 2 {_REQUEUE}
"""
# Near-copies share at least one 16-bit band of their pHash (any two within 3 bits do, by pigeonhole). A walk
# from the given keys: hop 1 gives their families, hop 2 the families of those members, and so on. A key's
# candidates are index-only scans of its four bands ((band, phash) indexes); only the pHashes within the
# distance are then looked up, so the cost is that of the keys, not of the stored crops.
_FAMILIES = """
WITH RECURSIVE walk(item, other, hop) AS (
    SELECT NULL::text, k, 0 FROM unnest($1::text[]) AS k
    UNION
    SELECT w.other, o.item_key, w.hop + 1
    FROM walk w CROSS JOIN LATERAL (SELECT * FROM icon_phashes q WHERE q.item_key = w.other LIMIT 1) q
    CROSS JOIN LATERAL (
        SELECT o.phash FROM icon_phashes o WHERE o.band0 = q.band0
        UNION SELECT o.phash FROM icon_phashes o WHERE o.band1 = q.band1
        UNION SELECT o.phash FROM icon_phashes o WHERE o.band2 = q.band2
        UNION SELECT o.phash FROM icon_phashes o WHERE o.band3 = q.band3
    ) n
    JOIN icon_phashes o ON o.phash = n.phash
    WHERE w.hop < $3 AND o.item_key <> q.item_key AND bit_count((q.phash # n.phash)::bit(64)) <= $2
)
SELECT DISTINCT item, other FROM walk WHERE item IS NOT NULL
"""
# The refresh's reads by key are LATERAL lookups (with LIMIT 1 where the key is unique, which keeps the planner
# from flattening them into a hash join over the whole table): they cost the keys asked for, not the history.
# A vote's value matters to a decision only for anchor grids (the rest decide on labels): not sent otherwise.
_VOTES_OF = """
SELECT v.item_kind, v.item_key, v.install_id, v.label, CASE WHEN v.item_kind = 'anchor' THEN v.value END,
       v.origin, v.model_guess, v.seq
FROM unnest($1::text[], $2::text[]) AS r(kind, key)
CROSS JOIN LATERAL (SELECT * FROM votes v WHERE v.item_kind = r.kind AND v.item_key = r.key) v
ORDER BY v.item_kind, v.item_key, v.seq
"""
_CONSENSUS_OF = """
SELECT c.item_kind, c.item_key, c.label, c.status, c.settled_seq
FROM unnest($1::text[], $2::text[]) AS r(kind, key)
CROSS JOIN LATERAL (SELECT * FROM consensus c WHERE c.item_kind = r.kind AND c.item_key = r.key LIMIT 1) c
"""
_TRUST_OF = """
SELECT t.install_id, t.weight, t.cohort, t.banned FROM unnest($1::text[]) AS i(install_id)
CROSS JOIN LATERAL (SELECT * FROM install_trust t WHERE t.install_id = i.install_id LIMIT 1) t
"""
_GOLD_OF = """
SELECT m.item_kind, m.item_key, m.label, m.moderator FROM unnest($1::text[], $2::text[]) AS r(kind, key)
CROSS JOIN LATERAL (
    SELECT * FROM moderator_decisions m WHERE m.item_kind = r.kind AND m.item_key = r.key
    ORDER BY m.decided_at DESC, m.id DESC LIMIT 1
) m
"""
_KNOWN = "SELECT item_kind, label, source FROM known_labels"
_ADD_KNOWN = """
INSERT INTO known_labels (item_kind, label, source) SELECT $1, l, $3 FROM unnest($2::text[]) AS l ORDER BY 2
ON CONFLICT DO NOTHING RETURNING label
"""
_WRITE_JUDGEMENTS = """
WITH written AS (
    INSERT INTO trust_judgements AS j (item_kind, item_key, install_id, label, settled_label, agree, gold)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::bool[])
    ORDER BY 1, 2, 3
    ON CONFLICT (item_kind, item_key, install_id) DO UPDATE
    SET label = excluded.label, settled_label = excluded.settled_label, agree = excluded.agree,
        gold = excluded.gold, at = now()
    WHERE (j.label, j.settled_label, j.gold) IS DISTINCT FROM (excluded.label, excluded.settled_label, excluded.gold)
    RETURNING install_id
)
INSERT INTO install_trust AS t (install_id, weight, stale)
SELECT DISTINCT install_id, $8::float8, true FROM written ORDER BY 1
ON CONFLICT (install_id) DO UPDATE SET stale = true
"""
_UPSERT_CONSENSUS = """
WITH written AS (
    INSERT INTO consensus AS c (item_kind, item_key, label, value, status, support, confidence, reason, evidence, settled_seq)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::int[], $7::float8[], $8::text[], $9::jsonb[], $10::int8[])
    ON CONFLICT (item_kind, item_key) DO UPDATE
    SET label = excluded.label, value = excluded.value, status = excluded.status, support = excluded.support,
        confidence = excluded.confidence, reason = excluded.reason, evidence = excluded.evidence,
        settled_seq = excluded.settled_seq, updated_at = now()
    WHERE (c.label, c.value, c.status, c.support, c.reason, c.settled_seq, c.evidence -> 'published_model')
          IS DISTINCT FROM (excluded.label, excluded.value, excluded.status, excluded.support, excluded.reason,
                            excluded.settled_seq, excluded.evidence -> 'published_model')
    RETURNING 1
)
SELECT count(*) FROM written
"""
# Per stale install, its judgements counted through the install index (not a join over every judgement).
_STALE_TRUST = """
SELECT t.install_id, t.banned, j.agree, j.disagree, j.gold_agree, j.gold_disagree
FROM install_trust t CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.agree AND NOT j.gold) AS agree,
           count(*) FILTER (WHERE NOT j.agree AND NOT j.gold) AS disagree,
           count(*) FILTER (WHERE j.agree AND j.gold) AS gold_agree,
           count(*) FILTER (WHERE NOT j.agree AND j.gold) AS gold_disagree
    FROM trust_judgements j WHERE j.install_id = t.install_id
) j
WHERE t.stale
"""
_FLIPS = "SELECT item_kind, item_key, label, install_id FROM trust_judgements WHERE NOT agree AND NOT gold"
_COHORTS = "SELECT install_id, cohort FROM install_trust WHERE cohort IS NOT NULL"
_WRITE_WEIGHTS = """
UPDATE install_trust t SET weight = w.weight, agree = w.agree, disagree = w.disagree,
    gold_agree = w.gold_agree, gold_disagree = w.gold_disagree, stale = false, updated_at = now()
FROM unnest($1::text[], $2::float8[], $3::int[], $4::int[], $5::int[], $6::int[])
  AS w(install_id, weight, agree, disagree, gold_agree, gold_disagree)
WHERE t.install_id = w.install_id
"""
_WRITE_COHORTS = """
UPDATE install_trust t SET cohort = c.cohort FROM unnest($1::text[], $2::text[]) AS c(install_id, cohort)
WHERE t.install_id = c.install_id
"""
# Changes since a snapshot: rows written after it (updated_at only moves when a decision, or the published model's
# prediction in its evidence, changes) whose label
# differs from the snapshot's.
# and how many of the changed icons' labels the previous snapshot's icons did not have (its `icon_classes`, kept in
# its details: no scan of its items; a snapshot made before they were kept has none, so nothing counts as new)
_LABEL_CHANGES = """
SELECT c.item_kind, count(*),
       count(DISTINCT c.label) FILTER (
           WHERE c.item_kind = 'icon' AND p.details ? 'icon_classes' AND NOT (p.details -> 'icon_classes') ? c.label
       )
FROM consensus c
LEFT JOIN snapshot_items s ON s.snapshot_id = $1 AND s.item_kind = c.item_kind AND s.item_key = c.item_key
LEFT JOIN training_snapshots p ON p.id = $1
WHERE c.status = 'accepted' AND c.item_kind IN ('icon', 'screen') AND c.updated_at > $2
  AND s.label IS DISTINCT FROM c.label
GROUP BY c.item_kind
"""
_ACCEPTED = """
SELECT item_kind, item_key, label, value FROM consensus
WHERE item_kind IN ('knowledge', 'screen', 'ocr', 'anchor') AND status = 'accepted'
ORDER BY item_kind, item_key
"""
# A snapshot's icons, copied in the database (10⁶ accepted icons must not pass through the refresher's event
# loop): every accepted icon with its first stored crop; its value, the confidence and whether a moderator settled
# it. The snapshot row (with the item count and its icons' labels, `icon_classes`) and its icons are one statement,
# so the count is of the rows copied.
_SNAPSHOT_ICONS = """
WITH icons AS (
    SELECT c.item_key, c.label,
           jsonb_build_object('confidence', round(c.confidence::numeric, 4), 'gold', c.reason = $7::text) AS value,
           i.image_sha256
    FROM consensus c JOIN item_images i ON i.item_kind = 'icon' AND i.item_key = c.item_key
    WHERE c.item_kind = 'icon' AND c.status = 'accepted'
), snapshot AS (
    INSERT INTO training_snapshots (id, parent_id, reason, item_count, new_label_count, details)
    SELECT $1::uuid, $2::uuid, $3::text, $4::int + count(*), $5::int,
           $6::jsonb || jsonb_build_object('icon_classes', coalesce(jsonb_agg(DISTINCT label), '[]'::jsonb))
    FROM icons
), copied AS (
    INSERT INTO snapshot_items (snapshot_id, item_kind, item_key, label, value, image_sha256)
    SELECT $1::uuid, 'icon', item_key, label, value, image_sha256 FROM icons
)
SELECT count(*) FROM icons
"""
# The published model's predictions: a row per item voting asked about; the answer fills it in and queues the
# item. Kept per item (the latest answer), so a refresh reads one row per item it decides.
_PREDICTIONS_OF = """
SELECT p.item_kind, p.item_key, p.label, p.confidence, p.model_version, p.trained_on,
       p.independent_label, p.independent_confidence, p.independent_version
FROM model_predictions p JOIN unnest($1::text[], $2::text[]) AS r(kind, key)
  ON p.item_kind = r.kind AND p.item_key = r.key
WHERE p.model_version IS NOT NULL
"""
_REQUEST_PREDICTIONS = f"""
WITH images AS (
    SELECT i.item_kind, i.item_key, i.image_sha256 FROM unnest($1::text[], $2::text[]) AS r(kind, key)
    CROSS JOIN LATERAL (
        SELECT * FROM item_images i WHERE i.item_kind = r.kind AND i.item_key = r.key LIMIT 1
    ) i
), due_all AS (
    SELECT i.* FROM images i
    LEFT JOIN model_predictions p ON p.item_kind = i.item_kind AND p.item_key = i.item_key
    WHERE p.item_key IS NULL
       OR (p.model_version IS DISTINCT FROM $3::text
           AND (p.requested_version IS DISTINCT FROM $3::text OR p.requested_at < $5::timestamptz))
), due AS (
    SELECT * FROM due_all ORDER BY 1, 2 LIMIT $6
), asked AS (
    INSERT INTO model_predictions AS p (item_kind, item_key, requested_version, requested_at)
    SELECT item_kind, item_key, $3::text, $4::timestamptz FROM due ORDER BY 1, 2
    ON CONFLICT (item_kind, item_key) DO UPDATE
    SET requested_version = excluded.requested_version, requested_at = excluded.requested_at
), later AS (  -- over this refresh's limit: queued, so the next refresh asks
    INSERT INTO dirty_items (item_kind, item_key)
    SELECT item_kind, item_key FROM due_all EXCEPT SELECT item_kind, item_key FROM due
    ORDER BY 1, 2 {_REQUEUE}
)
SELECT item_kind, item_key, image_sha256 FROM due ORDER BY 1, 2
"""
_STORE_PREDICTIONS = f"""
WITH written AS (
    INSERT INTO model_predictions AS p
        (item_kind, item_key, model_version, label, confidence, trained_on, predicted_at,
         independent_version, independent_label, independent_confidence)
    SELECT kind, key, version, label, confidence, trained_on, at,
           CASE WHEN independent THEN version END, CASE WHEN independent THEN label END,
           CASE WHEN independent THEN confidence END
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::bool[], $7::timestamptz[])
        AS a(kind, key, version, label, confidence, trained_on, at)
    CROSS JOIN LATERAL (SELECT NOT a.trained_on AND a.label IS NOT NULL AS independent) i
    ON CONFLICT (item_kind, item_key) DO UPDATE
    SET model_version = excluded.model_version, label = excluded.label, confidence = excluded.confidence,
        trained_on = excluded.trained_on, predicted_at = excluded.predicted_at,
        independent_version = coalesce(excluded.independent_version, p.independent_version),
        independent_label = coalesce(excluded.independent_label, p.independent_label),
        independent_confidence = coalesce(excluded.independent_confidence, p.independent_confidence)
    WHERE p.predicted_at IS NULL OR p.predicted_at <= excluded.predicted_at
    RETURNING p.item_kind, p.item_key
), queued AS (
    INSERT INTO dirty_items (item_kind, item_key)
    SELECT item_kind, item_key FROM written ORDER BY 1, 2 {_REQUEUE}
)
SELECT count(*) FROM written
"""
_QUEUE_WITHHELD = f"""
INSERT INTO dirty_items (item_kind, item_key)
SELECT item_kind, item_key FROM consensus WHERE status = 'withheld' AND item_kind = ANY($1::text[])
ORDER BY 1, 2 {_REQUEUE}
"""
_STORE_MODERATION = """
INSERT INTO moderator_decisions (message_id, item_kind, item_key, label, moderator, note, decided_at, before)
SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::timestamptz, (
    SELECT to_jsonb(c) - 'evidence' FROM consensus c WHERE c.item_kind = $2::text AND c.item_key = $3::text
)
ON CONFLICT (message_id) DO NOTHING RETURNING id
"""
_STORE_BAN = """
INSERT INTO install_bans AS b (install_id, shadow_banned, moderator, note, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (install_id) DO UPDATE
SET shadow_banned = excluded.shadow_banned, moderator = excluded.moderator, note = excluded.note,
    updated_at = excluded.updated_at
WHERE b.updated_at <= excluded.updated_at
RETURNING shadow_banned
"""
_BAN_TRUST = """
INSERT INTO install_trust AS t (install_id, weight, banned, stale) VALUES ($1, $2, $3, true)
ON CONFLICT (install_id) DO UPDATE SET banned = excluded.banned, stale = true,
    weight = CASE WHEN excluded.banned THEN 0 ELSE t.weight END
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


def _from_json(value: Any) -> Any:
    """A JSONB column as the raw connection returns it (decoded where a codec is set, text otherwise)."""
    return json.loads(value) if isinstance(value, str) else value


def _payload(event: Contribution) -> dict:
    return event.model_dump(mode="json", exclude={"png"}) | {"event_type": event.event_type}


def _signed(phash: str) -> int:
    value = int(phash, 16)
    return value - (1 << 64) if value >= 1 << 63 else value


def _bands(phash: str) -> tuple[int, int, int, int]:
    value = int(phash, 16)
    return tuple((value >> (16 * i)) & 0xFFFF for i in range(4))  # type: ignore[return-value]


def _unzip(refs: Collection[ItemRef]) -> tuple[list[str], list[str]]:
    ordered = sorted(refs)
    return [kind for kind, _ in ordered], [key for _, key in ordered]


async def _asyncpg(connection: AsyncConnection):
    """The asyncpg connection under SQLAlchemy's, for array-parameter statements (one round trip per batch)."""
    raw = await connection.get_raw_connection()
    return raw.driver_connection


class _Recent:
    """Keys this process stored recently, at most ``limit`` (the oldest forgotten first): a batch need not send
    them again. Only a saving: the statements stay idempotent, so forgetting costs a redundant write."""

    def __init__(self, limit: int) -> None:
        self._keys: OrderedDict[Any, None] = OrderedDict()
        self._limit = limit

    def __contains__(self, key: Any) -> bool:
        return key in self._keys

    def add(self, keys: Iterable[Any]) -> None:
        for key in keys:
            self._keys[key] = None
        while len(self._keys) > self._limit:
            self._keys.popitem(last=False)


class PostgresVotingStore:
    """Safe with several processes: every statement locks its rows in sorted key order, so concurrent batches
    cannot deadlock."""

    def __init__(self, engine: AsyncEngine, known_images: int = 100_000, fresh_weight: float = 0.35) -> None:
        self._engine = engine
        self._known = _Recent(known_images)  # images already stored: skip sending their bytes
        self._pictured = _Recent(known_images)  # items whose first image is stored
        self._hashed = _Recent(known_images)  # icons whose pHash is stored
        self._fresh_weight = fresh_weight

    async def record(self, batch: BallotBatch) -> None:
        images = {sha: png for sha, png in batch.images.items() if sha not in self._known}
        contributions, votes = batch.contributions, batch.votes
        first_images = {
            (c.item_kind, c.item_key)
            for _, c in contributions.values()
            if c.image_sha256 is not None and (c.item_kind, c.item_key) not in self._pictured
        }
        phashes = {key: phash for key, phash in batch.phashes.items() if key not in self._hashed}
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
            pictured = [
                i
                for i in ids
                if contributions[i][1].image_sha256 is not None
                and (contributions[i][1].item_kind, contributions[i][1].item_key) in first_images
            ]
            if pictured:
                await raw.execute(
                    _STORE_ITEM_IMAGES,
                    [contributions[i][1].item_kind for i in pictured],
                    [contributions[i][1].item_key for i in pictured],
                    [contributions[i][1].image_sha256 for i in pictured],
                    [contributions[i][0].occurred_at for i in pictured],
                )
            if phashes:
                keys = sorted(phashes)
                bands = [_bands(phashes[k]) for k in keys]
                await raw.execute(
                    _STORE_PHASHES,
                    keys,
                    [_signed(phashes[k]) for k in keys],
                    *([b[i] for b in bands] for i in range(4)),
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
                [votes[k][0].origin for k in keys],
                [votes[k][1].model_guess for k in keys],
            )
        self._known.add(images)
        self._pictured.add(first_images)
        self._hashed.add(phashes)

    async def moderate_item(self, decision: ItemModerated) -> bool:
        async with self._engine.begin() as connection:
            raw = await _asyncpg(connection)
            stored = await raw.fetchval(
                _STORE_MODERATION,
                decision.message_id,
                decision.item_kind,
                decision.item_key,
                decision.label,
                decision.moderator,
                decision.note,
                decision.occurred_at,
            )
            if stored is None:
                return False
            await raw.execute(_MARK_DIRTY, [decision.item_kind], [decision.item_key])
            if decision.label is not None:
                await PostgresRefresh(connection).add_known_labels(
                    decision.item_kind, [decision.label], "moderator"
                )
        return True

    async def store_predictions(self, event: ModelPredicted) -> int:
        # one answer per item: the latest of a redelivered or repeated answer in the event wins
        latest = {(p.item_kind, p.item_key): p for p in event.predictions}
        keys = sorted(latest)
        async with self._engine.begin() as connection:
            raw = await _asyncpg(connection)
            return await raw.fetchval(
                _STORE_PREDICTIONS,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [event.model_version] * len(keys),
                [latest[k].label for k in keys],
                [latest[k].confidence for k in keys],
                [latest[k].trained_on for k in keys],
                [event.occurred_at] * len(keys),
            )

    async def moderate_install(self, decision: InstallModerated) -> bool:
        async with self._engine.begin() as connection:
            raw = await _asyncpg(connection)
            applied = await raw.fetchval(
                _STORE_BAN,
                decision.install_id,
                decision.shadow_banned,
                decision.moderator,
                decision.note,
                decision.occurred_at,
            )
            if applied is None:
                return False
            await raw.execute(_BAN_TRUST, decision.install_id, self._fresh_weight, decision.shadow_banned)
            await raw.execute(_MARK_DIRTY_BY_INSTALLS, [decision.install_id])
        return True

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
            # a refresh's queries are many small index lookups: JIT compiling them costs more than they do
            await connection.execute(text("SET LOCAL jit = off"))
            unit = PostgresRefresh(connection, self._fresh_weight)
            yield unit
            await unit.done_with_taken()


_EXPLAIN_ITEM = """
SELECT item_kind, item_key, label, value, status, support, confidence, reason, evidence, settled_seq, updated_at
FROM consensus WHERE item_kind = $1 AND item_key = $2
"""
_EXPLAIN_VOTES = """
SELECT v.install_id, v.origin, v.label, v.model_guess, v.seq, v.voted_at,
       coalesce(t.weight, $3) AS weight, t.cohort, coalesce(t.banned, false) AS banned
FROM votes v LEFT JOIN install_trust t ON t.install_id = v.install_id
WHERE v.item_kind = $1 AND v.item_key = $2 ORDER BY v.seq
"""
_EXPLAIN_GOLD = """
SELECT label, moderator, note, decided_at FROM moderator_decisions
WHERE item_kind = $1 AND item_key = $2 ORDER BY decided_at, id
"""
_EXPLAIN_PREDICTION = """
SELECT model_version, label, confidence, trained_on, predicted_at, requested_version, requested_at,
       independent_version, independent_label, independent_confidence
FROM model_predictions WHERE item_kind = $1 AND item_key = $2
"""
_EXPLAIN_FAMILY = """
SELECT c.item_key, c.label, c.status FROM consensus c WHERE c.item_kind = 'icon' AND c.item_key = ANY($1::text[])
ORDER BY c.item_key
"""
_EXPLAIN_INSTALL = """
SELECT t.weight, t.agree, t.disagree, t.gold_agree, t.gold_disagree, t.cohort, t.banned, t.stale, t.updated_at,
       b.shadow_banned, b.moderator, b.note, b.updated_at AS banned_at
FROM (SELECT $1::text AS install_id) i
LEFT JOIN install_trust t ON t.install_id = i.install_id
LEFT JOIN install_bans b ON b.install_id = i.install_id
"""
_INSTALL_VOTES = """
SELECT item_kind, count(*) AS votes, count(DISTINCT origin) AS origins FROM votes WHERE install_id = $1
GROUP BY item_kind ORDER BY item_kind
"""
_INSTALL_JUDGEMENTS = """
SELECT item_kind, item_key, label, settled_label, agree, gold, at FROM trust_judgements WHERE install_id = $1
ORDER BY at DESC LIMIT $2
"""
_COHORT_MEMBERS = "SELECT install_id FROM install_trust WHERE cohort = $1 ORDER BY install_id"


class PostgresExplainer:
    """What an operator asks of voting's decisions: why an item is accepted or withheld, and how much an install
    is trusted and why. Read-only."""

    def __init__(self, engine: AsyncEngine, settings: Any) -> None:
        self._engine = engine
        self._fresh_weight = settings.fresh_weight
        self._family_distance = settings.family_max_distance

    async def item(self, kind: str, key: str) -> dict[str, Any] | None:
        async with self._engine.connect() as connection:
            raw = await _asyncpg(connection)
            row = await raw.fetchrow(_EXPLAIN_ITEM, kind, key)
            votes = await raw.fetch(_EXPLAIN_VOTES, kind, key, self._fresh_weight)
            if row is None and not votes:
                return None
            gold = await raw.fetch(_EXPLAIN_GOLD, kind, key)
            prediction = await raw.fetchrow(_EXPLAIN_PREDICTION, kind, key)
            family: list[dict[str, Any]] = []
            if kind == "icon":
                members = await PostgresRefresh(connection).families([key], self._family_distance)
                rows = await raw.fetch(_EXPLAIN_FAMILY, sorted(members.get(key, ())))
                family = [dict(r) for r in rows]
        decision = None if row is None else dict(row) | {"evidence": _from_json(row["evidence"])}
        return {
            "item_kind": kind,
            "item_key": key,
            "decision": decision,
            "why": "not decided yet (queued for the next refresh)" if row is None else row["reason"],
            "voters": [dict(v) for v in votes],
            "distinct_origins": len({v["origin"] or f"install:{v['install_id']}" for v in votes}),
            "moderator_decisions": [dict(g) for g in gold],
            "published_model": None if prediction is None else dict(prediction),
            "family": family,
        }

    async def install(self, install_id: str, recent: int = 20) -> dict[str, Any] | None:
        async with self._engine.connect() as connection:
            raw = await _asyncpg(connection)
            trust = await raw.fetchrow(_EXPLAIN_INSTALL, install_id)
            votes = await raw.fetch(_INSTALL_VOTES, install_id)
            if not votes and trust["weight"] is None and trust["shadow_banned"] is None:
                return None
            judged = await raw.fetch(_INSTALL_JUDGEMENTS, install_id, recent)
            cohort = trust["cohort"]
            members = [] if cohort is None else [r[0] for r in await raw.fetch(_COHORT_MEMBERS, cohort)]
        return {
            "install_id": install_id,
            "weight": self._fresh_weight if trust["weight"] is None else trust["weight"],
            "judged": {
                name: trust[name] or 0 for name in ("agree", "disagree", "gold_agree", "gold_disagree")
            },
            "shadow_banned": bool(trust["shadow_banned"]),
            "ban": None
            if trust["shadow_banned"] is None
            else {"moderator": trust["moderator"], "note": trust["note"], "at": trust["banned_at"]},
            "cohort": {"name": cohort, "members": members} if cohort else None,
            "votes": {r["item_kind"]: {"votes": r["votes"], "origins": r["origins"]} for r in votes},
            "recent_judgements": [dict(j) for j in judged],
            "estimated_at": trust["updated_at"],
            "awaiting_estimate": bool(trust["stale"]),
        }


class PostgresRefresh:
    def __init__(self, connection: AsyncConnection, fresh_weight: float = 0.35) -> None:
        self._connection = connection
        self._fresh_weight = fresh_weight
        self._taken: list[tuple[str, str, int]] = []  # (kind, key, version) read off the queue

    async def _raw(self):
        return await _asyncpg(self._connection)

    async def take_dirty(self, limit: int) -> list[ItemRef]:
        rows = await (await self._raw()).fetch(_TAKE_DIRTY, limit)
        self._taken += [(row[0], row[1], row[2]) for row in rows]
        return [(row[0], row[1]) for row in rows]

    async def done_with_taken(self) -> None:
        """Remove the queue rows this refresh read and decided, unless queued again since (called last)."""
        if self._taken:
            taken = sorted(self._taken)
            await (await self._raw()).execute(_DONE_DIRTY, *([row[i] for row in taken] for i in range(3)))
            self._taken = []

    async def mark_all_dirty(self) -> int:
        status = await (await self._raw()).execute(_MARK_ALL_DIRTY)
        return int(status.rsplit(" ", 1)[-1])

    async def families(
        self, icon_keys: Collection[str], max_distance: int, *, hops: int = 1
    ) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        if not icon_keys or max_distance < 0:
            return out
        rows = await (await self._raw()).fetch(_FAMILIES, sorted(icon_keys), max_distance, hops)
        for item, other in rows:
            out.setdefault(item, set()).add(other)
        return out

    async def votes_of(self, refs: Collection[ItemRef]) -> list[StoredVote]:
        if not refs:
            return []
        rows = await (await self._raw()).fetch(_VOTES_OF, *_unzip(refs))
        return [StoredVote(row[0], row[1], row[2], row[3], _from_json(row[4]), *row[5:]) for row in rows]

    async def consensus_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, CurrentConsensus]:
        if not refs:
            return {}
        rows = await (await self._raw()).fetch(_CONSENSUS_OF, *_unzip(refs))
        return {(row[0], row[1]): CurrentConsensus(row[2], row[3], row[4]) for row in rows}

    async def trust_of(self, installs: Collection[str]) -> dict[str, InstallTrust]:
        if not installs:
            return {}
        rows = await (await self._raw()).fetch(_TRUST_OF, sorted(installs))
        return {row[0]: InstallTrust(row[0], row[1], row[2], row[3]) for row in rows}

    async def gold_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, Gold]:
        if not refs:
            return {}
        rows = await (await self._raw()).fetch(_GOLD_OF, *_unzip(refs))
        return {(row[0], row[1]): Gold(row[2], row[3]) for row in rows}

    async def known_labels(self) -> dict[str, dict[str, str]]:
        known: dict[str, dict[str, str]] = {}
        for kind, label, source in await (await self._raw()).fetch(_KNOWN):
            known.setdefault(kind, {})[label] = source
        return known

    async def add_known_labels(self, kind: str, labels: Collection[str], source: str) -> list[str]:
        if not labels:
            return []
        raw = await self._raw()
        added = [row[0] for row in await raw.fetch(_ADD_KNOWN, kind, sorted(labels), source)]
        if added:
            kinds = [k for k, sources in KNOWN_FROM.items() if kind in sources]
            await raw.execute(_MARK_DIRTY_BY_LABELS, kinds, added)
        return added

    async def write_judgements(self, judgements: Sequence[Judgement]) -> None:
        if not judgements:
            return
        ordered = sorted(judgements, key=lambda j: (j.kind, j.key, j.install))
        await (await self._raw()).execute(
            _WRITE_JUDGEMENTS,
            [j.kind for j in ordered],
            [j.key for j in ordered],
            [j.install for j in ordered],
            [j.label for j in ordered],
            [j.settled_label for j in ordered],
            [j.agree for j in ordered],
            [j.gold for j in ordered],
            self._fresh_weight,
        )

    async def write_consensus(self, items: Sequence[ItemConsensus]) -> int:
        if not items:
            return 0
        return await (await self._raw()).fetchval(
            _UPSERT_CONSENSUS,
            [i.kind for i in items],
            [i.key for i in items],
            [i.label for i in items],
            [_json(i.value) for i in items],
            [i.status for i in items],
            [i.support for i in items],
            [i.confidence for i in items],
            [i.reason for i in items],
            [_json(i.evidence) for i in items],
            [i.settled_seq for i in items],
        )

    async def stale_trust(self) -> tuple[dict[str, TrustCounts], set[str]]:
        counts, banned = {}, set()
        for row in await (await self._raw()).fetch(_STALE_TRUST):
            counts[row[0]] = TrustCounts(row[2], row[3], row[4], row[5])
            if row[1]:
                banned.add(row[0])
        return counts, banned

    async def flips(self) -> list[Flip]:
        return [Flip((r[0], r[1]), r[2], r[3]) for r in await (await self._raw()).fetch(_FLIPS)]

    async def cohorts(self) -> dict[str, str]:
        return {row[0]: row[1] for row in await (await self._raw()).fetch(_COHORTS)}

    async def write_trust(
        self,
        counts: Mapping[str, TrustCounts],
        weights: Mapping[str, float],
        cohorts: Mapping[str, str | None],
        changed: Collection[str],
    ) -> None:
        raw = await self._raw()
        if weights:
            installs = sorted(weights)
            await raw.execute(
                _WRITE_WEIGHTS,
                installs,
                [weights[i] for i in installs],
                *([getattr(counts[i], f) for i in installs] for f in TrustCounts.__dataclass_fields__),
            )
        if cohorts:
            installs = sorted(cohorts)
            await raw.execute(_WRITE_COHORTS, installs, [cohorts[i] for i in installs])
        if changed:
            await raw.execute(_MARK_DIRTY_BY_INSTALLS, sorted(changed))

    async def published_labels(self) -> dict[str, set[str]]:
        published = await reads.latest_published_version(self._connection)
        if published is None or published.snapshot_id is None:
            return {}
        labels: dict[str, set[str]] = {}
        for (kind, _), label in (
            await reads.snapshot_labels(self._connection, published.snapshot_id)
        ).items():
            if label is not None:
                labels.setdefault(kind, set()).add(label)
        return labels

    async def label_changes(self, previous: PreviousSnapshot | None) -> LabelChanges:
        since = datetime.min.replace(tzinfo=UTC) if previous is None else previous.created_at
        snapshot = None if previous is None else previous.id
        rows = await (await self._raw()).fetch(_LABEL_CHANGES, snapshot, since)
        counts = {row[0]: row[1] for row in rows}
        new_classes = sum(row[2] for row in rows)
        return LabelChanges(counts.get("icon", 0), counts.get("screen", 0), new_classes)

    async def accepted(self) -> Accepted:
        out = Accepted()
        for kind, key, label, value in await (await self._raw()).fetch(_ACCEPTED):
            out.labels.setdefault(kind, {})[key] = label if kind != "anchor" else _from_json(value)
        return out

    async def claim_message(self, message_id: str) -> bool:
        return await db.claim_message(self._connection, CONSUMER, message_id)

    async def latest_snapshot(self) -> PreviousSnapshot | None:
        row = (
            await self._connection.execute(_LATEST_SNAPSHOT, {"finished": list(reads.FINISHED_RUN_STATUSES)})
        ).first()
        return None if row is None else PreviousSnapshot(row.id, row.created_at, row.runs, row.finished_runs)

    async def last_arrival(self) -> datetime | None:
        return await self._connection.scalar(_LAST_ARRIVAL)

    async def write_snapshot(self, snapshot: NewSnapshot) -> int:
        items = snapshot.items
        raw = await self._raw()
        icons = await raw.fetchval(
            _SNAPSHOT_ICONS,
            snapshot.id,
            snapshot.parent_id,
            snapshot.reason,
            len(items),
            snapshot.new_label_count,
            _json(snapshot.details),
            SETTLED_BY_MODERATOR,
        )
        await raw.execute(
            _STORE_SNAPSHOT_ITEMS,
            snapshot.id,
            [i.kind for i in items],
            [i.key for i in items],
            [i.label for i in items],
            [_json(i.value) for i in items],
            [i.image_sha256 for i in items],
        )
        return icons

    async def published_version(self) -> str | None:
        published = await reads.latest_published_version(self._connection)
        return None if published is None else published.version

    async def predictions_of(self, refs: Collection[ItemRef]) -> dict[ItemRef, ModelPrediction]:
        if not refs:
            return {}
        rows = await (await self._raw()).fetch(_PREDICTIONS_OF, *_unzip(refs))
        return {
            (row[0], row[1]): ModelPrediction(
                row[2],
                row[3] or 0.0,
                row[4],
                bool(row[5]),
                None if row[8] is None else ModelPrediction(row[6], row[7] or 0.0, row[8], False),
            )
            for row in rows
        }

    async def request_predictions(
        self, refs: Collection[ItemRef], version: str, now: datetime, retry_after: timedelta, limit: int
    ) -> list[tuple[str, str, str]]:
        if not refs:
            return []
        rows = await (await self._raw()).fetch(
            _REQUEST_PREDICTIONS, *_unzip(refs), version, now, now - retry_after, limit
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def queue_withheld(self, kinds: Collection[str]) -> int:
        status = await (await self._raw()).execute(_QUEUE_WITHHELD, sorted(kinds))
        return int(status.rsplit(" ", 1)[-1])

    async def send(self, event: Event) -> None:
        await enqueue(self._connection, event)

    async def last_refresh_stats(self) -> dict[str, Any] | None:
        latest = select(consensus_refreshes.c.stats).order_by(consensus_refreshes.c.id.desc()).limit(1)
        return (await self._connection.execute(latest)).scalar()

    async def log_refresh(self, stats: dict[str, Any]) -> None:
        last_seq = await self._connection.scalar(text("SELECT coalesce(max(seq), 0) FROM votes"))
        await self._connection.execute(
            consensus_refreshes.insert().values(last_vote_seq=last_seq, stats=stats)
        )
