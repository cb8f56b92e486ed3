"""All of ingest's SQL: its quota counters, and its read-only views of the records voting and the publisher own.

The reads another service also makes (the current release, accepted consensus) go through ``shared.reads``, so a
change of the owner's schema has one place to follow it.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.ratelimit import Key
from shared.reads import accepted_labels, latest_published_version

# Each counter's limit is looked up by its scope in the arrays $5 (scopes) and $6 (their limits).
_TAKE = """
INSERT INTO rate_limit_counters AS c (scope, subject, day, count)
SELECT v.scope, v.subject, v.day, v.count
FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[]) AS v(scope, subject, day, count)
WHERE v.count <= ($6::bigint[])[array_position($5::text[], v.scope::text)]
ON CONFLICT (scope, subject, day) DO UPDATE SET count = c.count + excluded.count
WHERE c.count + excluded.count <= ($6::bigint[])[array_position($5::text[], c.scope::text)]
RETURNING c.scope, c.subject, c.day
"""
# UPDATE ... FROM locks rows in whatever order its join visits them; the counters are locked first, in the
# same (byte) order as the claims take them, so a refund and a claim cannot deadlock (seen under a broker outage,
# when every request gives its quota back).
_GIVE_BACK = """
WITH v AS MATERIALIZED (
    SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::bigint[]) AS v(scope, subject, day, count)
), locked AS MATERIALIZED (
    SELECT c.scope, c.subject, c.day FROM rate_limit_counters AS c JOIN v USING (scope, subject, day)
    ORDER BY c.scope COLLATE "C", c.subject COLLATE "C", c.day
    FOR UPDATE OF c
)
UPDATE rate_limit_counters AS c SET count = greatest(c.count - v.count, 0)
FROM v JOIN locked USING (scope, subject, day)
WHERE c.scope = v.scope AND c.subject = v.subject AND c.day = v.day
"""
# A sequential scan, once a day per process: an index on day would cost every quota upsert more.
_PRUNE = "DELETE FROM rate_limit_counters WHERE day < $1"
_KNOWLEDGE_MERGE_COUNTS = text(
    "SELECT count(*) AS total, count(*) FILTER (WHERE updated_at > coalesce(("
    "  SELECT max(at) FROM publication_log WHERE kind = 'knowledge' AND event = 'published'"
    "), '-infinity')) AS merged "
    "FROM consensus WHERE item_kind = 'knowledge' AND status = 'accepted' AND label IS NOT NULL"
)


def _columns(amounts: dict[Key, int]) -> tuple[list, list, list, list]:
    """The counters as the statements' four arrays, in sorted key order (the order rows are locked in)."""
    keys = sorted(amounts)
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [amounts[k] for k in keys]


def asyncpg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _keep_connection_state(connection: asyncpg.Connection) -> None:
    """The quota statements leave no session state behind, so skip asyncpg's reset round trip per release."""


async def create_quota_pool(database_url: str, size: int) -> asyncpg.Pool:
    """asyncpg directly (not SQLAlchemy): the quota statement runs on every contribution request."""
    return await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=0,
        max_size=size,
        reset=_keep_connection_state,
        # Quota counters are soft state: losing the last few hundred milliseconds of increments in a
        # Postgres crash is acceptable, waiting for a WAL flush on every request is not.
        server_settings={"synchronous_commit": "off"},
    )


