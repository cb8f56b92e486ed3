"""The publisher's service layer: releases (model.trained, rollbacks) and knowledge-map publications.

Each handler is idempotent: the release row is keyed by the message that asked for it, and the Hub side finds
a version that is already there. Hub calls (blocking) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from services.publisher import domain
from services.publisher.domain import Published, Release
from services.publisher.hub import Hub, PermanentPublishError
from services.publisher.store import ReleaseStore
from shared.clock import Clock, utc_now
from shared.consumer import Unprocessable
from shared.events import (
    KnowledgePublishRequested,
    ModelTrained,
    ReleaseApprovalRequested,
    ReleaseModeRequested,
    RollbackRequested,
    format_trained_at,
)

log = logging.getLogger(__name__)


class ReleaseService:
    def __init__(self, store: ReleaseStore, hub: Hub, clock: Clock = utc_now) -> None:
        self._store = store
        self._hub = hub
        self._clock = clock

    async def on_model_trained(self, event: ModelTrained) -> None:
        recorded = await self._store.release_for(event.message_id)
        if domain.is_settled(recorded):
            return
        release = domain.trained_release(event, recorded)
        if refusal := domain.trained_refusal(event, await self._store.trained_run(event.run_id)):
            await self._store.record_refused(release, refusal)
            raise Unprocessable(f"release {release.version} refused: {refusal}")
        if release.status == "rejected":
            await self._store.record_rejected(release, event.metrics.get("quality_gate"))
            log.info(
                "release %s not published: the quality gate refused it",
                release.version,
                extra={"version": release.version},
            )
            return
        if reason := domain.superseded_by(release, await self._store.current()):
            await self._store.record_superseded(release, reason)
            log.info("release %s superseded: %s", release.version, reason, extra={"version": release.version})
            return
        if domain.held_for_approval(await self._store.release_mode()):
            await self._store.record_held(release)
            log.info("release %s held for approval", release.version, extra={"version": release.version})
            return
        await self._release(release, await self._store.read_blobs(event.artifacts))

    async def on_release_mode(self, event: ReleaseModeRequested) -> None:
        await self._store.set_release_mode(event.mode, event.requested_by, event.message_id)
        log.info("release mode %s, asked by %s", event.mode, event.requested_by)

    async def on_release_approval(self, event: ReleaseApprovalRequested) -> None:
        release = await self._store.release_of_run(event.run_id)
        if refusal := domain.approval_refusal(event.run_id, release):
            raise Unprocessable(refusal)
        if release.status == "published":
            return
        if reason := domain.superseded_by(release, await self._store.current()):
            await self._store.record_superseded(release, reason)
            log.info("held release %s superseded: %s", release.version, reason)
            return
        artifacts = await self._store.run_artifacts(release.run_id)
        await self._release(release, await self._store.read_blobs(artifacts))

    async def on_rollback(self, event: RollbackRequested) -> None:
        target = await self._store.release(event.target_version)
        if refusal := domain.rollback_refusal(event.target_version, target):
            raise Unprocessable(refusal)
        recorded = await self._store.release_for(event.message_id)
        if domain.is_settled(recorded):
            return
        release = domain.rollback_release(target, event.message_id, recorded, self._clock())
        artifacts = await self._store.run_artifacts(release.run_id)
        await self._release(release, await self._store.read_blobs(artifacts))

    async def on_knowledge_requested(self, event: KnowledgePublishRequested) -> None:
        if await self._store.knowledge_published(event.message_id):
            return
        knowledge = await self._store.knowledge_map()
        updated_at = format_trained_at(self._clock())
        files = {"knowledge.json": domain.knowledge_file(knowledge, updated_at)}
        landed = await self._publish(domain.knowledge_version(event.message_id), files, tag=False)
        announcement = domain.knowledge_published(event.message_id, landed, len(knowledge), updated_at)
        await self._store.record_knowledge(event.message_id, landed, len(knowledge), announcement)

    async def _release(self, release: Release, artifacts: Mapping[str, bytes]) -> None:
        await self._store.record_pending(release)
        files = domain.release_files(release, artifacts, await self._store.knowledge_map())
        try:
            landed = await self._publish(release.version, files, tag=True)
        except PermanentPublishError as error:
            await self._store.record_failed(release.version, str(error))
            raise Unprocessable(f"release {release.version} failed permanently: {error}") from error
        await self._store.record_published(
            release.version, landed, self._clock(), sorted(files), domain.model_published(release, landed)
        )
        log.info(
            "released %s as commit %s", release.version, landed.commit, extra={"version": release.version}
        )

    async def _publish(self, version: str, files: Mapping[str, bytes], *, tag: bool) -> Published:
        return await asyncio.to_thread(self._hub.publish, version, files, tag=tag)
