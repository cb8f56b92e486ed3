"""Reads that more than one service makes of another service's tables, written once.

Each owner keeps writing its own tables; these are the read-only views others rely on (the publisher's
current release, voting's snapshots and accepted consensus, the trainer's runs and their artifacts), so a
change of the owner's schema has one place to follow it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import Row, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

_LATEST_PUBLISHED = text(
    "SELECT version, run_id, snapshot_id, trained_at, n_classes, n_samples, n_users, metrics "
    "FROM model_versions WHERE status = 'published' ORDER BY trained_at DESC LIMIT 1"
)
_SNAPSHOT_LABELS = text(
    "SELECT item_kind, item_key, label FROM snapshot_items WHERE snapshot_id = :snapshot AND item_kind IN :kinds"
).bindparams(bindparam("kinds", expanding=True))
_RUN_ARTIFACTS = text(
    "SELECT path, blob_sha256 FROM model_artifacts WHERE run_id = :run AND path IN :paths"
).bindparams(bindparam("paths", expanding=True, type_=String))
_ALL_RUN_ARTIFACTS = text("SELECT path, blob_sha256 FROM model_artifacts WHERE run_id = :run")
_ACCEPTED_LABELS = text(
    "SELECT item_key, label FROM consensus "
    "WHERE item_kind = :kind AND status = 'accepted' AND label IS NOT NULL ORDER BY item_key"
)

TRAINED_KINDS = ("icon", "screen")
# the trainer's ``training_runs.status``; voting waits for a finished run before it snapshots again
UNFINISHED_RUN_STATUSES = ("pending", "running")
FINISHED_RUN_STATUSES = ("succeeded", "failed", "skipped")
RUN_STATUSES = (*UNFINISHED_RUN_STATUSES, *FINISHED_RUN_STATUSES)


async def latest_published_version(connection: AsyncConnection) -> Row[Any] | None:
    """The release clients are told about (publisher's ``model_versions``): version, run_id, snapshot_id,
    trained_at, n_classes, n_samples, n_users, metrics; None before the first release."""
    return (await connection.execute(_LATEST_PUBLISHED)).first()


async def snapshot_labels(
    connection: AsyncConnection, snapshot_id: uuid.UUID, kinds: Iterable[str] = TRAINED_KINDS
) -> dict[tuple[str, str], str | None]:
    """{(item kind, item key): label} of one of voting's immutable training snapshots."""
    rows = await connection.execute(_SNAPSHOT_LABELS, {"snapshot": snapshot_id, "kinds": list(kinds)})
    return {(row.item_kind, row.item_key): row.label for row in rows}


async def run_artifacts(
    connection: AsyncConnection, run_id: uuid.UUID, paths: Collection[str] | None = None
) -> dict[str, str]:
    """{Hub path: blob sha256} of a training run's ``model_artifacts`` (the trainer's), all of them or those
    of ``paths``."""
    if paths is None:
        rows = await connection.execute(_ALL_RUN_ARTIFACTS, {"run": run_id})
    else:
        rows = await connection.execute(_RUN_ARTIFACTS, {"run": run_id, "paths": list(paths)})
    return {row.path: row.blob_sha256 for row in rows}


async def accepted_labels(connection: AsyncConnection, kind: str) -> dict[str, str]:
    """{item key: label} of voting's accepted consensus of one item kind (``knowledge`` is the pHash map)."""
    rows = await connection.execute(_ACCEPTED_LABELS, {"kind": kind})
    return {row.item_key: row.label for row in rows}
