"""All of the trainer's SQL: its own tables (``training_runs``, ``checkpoints``, ``model_artifacts``, blobs it
writes) and its reads of others' (voting's snapshots and votes, the publisher's current release).

``TrainerStore`` is the protocol the service layer uses; tests implement it in memory."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.trainer.domain.data import SnapshotItem
from services.trainer.domain.gold import GoldItem
from services.trainer.domain.runs import Attempt, Labels, Run
from services.trainer.tables import checkpoints, gold_items, model_artifacts, training_runs
from shared.blobstore import PostgresBlobStore, delete_unreferenced
from shared.outbox import enqueue
from shared.reads import UNFINISHED_RUN_STATUSES, latest_published_version, run_artifacts, snapshot_labels

if TYPE_CHECKING:  # the release module brings torch and ONNX Runtime; the store needs only the type
    from services.trainer.release import Release

ACTIVE_TRAINER_LOCK = 0x57A7_0002
ERROR_LENGTH = 2000
# voting's tables, read as SQL text: services share the database, not each other's modules
_SNAPSHOT_ITEMS = text(
    "SELECT item_kind, item_key, label, value, image_sha256 FROM snapshot_items WHERE snapshot_id = :s"
)
_N_USERS = text(
    "SELECT count(DISTINCT install_id) FROM votes WHERE item_kind = 'icon' AND item_key IN "
    "(SELECT item_key FROM snapshot_items WHERE snapshot_id = :s AND item_kind = 'icon')"
)

# The newest snapshot, made after :mine, whose release is published or on its way: it passed its gates here
# and the publisher has not handled it yet, or holds it pending (an imprint release the lane made meanwhile).
_NEWER_SNAPSHOT = text(
    "SELECT s.id FROM training_snapshots s JOIN training_snapshots mine ON mine.id = :mine "
    "WHERE s.created_at > mine.created_at AND (s.id = :published OR EXISTS ("
    " SELECT 1 FROM training_runs r LEFT JOIN model_versions v ON v.run_id = r.id"
    " WHERE r.snapshot_id = s.id AND r.status = 'succeeded'"
    " AND (r.metrics->'quality_gate'->>'publish')::boolean"
    " AND (v.run_id IS NULL OR v.status IN ('pending', 'published')))) "
    "ORDER BY s.created_at DESC LIMIT 1"
)


class RunTakenOver(RuntimeError):
    """Another trainer holds a newer attempt of the run: its result stands, not ours."""


class TrainerStore(Protocol):
    async def record_request(self, message_id: str, snapshot_id: uuid.UUID) -> None: ...

    async def unfinished_runs(self) -> list[uuid.UUID]: ...

    async def run(self, run_id: uuid.UUID) -> Run: ...

    async def start_attempt(self, run_id: uuid.UUID, attempt: Attempt) -> None: ...

    async def skip(self, run_id: uuid.UUID, reason: str, now: datetime) -> None: ...

    async def fail(self, run: Run, error: str, now: datetime) -> None: ...

    async def snapshot_items(self, snapshot_id: uuid.UUID) -> list[SnapshotItem]: ...

    async def published_snapshot(self) -> tuple[uuid.UUID | None, Labels]: ...

    async def published_artifacts(self, paths: Collection[str]) -> dict[str, str]: ...

    async def newer_released_snapshot(self, snapshot_id: uuid.UUID) -> uuid.UUID | None:
        """A snapshot voting made after ``snapshot_id`` whose release is published or on its way."""

    async def checkpoint(self, run_id: uuid.UUID, kind: str) -> str | None: ...

    async def save_checkpoint(self, run_id: uuid.UUID, kind: str, epoch: int, data: bytes) -> None: ...

    async def n_users(self, snapshot_id: uuid.UUID) -> int: ...

    async def gold(self, kind: str) -> list[GoldItem]: ...

    async def finish(self, run: Run, release: Release, now: datetime) -> None: ...

    async def has_run(self, run_id: uuid.UUID) -> bool: ...

    async def finish_imprint(self, parent: Run, release: Release, now: datetime) -> None: ...

    def active_lock(self) -> contextlib.AbstractAsyncContextManager[Callable[[], Awaitable[None]]]: ...


class PredictionStore(Protocol):
    """What the predictor reads: the published release and its training snapshot's items."""

    async def published_release(self) -> PublishedRelease | None: ...

    async def release_artifacts(self, run_id: uuid.UUID, paths: Collection[str]) -> dict[str, str]: ...

    async def snapshot_refs(self, snapshot_id: uuid.UUID) -> set[tuple[str, str]]: ...


