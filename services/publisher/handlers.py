"""The publisher's service layer: releases (model.trained, rollbacks) and knowledge-map publications.

Each handler is idempotent: the release row is keyed by the message that asked for it, and the Hub side finds
a version that is already there. Hub calls (blocking) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.publisher.domain import model_card, model_version_record, version_name
from services.publisher.hub import Hub, PermanentPublishError
from services.publisher.tables import model_versions, publication_log
from shared.blobstore import PostgresBlobStore
from shared.consumer import Unprocessable
from shared.db import claim_message
from shared.events import (
    KnowledgePublished,
    KnowledgePublishRequested,
    ModelPublished,
    ModelTrained,
    RollbackRequested,
    format_trained_at,
)
from shared.outbox import enqueue

log = logging.getLogger(__name__)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


async def _knowledge_map(connection: AsyncConnection) -> dict[str, str]:
    """The pHash -> item name map as voting's accepted consensus holds it now."""
    rows = await connection.execute(
        text("SELECT item_key, label FROM consensus WHERE item_kind = 'knowledge' AND status = 'accepted'")
    )
    return {row.item_key: row.label for row in rows}


class ReleaseService:
    def __init__(
        self, engine: AsyncEngine, hub: Hub, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._engine = engine
        self._hub = hub
        self._blobs = PostgresBlobStore(engine)
        self._clock = clock

    async def on_model_trained(self, event: ModelTrained) -> None:
        row = await self._release_row(event.message_id)
        if row is not None and row.status in ("published", "rejected"):
            return  # redelivered: this release already happened (or was refused)
        version = row.version if row is not None else version_name(event.trained_at)
        values = dict(
            version=version,
            source_message_id=event.message_id,
            run_id=event.run_id,
            snapshot_id=event.snapshot_id,
            trained_at=event.trained_at,
            metrics=event.metrics,
            n_classes=event.n_classes,
            n_samples=event.n_samples,
            n_users=event.n_users,
        )
        if not event.quality_gate_passed:
            async with self._engine.begin() as connection:
                await connection.execute(
                    insert(model_versions).values(status="rejected", **values).on_conflict_do_nothing()
                )
                await self._log(
                    connection, version, "rejected", None, {"reason": event.metrics.get("quality_gate")}
                )
            log.info(
                "release %s not published: the quality gate refused it", version, extra={"version": version}
            )
            return
        files = {path: await self._blobs.get(sha) for path, sha in event.artifacts.items()}
        await self._release(values, files, lineage={"snapshot_id": event.snapshot_id, "run_id": event.run_id})

    async def on_rollback(self, event: RollbackRequested) -> None:
        async with self._engine.connect() as connection:
            target = (
                await connection.execute(
                    select(model_versions).where(
                        model_versions.c.version == event.target_version,
                        model_versions.c.status == "published",
                    )
                )
            ).first()
        if target is None:
            raise Unprocessable(f"rollback: no published version {event.target_version!r}")
        row = await self._release_row(event.message_id)
        if row is not None and row.status == "published":
            return
        # Clients install only a newer trained_at: the old weights go out again as a new release.
        trained_at = row.trained_at if row is not None else format_trained_at(self._clock())
        values = dict(
            version=version_name(trained_at),
            source_message_id=event.message_id,
            run_id=target.run_id,
            snapshot_id=target.snapshot_id,
            trained_at=trained_at,
            metrics=target.metrics,
            n_classes=target.n_classes,
            n_samples=target.n_samples,
            n_users=target.n_users,
            rollback_of=target.version,
        )
        async with self._engine.connect() as connection:
            artifacts = (
                await connection.execute(
                    text("SELECT path, blob_sha256 FROM model_artifacts WHERE run_id = :r"),
                    {"r": target.run_id},
                )
            ).all()
        files = {a.path: await self._blobs.get(a.blob_sha256) for a in artifacts}
        lineage = {"snapshot_id": target.snapshot_id, "run_id": target.run_id, "rollback_of": target.version}
        await self._release(values, files, lineage)

    async def on_knowledge_requested(self, event: KnowledgePublishRequested) -> None:
        async with self._engine.connect() as connection:
            if await connection.scalar(
                text("SELECT 1 FROM processed_messages WHERE consumer = 'publisher' AND message_id = :m"),
                {"m": event.message_id},
            ):
                return
            knowledge = await _knowledge_map(connection)
        updated_at = format_trained_at(self._clock())
        files = {"knowledge.json": _json({"knowledge": knowledge, "updated_at": updated_at})}
        published = await self._publish(f"knowledge-{event.message_id}", files, tag=False)
        async with self._engine.begin() as connection:
            if not await claim_message(connection, "publisher", event.message_id):
                return
            await connection.execute(
                insert(publication_log).values(
                    kind="knowledge",
                    event="published",
                    hub_commit=published.commit,
                    detail={"entries": len(knowledge)},
                )
            )
            await enqueue(
                connection,
                KnowledgePublished(
                    message_id=f"knowledge-published-{event.message_id}",
                    hub_commit=published.commit,
                    n_entries=len(knowledge),
                    updated_at=updated_at,
                ),
            )

    async def _release(
        self, values: dict[str, Any], files: dict[str, bytes], lineage: Mapping[str, Any]
    ) -> None:
        version = values["version"]
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(model_versions).values(status="pending", **values).on_conflict_do_nothing()
            )
            knowledge = await _knowledge_map(connection)
        record = model_version_record(
            version,
            values["trained_at"],
            values["n_classes"],
            values["n_samples"],
            values["n_users"],
            values["metrics"],
        )
        files = dict(files)
        files["models/model_version.json"] = _json(record)
        files["README.md"] = model_card(record, values["metrics"], lineage).encode()
        files["knowledge.json"] = _json({"knowledge": knowledge, "updated_at": values["trained_at"]})
        try:
            published = await self._publish(version, files, tag=True)
        except PermanentPublishError as error:
            async with self._engine.begin() as connection:
                await connection.execute(
                    model_versions.update()
                    .where(model_versions.c.version == version)
                    .values(status="failed", error=str(error)[:2000])
                )
                await self._log(connection, version, "failed", None, {"error": str(error)[:2000]})
            raise Unprocessable(f"release {version} failed permanently: {error}") from error
        async with self._engine.begin() as connection:
            await connection.execute(
                model_versions.update()
                .where(model_versions.c.version == version)
                .values(
                    status="published",
                    hub_commit=published.commit,
                    hub_tag=published.tag,
                    published_at=self._clock(),
                    error=None,
                )
            )
            await self._log(connection, version, "published", published.commit, {"files": sorted(files)})
            await enqueue(
                connection,
                ModelPublished(
                    message_id=f"model-published-{version}",
                    version=version,
                    trained_at=values["trained_at"],
                    hub_commit=published.commit,
                    hub_tag=published.tag,
                    run_id=values["run_id"],
                ),
            )
        log.info("released %s as commit %s", version, published.commit, extra={"version": version})

    async def _publish(self, version: str, files: dict[str, bytes], *, tag: bool):
        return await asyncio.to_thread(self._hub.publish, version, files, tag=tag)

    async def _release_row(self, message_id: str):
        async with self._engine.connect() as connection:
            return (
                await connection.execute(
                    select(model_versions).where(model_versions.c.source_message_id == message_id)
                )
            ).first()

    @staticmethod
    async def _log(
        connection: AsyncConnection, version: str, event: str, commit: str | None, detail: dict
    ) -> None:
        await connection.execute(
            insert(publication_log).values(
                kind="model", version=version, event=event, hub_commit=commit, detail=detail
            )
        )