class PostgresQuotaCounters:
    """``ratelimit.QuotaCounters`` on ``rate_limit_counters``: per (scope, subject, UTC day), each statement one
    autocommitted round trip. Subjects are install ids and origin keys (keyed hashes), never addresses."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def take(self, amounts: dict[Key, int], limits: Mapping[str, int]) -> set[Key]:
        """Add the amounts to every counter they fit under its scope's limit; answer the counters that took them.

        The conditional upsert holds the row lock, so concurrent processes can never both take the last unit."""
        rows = await self._pool.fetch(_TAKE, *_columns(amounts), list(limits), list(limits.values()))
        return {(row["scope"], row["subject"], row["day"]) for row in rows}

    async def give_back(self, amounts: dict[Key, int]) -> None:
        await self._pool.execute(_GIVE_BACK, *_columns(amounts))

    async def prune(self, before: date) -> int:
        """Delete the counters of every day before ``before``; answer how many."""
        status = await self._pool.execute(_PRUNE, before)
        return int(status.rpartition(" ")[2])


class PostgresReads:
    """What clients poll, read from other services' tables; implements ``readmodels.ReadStore``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def latest_release(self):
        """The publisher's current release (a row: version, trained_at, n_classes, n_samples, n_users,
        metrics, ...), or None before the first."""
        async with self._engine.connect() as connection:
            return await latest_published_version(connection)

    async def accepted_labels(self, kind: str) -> dict[str, str]:
        async with self._engine.connect() as connection:
            return await accepted_labels(connection, kind)

    async def knowledge_merge_counts(self) -> tuple[int, int]:
        """(entries changed since the last knowledge publication, size of the knowledge map): the entries of
        ``shared.reads.accepted_labels(connection, "knowledge")``, which the publisher publishes."""
        async with self._engine.connect() as connection:
            row = (await connection.execute(_KNOWLEDGE_MERGE_COUNTS)).one()
        return row.merged, row.total


# --- the moderator console's reads (services/ingest/console) ----------------------------------------------------
# Consensus and trust rows are read whole (to_jsonb), so what voting adds to its evidence shows without a change
# here. Pages sort and cut on the keys first and build the rows of that page only.