@dataclass(frozen=True)
class PublishedRelease:
    version: str
    run_id: uuid.UUID
    snapshot_id: uuid.UUID


class PostgresTrainerStore:
    def __init__(self, engine: AsyncEngine, lock_retry_seconds: float = 5.0) -> None:
        self._engine = engine
        self._lock_retry_seconds = lock_retry_seconds

    # --- runs ------------------------------------------------------------------------------------------------------

    async def record_request(self, message_id: str, snapshot_id: uuid.UUID) -> None:
        """A redelivered request is the same run (keyed by its message id)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(training_runs)
                .values(
                    id=uuid.uuid4(), request_message_id=message_id, snapshot_id=snapshot_id, status="pending"
                )
                .on_conflict_do_nothing(index_elements=["request_message_id"])
            )

    async def unfinished_runs(self) -> list[uuid.UUID]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(training_runs.c.id)
                .where(training_runs.c.status.in_(UNFINISHED_RUN_STATUSES))
                .order_by(training_runs.c.created_at)
            )
            return list(rows.scalars())

    async def run(self, run_id: uuid.UUID) -> Run:
        columns = [training_runs.c[name] for name in Run.__dataclass_fields__]
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(*columns).where(training_runs.c.id == run_id))).one()
        return Run(**row._mapping)

    async def start_attempt(self, run_id: uuid.UUID, attempt: Attempt) -> None:
        await self._update(
            run_id,
            status="running",
            attempts=attempt.number,
            started_at=attempt.started_at,
            deadline_at=attempt.deadline_at,
        )

    async def skip(self, run_id: uuid.UUID, reason: str, now: datetime) -> None:
        """The run ends without training; checkpoints of an earlier attempt (a resumed run superseded by a newer
        snapshot's) go with it."""
        async with self._engine.begin() as connection:
            await connection.execute(
                training_runs.update()
                .where(training_runs.c.id == run_id)
                .values(status="skipped", finished_at=now, metrics={"skipped": reason})
            )
            await _drop_checkpoints(connection, run_id)

    async def fail(self, run: Run, error: str, now: datetime) -> None:
        """The run failed, and its checkpoints go, only if ``run`` is still its latest attempt (raises
        ``RunTakenOver`` otherwise, leaving the other trainer's run as it is)."""
        async with self._engine.begin() as connection:
            failed = await connection.execute(
                training_runs.update()
                .where(*_latest_attempt(run))
                .values(status="failed", finished_at=now, error=error[:ERROR_LENGTH])
            )
            if failed.rowcount != 1:
                raise RunTakenOver(f"run {run.id} was taken over by another trainer")
            await _drop_checkpoints(connection, run.id)

    async def _update(self, run_id: uuid.UUID, **values: Any) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                training_runs.update().where(training_runs.c.id == run_id).values(**values)
            )

    async def finish(self, run: Run, release: Release, now: datetime) -> None:
        """Artifacts, the run's success and ``model.trained`` in one transaction, only if ``run`` is still the
        latest attempt (raises ``RunTakenOver`` otherwise, leaving nothing behind)."""
        async with self._engine.begin() as connection:
            await _store_artifacts(connection, run.id, release.files)
            await _drop_checkpoints(connection, run.id)
            finished = await connection.execute(
                training_runs.update()
                .where(*_latest_attempt(run))
                .values(status="succeeded", finished_at=now, metrics=release.metrics)
            )
            if finished.rowcount != 1:
                raise RunTakenOver(f"run {run.id} was taken over by another trainer")
            if release.event.quality_gate_passed and release.gold:
                await _store_gold(connection, run.id, release.gold)
            await enqueue(connection, release.event)

    async def has_run(self, run_id: uuid.UUID) -> bool:
        async with self._engine.connect() as connection:
            return bool(await connection.scalar(select(func.count()).where(training_runs.c.id == run_id)))

    async def finish_imprint(self, parent: Run, release: Release, now: datetime) -> None:
        """An imprint release as a finished run of its own (``release.event.run_id``), with its artifacts, gold
        and ``model.trained``, in one transaction; only while ``parent`` is still the latest attempt."""
        async with self._engine.begin() as connection:
            current = await connection.scalar(select(func.count()).where(*_latest_attempt(parent)))
            if current != 1:
                raise RunTakenOver(f"run {parent.id} was taken over by another trainer")
            run_id = release.event.run_id
            await connection.execute(
                insert(training_runs).values(
                    id=run_id,
                    request_message_id=f"imprint-{parent.id}",
                    snapshot_id=parent.snapshot_id,
                    status="succeeded",
                    attempts=1,
                    started_at=parent.started_at,
                    finished_at=now,
                    metrics=release.metrics,
                )
            )
            await _store_artifacts(connection, run_id, release.files)
            if release.event.quality_gate_passed and release.gold:
                await _store_gold(connection, run_id, release.gold)
            await enqueue(connection, release.event)

    # --- the gold set ----------------------------------------------------------------------------------------------

    async def gold(self, kind: str) -> list[GoldItem]:
        columns = [gold_items.c.model_kind, gold_items.c.item_key, gold_items.c.label]
        columns += [gold_items.c.image_sha256, gold_items.c.source]
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(*columns).where(gold_items.c.model_kind == kind).order_by(gold_items.c.item_key)
            )
            return [GoldItem(*row) for row in rows]

    # --- checkpoints -----------------------------------------------------------------------------------------------

    async def checkpoint(self, run_id: uuid.UUID, kind: str) -> str | None:
        async with self._engine.connect() as connection:
            return await _checkpoint_sha(connection, run_id, kind)

    async def save_checkpoint(self, run_id: uuid.UUID, kind: str, epoch: int, data: bytes) -> None:
        async with self._engine.begin() as connection:
            sha = await PostgresBlobStore.put_in(connection, data)
            old = await _checkpoint_sha(connection, run_id, kind)
            await connection.execute(
                insert(checkpoints)
                .values(run_id=run_id, model_kind=kind, epoch=epoch, blob_sha256=sha)
                .on_conflict_do_update(
                    index_elements=["run_id", "model_kind"],
                    set_={"epoch": epoch, "blob_sha256": sha, "updated_at": func.now()},
                )
            )
            if old is not None and old != sha:
                await delete_unreferenced(connection, [old])

    # --- reads of other services' tables ---------------------------------------------------------------------------

    async def snapshot_items(self, snapshot_id: uuid.UUID) -> list[SnapshotItem]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(_SNAPSHOT_ITEMS, {"s": snapshot_id})
            return [SnapshotItem(*row) for row in rows]

    async def published_snapshot(self) -> tuple[uuid.UUID | None, Labels]:
        """The snapshot the published model was trained on, and its icon and screen labels; (None, {}) while
        the published release is an imprint release (its snapshot was not trained on: a run of the same labels,
        superseding that snapshot's own run, must still train)."""
        async with self._engine.connect() as connection:
            published = await latest_published_version(connection)
            if published is None or (published.metrics or {}).get("release") == "imprint":
                return None, {}
            return published.snapshot_id, await snapshot_labels(connection, published.snapshot_id)

    async def newer_released_snapshot(self, snapshot_id: uuid.UUID) -> uuid.UUID | None:
        """A snapshot newer than ``snapshot_id`` whose release is published, or passed its gates and is on its
        way to the publisher (which may not have handled it yet)."""
        async with self._engine.connect() as connection:
            published = await latest_published_version(connection)
            newer = {"published": published.snapshot_id if published else None, "mine": snapshot_id}
            return await connection.scalar(_NEWER_SNAPSHOT, newer)

    async def published_artifacts(self, paths: Collection[str]) -> dict[str, str]:
        """{path: blob sha} of those of ``paths`` that the published release holds."""
        async with self._engine.connect() as connection:
            published = await latest_published_version(connection)
            if published is None:
                return {}
            return await run_artifacts(connection, published.run_id, paths)

    async def published_release(self) -> PublishedRelease | None:
        """The release clients are told about (the publisher's ``model_versions``); None before the first."""
        async with self._engine.connect() as connection:
            published = await latest_published_version(connection)
        if published is None:
            return None
        return PublishedRelease(published.version, published.run_id, published.snapshot_id)

    async def release_artifacts(self, run_id: uuid.UUID, paths: Collection[str]) -> dict[str, str]:
        """{path: blob sha} of those of ``paths`` that the run's release holds."""
        async with self._engine.connect() as connection:
            return await run_artifacts(connection, run_id, paths)

    async def snapshot_refs(self, snapshot_id: uuid.UUID) -> set[tuple[str, str]]:
        """(kind, key) of every icon and screenshot of a training snapshot."""
        async with self._engine.connect() as connection:
            return set(await snapshot_labels(connection, snapshot_id))

    async def n_users(self, snapshot_id: uuid.UUID) -> int:
        """How many installs voted on the snapshot's icons (voting's ``votes``)."""
        async with self._engine.connect() as connection:
            return int(await connection.scalar(_N_USERS, {"s": snapshot_id}) or 0)

    # --- the active trainer ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def active_lock(self) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """Wait until this process holds the active trainer's advisory lock; yields a check that raises once the
        lock's connection (and with it the lock) is lost."""
        async with self._engine.connect() as connection:
            while not await connection.scalar(select(func.pg_try_advisory_lock(ACTIVE_TRAINER_LOCK))):
                await connection.commit()
                await asyncio.sleep(self._lock_retry_seconds)
            await connection.commit()  # the session lock stays; no transaction is left idle open

            async def still_held() -> None:
                await connection.execute(select(1))
                await connection.commit()

            yield still_held


