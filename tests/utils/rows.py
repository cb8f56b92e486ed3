"""Small factories for the rows other services' reads depend on: a snapshot with its items, a training run, a
model version, a consensus entry. Each takes an open connection and inserts the fewest columns the schema
requires."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


def trained_at(second: int) -> str:
    """A ``trained_at`` in the fixed-width form the clients compare as a string."""
    return f"2026-01-01T00:00:{second:02d}.000000+00:00Z"


async def add_snapshot(
    connection: AsyncConnection, items: Iterable[tuple[str, str, str | None, str | None]] = ()
) -> uuid.UUID:
    """A snapshot of ``items``: (item kind, item key, label, image sha256 or None)."""
    snapshot_id = uuid.uuid4()
    rows = [
        {"snapshot": snapshot_id, "kind": kind, "key": key, "label": label, "sha": sha}
        for kind, key, label, sha in items
    ]
    await connection.execute(
        text(
            "INSERT INTO training_snapshots (id, reason, item_count, new_label_count) VALUES (:id, 'admin', :n, :n)"
        ),
        {"id": snapshot_id, "n": len(rows)},
    )
    if rows:
        await connection.execute(
            text(
                "INSERT INTO snapshot_items (snapshot_id, item_kind, item_key, label, image_sha256) "
                "VALUES (:snapshot, :kind, :key, :label, :sha)"
            ),
            rows,
        )
    return snapshot_id


async def add_run(
    connection: AsyncConnection, snapshot_id: uuid.UUID, status: str = "succeeded"
) -> uuid.UUID:
    run_id = uuid.uuid4()
    await connection.execute(
        text(
            "INSERT INTO training_runs (id, request_message_id, snapshot_id, status) VALUES (:id, :m, :s, :status)"
        ),
        {"id": run_id, "m": f"request-{run_id}", "s": snapshot_id, "status": status},
    )
    return run_id


async def add_version(
    connection: AsyncConnection,
    version: str,
    *,
    trained_at: str,
    status: str = "published",
    n_classes: int = 3,
    metrics: dict | None = None,
    snapshot_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A model version of a run of ``snapshot_id`` (default: a new, empty snapshot); returns the run's id."""
    snapshot_id = snapshot_id or await add_snapshot(connection)
    run_id = await add_run(connection, snapshot_id)
    await connection.execute(
        text(
            "INSERT INTO model_versions (version, source_message_id, run_id, snapshot_id, trained_at, status, "
            "n_classes, n_samples, n_users, metrics) "
            "VALUES (:v, :m, :run, :snapshot, :t, :status, :classes, 10 * :classes, 5, CAST(:metrics AS jsonb))"
        ),
        {
            "v": version,
            "m": f"trained-{version}",
            "run": run_id,
            "snapshot": snapshot_id,
            "t": trained_at,
            "status": status,
            "classes": n_classes,
            "metrics": json.dumps(metrics or {}),
        },
    )
    return run_id


async def add_consensus(
    connection: AsyncConnection, kind: str, key: str, label: str | None, status: str = "accepted"
) -> None:
    await connection.execute(
        text(
            "INSERT INTO consensus (item_kind, item_key, label, status, support, confidence) "
            "VALUES (:kind, :key, :label, :status, 3, 0.9)"
        ),
        {"kind": kind, "key": key, "label": label, "status": status},
    )
