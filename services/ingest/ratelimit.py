"""Per-install and per-IP daily quotas in Postgres, shared by every ingest process and surviving restarts.

The hot path is one autocommitted statement per request on a plain asyncpg pool (no ORM, no explicit
transaction): the conditional upsert takes the row lock, so two processes can never both take the last unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Protocol

import asyncpg

_CONSUME = """
INSERT INTO rate_limit_counters AS c (scope, subject, day, count)
VALUES ('install', $1, $3, $4), ('ip', $2, $3, $4)
ON CONFLICT (scope, subject, day) DO UPDATE SET count = c.count + excluded.count
WHERE c.count + excluded.count <= CASE c.scope WHEN 'install' THEN $5::int ELSE $6::int END
RETURNING c.scope
"""
_REFUND = """
UPDATE rate_limit_counters SET count = greatest(count - $4, 0)
WHERE day = $3 AND ((scope = 'install' AND subject = $1) OR (scope = 'ip' AND subject = $2))
AND scope = ANY($5::text[])
"""


class QuotaExceeded(Exception):
    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"daily limit of {limit} contributions per {scope} reached")
        self.scope = scope
        self.limit = limit


@dataclass(frozen=True)
class Quota:
    per_install: int
    per_ip: int

    def limit(self, scope: str) -> int:
        return self.per_install if scope == "install" else self.per_ip


class RateLimiter(Protocol):
    async def consume(self, install_id: str, client_ip: str, units: int, day: date) -> None: ...

    async def refund(self, install_id: str, client_ip: str, units: int, day: date) -> None: ...


class PostgresRateLimiter:
    def __init__(self, pool: asyncpg.Pool, quota: Quota) -> None:
        self._pool = pool
        self._quota = quota

    async def consume(self, install_id: str, client_ip: str, units: int, day: date) -> None:
        """Take ``units`` from both quotas, or from neither and raise ``QuotaExceeded``."""
        for scope in ("install", "ip"):
            if units > self._quota.limit(scope):
                raise QuotaExceeded(scope, self._quota.limit(scope))
        rows = await self._pool.fetch(
            _CONSUME, install_id, client_ip, day, units, self._quota.per_install, self._quota.per_ip
        )
        taken = {row["scope"] for row in rows}
        if taken == {"install", "ip"}:
            return
        if taken:
            # One quota had room and the other did not: give the taken units back (rare; a crash here
            # over-counts by ``units``, the safe direction).
            await self._pool.execute(_REFUND, install_id, client_ip, day, units, list(taken))
        exceeded = "install" if "install" not in taken else "ip"
        raise QuotaExceeded(exceeded, self._quota.limit(exceeded))

    async def refund(self, install_id: str, client_ip: str, units: int, day: date) -> None:
        await self._pool.execute(_REFUND, install_id, client_ip, day, units, ["install", "ip"])
