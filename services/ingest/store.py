"""All of ingest's SQL: its quota counters, and its read-only views of the records voting and the publisher own.

The reads another service also makes (the current release, accepted consensus) go through ``shared.reads``, so a
change of the owner's schema has one place to follow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

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
