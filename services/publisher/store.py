"""All of the publisher's SQL: its own ``model_versions`` and ``publication_log``, the outbox and inbox rows its
handlers commit with them, and its reads of others' tables (the trainer's runs, artifacts and blobs, voting's
knowledge map through ``shared.reads``).

Each method is one transaction, so what a handler records (a row, its log entry, the event that announces it)
commits together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import fields, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.publisher.domain import Published, Release, TrainedRun
from services.publisher.tables import model_versions, publication_log, release_mode
from shared.blobstore import PostgresBlobStore
from shared.db import claim_message, processed_messages
from shared.events import KnowledgePublished, ModelPublished
from shared.outbox import enqueue
from shared.reads import accepted_labels, latest_published_version, run_artifacts

CONSUMER = "publisher"
ERROR_CHARS = 2000  # enough to act on; a Hub error page can be far longer
# the trainer's record of a run: whether it succeeded and what its quality gate decided
_TRAINED_RUN = text(
    "SELECT status, coalesce((metrics->'quality_gate'->>'publish')::boolean, false) AS gate_passed "
    "FROM training_runs WHERE id = :run"
)


class ReleaseStore(Protocol):
    async def release_for(self, message_id: str) -> Release | None:
        """The release an earlier delivery of this message recorded."""

    async def release(self, version: str) -> Release | None: ...

    async def record_rejected(self, release: Release, reason: Any) -> None:
        """A release the quality gate refused (kept if already recorded), and its log entry."""

    async def record_pending(self, release: Release) -> None:
        """The release about to be published (kept if already recorded)."""

    async def record_failed(self, version: str, error: str) -> None: ...

    async def record_superseded(self, release: Release, reason: str) -> None:
        """A release older than the published one: its row (recorded before or not) says so, and the log."""

    async def record_refused(self, release: Release, reason: str) -> None:
        """A model.trained refused as it stands: a failed row with the reason when its run exists (else the
        log entry alone: the row could not name the run)."""

    async def trained_run(self, run_id: uuid.UUID) -> TrainedRun | None:
        """The trainer's record of a run; None when there is none."""

    async def current(self) -> Release | None:
        """The published release clients are told about; None before the first."""

    async def record_published(
        self, version: str, landed: Published, at: datetime, files: list[str], event: ModelPublished
    ) -> None:
        """The release is out: its row, its log entry and ``event`` in the outbox."""

    async def run_artifacts(self, run_id: uuid.UUID) -> dict[str, str]:
        """{Hub path: blob sha256} of a training run."""

    async def read_blobs(self, shas: Mapping[str, str]) -> dict[str, bytes]:
        """The same keys, each with its blob's bytes."""

    async def knowledge_map(self) -> dict[str, str]:
        """The pHash -> item name map, as voting's accepted consensus holds it now."""

    async def knowledge_published(self, message_id: str) -> bool: ...

    async def release_mode(self) -> str:
        """``automatic`` or ``held`` (automatic until a mode was asked for)."""

    async def set_release_mode(self, mode: str, requested_by: str, message_id: str) -> bool:
        """Claim the request, store the mode and log it; False (and nothing written) when claimed before."""

    async def record_held(self, release: Release) -> None:
        """A release that passed every check, recorded ``held`` until approved, and its log entry."""

    async def release_of_run(self, run_id: uuid.UUID) -> Release | None:
        """The release a training run's model.trained recorded (not a rollback to its weights)."""

    async def record_knowledge(
        self, message_id: str, landed: Published, entries: int, event: KnowledgePublished
    ) -> bool:
        """Claim the request, log the publication and enqueue ``event``; False (and nothing written) when the
        request was recorded before."""


class PostgresReleaseStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._blobs = PostgresBlobStore(engine)

    async def release_for(self, message_id: str) -> Release | None:
        return await self._one(model_versions.c.source_message_id == message_id)

    async def release(self, version: str) -> Release | None:
        return await self._one(model_versions.c.version == version)

    async def record_rejected(self, release: Release, reason: Any) -> None:
        async with self._engine.begin() as connection:
            await _insert(connection, release)
            await _log(connection, release.version, "rejected", None, {"reason": reason})

    async def record_pending(self, release: Release) -> None:
        async with self._engine.begin() as connection:
            await _insert(connection, release)

    async def record_failed(self, version: str, error: str) -> None:
        error = error[:ERROR_CHARS]
        async with self._engine.begin() as connection:
            await connection.execute(
                model_versions.update()
                .where(model_versions.c.version == version)
                .values(status="failed", error=error)
            )
            await _log(connection, version, "failed", None, {"error": error})

    async def record_superseded(self, release: Release, reason: str) -> None:
        async with self._engine.begin() as connection:
            await _upsert_status(connection, release, "superseded", None)
            await _log(connection, release.version, "superseded", None, {"reason": reason})

    async def record_refused(self, release: Release, reason: str) -> None:
        reason = reason[:ERROR_CHARS]
        async with self._engine.begin() as connection:
            try:
                async with connection.begin_nested():
                    await _upsert_status(connection, release, "failed", reason)
            except IntegrityError:  # the run or snapshot it names does not exist
                await _log(connection, None, "refused", None, {"reason": reason, "release": release.version})
            else:
                await _log(connection, release.version, "refused", None, {"reason": reason})

    async def trained_run(self, run_id: uuid.UUID) -> TrainedRun | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(_TRAINED_RUN, {"run": run_id})).first()
        return None if row is None else TrainedRun(row.status, row.gate_passed)

    async def current(self) -> Release | None:
        async with self._engine.connect() as connection:
            row = await latest_published_version(connection)
        return None if row is None else await self.release(row.version)

    async def record_published(
        self, version: str, landed: Published, at: datetime, files: list[str], event: ModelPublished
    ) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                model_versions.update()
                .where(model_versions.c.version == version)
                .values(
                    status="published",
                    hub_commit=landed.commit,
                    hub_tag=landed.tag,
                    published_at=at,
                    error=None,
                )
            )
            await _log(connection, version, "published", landed.commit, {"files": files})
            await enqueue(connection, event)

    async def run_artifacts(self, run_id: uuid.UUID) -> dict[str, str]:
        async with self._engine.connect() as connection:
            return await run_artifacts(connection, run_id)

    async def read_blobs(self, shas: Mapping[str, str]) -> dict[str, bytes]:
        return {key: await self._blobs.get(sha) for key, sha in shas.items()}

    async def knowledge_map(self) -> dict[str, str]:
        async with self._engine.connect() as connection:
            return await accepted_labels(connection, "knowledge")

    async def knowledge_published(self, message_id: str) -> bool:
        async with self._engine.connect() as connection:
            found = await connection.scalar(
                select(processed_messages.c.message_id).where(
                    processed_messages.c.consumer == CONSUMER,
                    processed_messages.c.message_id == message_id,
                )
            )
        return found is not None

    async def record_knowledge(
        self, message_id: str, landed: Published, entries: int, event: KnowledgePublished
    ) -> bool:
        async with self._engine.begin() as connection:
            if not await claim_message(connection, CONSUMER, message_id):
                return False
            await connection.execute(
                insert(publication_log).values(
                    kind="knowledge", event="published", hub_commit=landed.commit, detail={"entries": entries}
                )
            )
            await enqueue(connection, event)
        return True

    async def release_mode(self) -> str:
        async with self._engine.connect() as connection:
            mode = await connection.scalar(select(release_mode.c.mode).where(release_mode.c.id == 1))
        return mode or "automatic"

    async def set_release_mode(self, mode: str, requested_by: str, message_id: str) -> bool:
        async with self._engine.begin() as connection:
            if not await claim_message(connection, CONSUMER, message_id):
                return False
            values = {"mode": mode, "requested_by": requested_by, "updated_at": func.now()}
            await connection.execute(
                insert(release_mode)
                .values(id=1, **values)
                .on_conflict_do_update(index_elements=["id"], set_=values)
            )
            await _log(connection, None, "mode", None, {"mode": mode, "requested_by": requested_by})
        return True

    async def record_held(self, release: Release) -> None:
        async with self._engine.begin() as connection:
            await _insert(connection, replace(release, status="held"))
            await _log(connection, release.version, "held", None, {})

    async def release_of_run(self, run_id: uuid.UUID) -> Release | None:
        return await self._one((model_versions.c.run_id == run_id) & model_versions.c.rollback_of.is_(None))

    async def _one(self, where: Any) -> Release | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(*_RELEASE_COLUMNS).where(where))).first()
        return None if row is None else Release(**row._mapping)


_RELEASE_FIELDS = [f.name for f in fields(Release)]
_RELEASE_COLUMNS = [model_versions.c[name] for name in _RELEASE_FIELDS]


async def _insert(connection: AsyncConnection, release: Release) -> None:
    values = {name: getattr(release, name) for name in _RELEASE_FIELDS}
    await connection.execute(insert(model_versions).values(**values).on_conflict_do_nothing())


async def _upsert_status(
    connection: AsyncConnection, release: Release, status: str, error: str | None
) -> None:
    values = {name: getattr(release, name) for name in _RELEASE_FIELDS} | {"status": status, "error": error}
    await connection.execute(
        insert(model_versions)
        .values(**values)
        .on_conflict_do_update(index_elements=["version"], set_={"status": status, "error": error})
    )


async def _log(
    connection: AsyncConnection, version: str | None, event: str, commit: str | None, detail: dict[str, Any]
) -> None:
    await connection.execute(
        insert(publication_log).values(
            kind="model", version=version, event=event, hub_commit=commit, detail=detail
        )
    )