CONTESTED_BELOW = 0.9  # an accepted label whose confidence is under this is reviewed as contested
_CONTRIBUTIONS_BY_HOUR = text(
    "SELECT date_trunc('hour', received_at) AS hour, item_kind, count(*) AS n FROM contributions "
    "WHERE received_at >= :since AND (CAST(:until AS timestamptz) IS NULL OR received_at < :until) "
    "GROUP BY 1, 2 ORDER BY 1"
)
_CONSENSUS_BY_STATUS = text(
    "SELECT item_kind, status, count(*) AS n FROM consensus GROUP BY 1, 2 ORDER BY 1, 2"
)
_RUNS = text(
    "SELECT id, snapshot_id, status, attempts, created_at, started_at, finished_at, deadline_at, metrics, error "
    "FROM training_runs ORDER BY created_at DESC LIMIT :limit"
)
_RUN = text(
    "SELECT id, snapshot_id, status, attempts, created_at, started_at, finished_at, deadline_at, metrics, error "
    "FROM training_runs WHERE id = :run"
)
_RELEASES = text(
    "SELECT version, run_id, trained_at, status, hub_commit, metrics, n_classes, n_samples, n_users, "
    "rollback_of, error, created_at, published_at FROM model_versions ORDER BY created_at DESC LIMIT :limit"
)
_RELEASE_MODE = text("SELECT mode, requested_by, updated_at FROM release_mode WHERE id = 1")
_REVIEW_QUEUE = text(
    "SELECT to_jsonb(c) AS item FROM ("
    "  SELECT item_kind, item_key, status = 'withheld' AS withheld, support FROM consensus"
    "  WHERE (status = 'withheld' OR confidence < :contested) AND (CAST(:kind AS text) IS NULL OR item_kind = :kind)"
    "  ORDER BY 3 DESC, support DESC, item_kind, item_key LIMIT :limit OFFSET :offset"
    ") AS page JOIN consensus c USING (item_kind, item_key) ORDER BY page.withheld DESC, page.support DESC, "
    "c.item_kind, c.item_key"
)
_ITEM = text("SELECT to_jsonb(c) AS item FROM consensus c WHERE item_kind = :kind AND item_key = :key")
_ITEM_VOTES = text("""
SELECT k.kind AS item_kind, k.key AS item_key, x.* FROM unnest(CAST(:kinds AS text[]), CAST(:keys AS text[])) AS k(kind, key)
CROSS JOIN LATERAL (
    SELECT v.install_id, v.label, v.voted_at, v.origin, v.model_guess, to_jsonb(t) AS trust
    FROM votes v LEFT JOIN install_trust t ON t.install_id = v.install_id
    WHERE v.item_kind = k.kind AND v.item_key = k.key
    ORDER BY v.voted_at DESC LIMIT :per_item
) x
""")
_LATEST_AUDIT = text(
    "SELECT DISTINCT ON (subject) subject, session, at, after FROM console_audit "
    "WHERE action = :action AND subject = ANY(CAST(:subjects AS text[])) ORDER BY subject, id DESC"
)
_INSTALLS = text(
    "SELECT t.install_id, to_jsonb(t) AS trust FROM ("
    "  SELECT install_id, cohort IS NOT NULL AS suspected, weight FROM install_trust"
    "  WHERE CAST(:prefix AS text) IS NULL OR install_id LIKE :prefix"
    "  ORDER BY 2 DESC, weight, install_id LIMIT :limit OFFSET :offset"
    ") AS page JOIN install_trust t USING (install_id) ORDER BY page.suspected DESC, page.weight, t.install_id"
)
_INSTALL_TRUST = text("SELECT to_jsonb(t) AS trust FROM install_trust t WHERE install_id = :id")
_INSTALL_ORIGINS = text(
    "SELECT install_id, count(DISTINCT origin) AS origins, count(*) AS votes "
    "FROM votes WHERE install_id = ANY(CAST(:ids AS text[])) GROUP BY install_id"
)
_INSTALL_BANS = text(
    "SELECT b.install_id, to_jsonb(b) AS ban FROM install_bans b WHERE b.install_id = ANY(CAST(:ids AS text[]))"
)
_INSTALL_VOTES = text(
    "SELECT v.item_kind, v.item_key, v.label, v.voted_at, c.label AS consensus_label, c.status "
    "FROM votes v LEFT JOIN consensus c USING (item_kind, item_key) "
    "WHERE v.install_id = :install ORDER BY v.voted_at DESC LIMIT :limit"
)
_INSTALL_ORIGIN_LIST = text(
    "SELECT origin, count(*) AS n, max(voted_at) AS last FROM votes "
    "WHERE install_id = :install GROUP BY 1 ORDER BY n DESC LIMIT 20"
)
_AUDIT = text(
    "SELECT id, at, session, action, subject, before, after, message_id FROM console_audit "
    "WHERE (CAST(:subject AS text) IS NULL OR subject = :subject) ORDER BY id DESC LIMIT :limit"
)
_RECORD_AUDIT = text(
    "INSERT INTO console_audit (session, action, subject, before, after, message_id) "
    "VALUES (:session, :action, :subject, CAST(:before AS jsonb), CAST(:after AS jsonb), :message_id) "
    "RETURNING id"
)
# The gold set: the latest decision per item, voting's record of those it applied (state applied) and the
# console's decisions it has not recorded yet (state sent).
_GOLD_APPLIED = """
SELECT DISTINCT ON (item_kind, item_key) item_kind, item_key, label, moderator, note, decided_at, message_id,
       'applied' AS state
FROM moderator_decisions ORDER BY item_kind, item_key, decided_at DESC, id DESC
"""
_GOLD_SENT = """
SELECT DISTINCT ON (subject) after->>'item_kind' AS item_kind, after->>'item_key' AS item_key,
       after->>'label' AS label, session AS moderator, coalesce(after->>'note', '') AS note, at AS decided_at,
       message_id, 'sent' AS state
FROM console_audit WHERE action = 'item_decided' ORDER BY subject, id DESC
"""
_GOLD = f"""
WITH applied AS ({_GOLD_APPLIED}), sent AS ({_GOLD_SENT})
SELECT * FROM applied UNION ALL
SELECT * FROM sent s WHERE NOT EXISTS (
    SELECT 1 FROM applied a WHERE a.item_kind = s.item_kind AND a.item_key = s.item_key
)
"""
_GOLD_COUNTS = text(
    f"SELECT item_kind, label, state, count(*) AS n FROM ({_GOLD}) AS gold GROUP BY 1, 2, 3 ORDER BY 1, 4 DESC, 2"
)
_ITEM_CROPS = text(
    "SELECT DISTINCT ON (ct.image_sha256) k.kind AS item_kind, k.key AS item_key, ct.image_sha256 "
    "FROM unnest(CAST(:kinds AS text[]), CAST(:keys AS text[])) AS k(kind, key) "
    "CROSS JOIN LATERAL (SELECT v.contribution_id FROM votes v WHERE v.item_kind = k.kind "
    "  AND v.item_key = k.key LIMIT 1) v JOIN contributions ct ON ct.contribution_id = v.contribution_id "
    "WHERE ct.image_sha256 IS NOT NULL"
)
_BLOB = text("SELECT data FROM blobs WHERE sha256 = :sha")
_BLOB_OF_RUN = text(
    "SELECT b.data FROM model_artifacts a JOIN blobs b ON b.sha256 = a.blob_sha256 "
    "WHERE a.run_id = :run AND a.path = :path"
)