async def _store_artifacts(connection: AsyncConnection, run_id: uuid.UUID, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        sha = await PostgresBlobStore.put_in(connection, data)
        await connection.execute(
            insert(model_artifacts).values(run_id=run_id, path=path, blob_sha256=sha).on_conflict_do_nothing()
        )


async def _store_gold(connection: AsyncConnection, run_id: uuid.UUID, items: Collection[GoldItem]) -> None:
    """Added gold items; a moderator's label replaces a stored one, an evidence item never does."""
    rows = [
        {
            "model_kind": item.kind,
            "item_key": item.key,
            "label": item.label,
            "image_sha256": item.image_sha256,
            "source": item.source,
            "run_id": run_id,
        }
        for item in items
    ]
    statement = insert(gold_items).values(rows)
    await connection.execute(
        statement.on_conflict_do_update(
            index_elements=["model_kind", "item_key"],
            set_={"label": statement.excluded.label, "source": statement.excluded.source, "run_id": run_id},
            where=statement.excluded.source == "moderator",
        )
    )


def _latest_attempt(run: Run) -> tuple[Any, ...]:
    """The run's row, as long as no other trainer started a newer attempt of it since ``run`` was read."""
    return (
        training_runs.c.id == run.id,
        training_runs.c.status.in_(UNFINISHED_RUN_STATUSES),
        training_runs.c.attempts == run.attempts,
    )


async def _checkpoint_sha(connection: AsyncConnection, run_id: uuid.UUID, kind: str) -> str | None:
    return await connection.scalar(
        select(checkpoints.c.blob_sha256).where(
            checkpoints.c.run_id == run_id, checkpoints.c.model_kind == kind
        )
    )


async def _drop_checkpoints(connection: AsyncConnection, run_id: uuid.UUID) -> None:
    dropped = await connection.execute(
        checkpoints.delete().where(checkpoints.c.run_id == run_id).returning(checkpoints.c.blob_sha256)
    )
    await delete_unreferenced(connection, dropped.scalars().all())