def _audit_subject(kind: str, key: str) -> str:
    return f"{kind}:{key}"


class PostgresConsoleReads:
    """What the console shows, read from every service's tables; its own audit log is the one thing it writes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def contributions_by_hour(self, since: datetime, until: datetime | None) -> list[Any]:
        """(hour, item_kind, n) of the contributions voting received from ``since`` up to ``until``."""
        async with self._engine.connect() as connection:
            params = {"since": since, "until": until}
            return (await connection.execute(_CONTRIBUTIONS_BY_HOUR, params)).all()

    async def overview(self) -> dict[str, Any]:
        async with self._engine.connect() as connection:
            consensus = (await connection.execute(_CONSENSUS_BY_STATUS)).all()
            release = await latest_published_version(connection)
            runs = (await connection.execute(_RUNS, {"limit": 1})).all()
        return {
            "consensus": consensus,
            "release": release,
            "run": runs[0] if runs else None,
        }

    async def review_queue(self, kind: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Withheld items, then contested ones (accepted under ``CONTESTED_BELOW``), most evidence first, each
        with its latest votes (install, label, origin, the client model's guess, the install's trust row), its
        crops and the console's last decision on it."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                _REVIEW_QUEUE,
                {"contested": CONTESTED_BELOW, "kind": kind, "limit": limit, "offset": offset},
            )
            items = [row.item for row in rows]
            return await self._with_evidence(connection, items)

    async def item(self, kind: str, key: str) -> dict[str, Any] | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(_ITEM, {"kind": kind, "key": key})).first()
            if row is None:
                return None
            [item] = await self._with_evidence(connection, [row.item])
        return item

    async def _with_evidence(self, connection, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not items:
            return []
        keys = {"kinds": [i["item_kind"] for i in items], "keys": [i["item_key"] for i in items]}
        votes = await connection.execute(_ITEM_VOTES, keys | {"per_item": 50})
        crops = await connection.execute(_ITEM_CROPS, keys)
        subjects = [_audit_subject(i["item_kind"], i["item_key"]) for i in items]
        decided = await connection.execute(_LATEST_AUDIT, {"action": "item_decided", "subjects": subjects})
        by_item: dict[tuple[str, str], dict[str, Any]] = {
            (i["item_kind"], i["item_key"]): {"item": i, "votes": [], "crops": [], "decision": None}
            for i in items
        }
        for vote in votes:
            by_item[vote.item_kind, vote.item_key]["votes"].append(vote._asdict())
        for crop in crops:
            by_item[crop.item_kind, crop.item_key]["crops"].append(crop.image_sha256)
        for row in decided:
            kind, _, key = row.subject.partition(":")
            by_item[kind, key]["decision"] = row._asdict()
        return list(by_item.values())

    async def installs(self, prefix: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """Installs, those in a suspected cohort first, each with its trust rows per item kind, distinct
        origins, ban state (voting's, once it keeps one) and the console's last ban request."""
        pattern = prefix.replace("_", "\\_") + "%" if prefix else None
        async with self._engine.connect() as connection:
            params = {"prefix": pattern, "limit": limit, "offset": offset}
            rows = (await connection.execute(_INSTALLS, params)).all()
            return await self._install_details(connection, [(r.install_id, r.trust) for r in rows])

    async def install(self, install_id: str) -> dict[str, Any]:
        async with self._engine.connect() as connection:
            trust = await connection.scalar(_INSTALL_TRUST, {"id": install_id})
            [detail] = await self._install_details(connection, [(install_id, trust)])
            detail["votes"] = (
                await connection.execute(_INSTALL_VOTES, {"install": install_id, "limit": 100})
            ).all()
            detail["origin_list"] = (
                await connection.execute(_INSTALL_ORIGIN_LIST, {"install": install_id})
            ).all()
        return detail

    async def _install_details(
        self, connection, installs: list[tuple[str, dict[str, Any] | None]]
    ) -> list[dict[str, Any]]:
        ids = [install_id for install_id, _ in installs]
        origins = {r.install_id: r for r in await connection.execute(_INSTALL_ORIGINS, {"ids": ids})}
        bans = {r.install_id: r.ban for r in await connection.execute(_INSTALL_BANS, {"ids": ids})}
        requested = {
            r.subject: r._asdict()
            for r in await connection.execute(_LATEST_AUDIT, {"action": "install_moderated", "subjects": ids})
        }
        return [
            {
                "install_id": install_id,
                "trust": trust,
                "origins": origins[install_id].origins if install_id in origins else 0,
                "votes": origins[install_id].votes if install_id in origins else 0,
                "ban": bans.get(install_id),
                "requested": requested.get(install_id),
            }
            for install_id, trust in installs
        ]

    async def releases(self) -> dict[str, Any]:
        async with self._engine.connect() as connection:
            mode = (await connection.execute(_RELEASE_MODE)).first()
            releases = (await connection.execute(_RELEASES, {"limit": 30})).all()
            runs = (await connection.execute(_RUNS, {"limit": 20})).all()
            current = await latest_published_version(connection)
        return {"mode": mode, "releases": releases, "runs": runs, "current": current}

    async def run(self, run_id: uuid.UUID) -> Any:
        async with self._engine.connect() as connection:
            return (await connection.execute(_RUN, {"run": run_id})).first()

    async def run_file(self, run_id: uuid.UUID, path: str) -> bytes | None:
        """One artifact of a training run (its curve, its per-class accuracy), or None."""
        async with self._engine.connect() as connection:
            data = await connection.scalar(_BLOB_OF_RUN, {"run": run_id, "path": path})
        return None if data is None else bytes(data)

    async def blob(self, sha256: str) -> bytes | None:
        async with self._engine.connect() as connection:
            data = await connection.scalar(_BLOB, {"sha": sha256})
        return None if data is None else bytes(data)

    async def gold(self, form: str) -> bytes:
        """Moderator-decided items (item_kind, item_key, label, moderator, note, decided_at, message_id, state), the latest decision per item: voting's record of those it
        applied (state ``applied``), and the console's decisions voting has not recorded yet (``sent``); as CSV
        with a header or as a JSON array, written by Postgres (``form``: csv or json)."""
        async with self._engine.connect() as connection:
            if form == "json":
                body = await connection.scalar(
                    text(f"SELECT coalesce(json_agg(g), '[]') FROM ({_GOLD}) AS g")
                )
                return body.encode() if isinstance(body, str) else json.dumps(body).encode()
            out = io.BytesIO()
            raw = (await connection.get_raw_connection()).driver_connection
            await raw.copy_from_query(_GOLD, output=out, format="csv", header=True)
            return out.getvalue()

    async def gold_counts(self) -> list[Any]:
        """(item_kind, label, state, items) of the gold set; a rejection's label is None."""
        async with self._engine.connect() as connection:
            return (await connection.execute(_GOLD_COUNTS)).all()

    async def audit(self, subject: str | None = None, limit: int = 100) -> list[Any]:
        async with self._engine.connect() as connection:
            return (await connection.execute(_AUDIT, {"subject": subject, "limit": limit})).all()

    @contextlib.asynccontextmanager
    async def audited(
        self,
        session: str,
        action: str,
        subject: str,
        before: dict[str, Any],
        after: dict[str, Any],
        message_id: str,
    ) -> AsyncIterator[int]:
        """Log an action; the row commits when the block (which sends the action's event) leaves without error."""
        async with self._engine.begin() as connection:
            yield await connection.scalar(
                _RECORD_AUDIT,
                {
                    "session": session,
                    "action": action,
                    "subject": subject,
                    "before": json.dumps(before, default=str),
                    "after": json.dumps(after, default=str),
                    "message_id": message_id,
                },
            )
