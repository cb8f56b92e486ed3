"""In-memory stand-ins for the publisher's adapters: ``ReleaseStore`` and ``Hub``, with the same behaviour as
``PostgresReleaseStore`` (checked by tests/publisher/test_store.py) and ``LocalHub``."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from services.publisher.domain import Published, Release, TrainedRun
from services.publisher.hub import PermanentPublishError
from shared.blobstore import BlobNotFound
from shared.events import Event, ModelTrained


@dataclass
class FakeReleaseStore:
    releases: dict[str, Release] = field(default_factory=dict)
    published_at: dict[str, datetime] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[Event] = field(default_factory=list)
    processed: set[str] = field(default_factory=set)
    artifacts: dict[uuid.UUID, dict[str, str]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    consensus: dict[str, str | None] = field(default_factory=dict)  # accepted knowledge: pHash -> label
    runs: dict[uuid.UUID, TrainedRun] = field(default_factory=dict)  # the trainer's records
    mode: str = "automatic"

    def finished_run(
        self, files: Mapping[str, bytes], *, trained_at: str, gate: bool = True, status: str = "succeeded"
    ) -> ModelTrained:
        """What the trainer leaves behind (its record of the run, the run's artifacts among the blobs) and its
        model.trained event."""
        run_id = uuid.uuid4()
        artifacts = {path: self._put_blob(data) for path, data in files.items()}
        self.artifacts[run_id] = artifacts
        self.runs[run_id] = TrainedRun(status, gate)
        return ModelTrained(
            message_id=f"model-trained-{run_id}",
            run_id=run_id,
            snapshot_id=uuid.uuid4(),
            trained_at=trained_at,
            artifacts=artifacts,
            metrics={"val_acc": 0.9, "quality_gate": {"publish": gate, "reason": "test"}, "icon_epochs": 3},
            n_classes=2,
            n_samples=40,
            n_users=7,
            quality_gate_passed=gate,
        )

    def _put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    async def release_for(self, message_id: str) -> Release | None:
        return next((r for r in self.releases.values() if r.source_message_id == message_id), None)

    async def release(self, version: str) -> Release | None:
        return self.releases.get(version)

    async def record_rejected(self, release: Release, reason: Any) -> None:
        self._insert(release)
        self._log(release.version, "rejected", None, {"reason": reason})

    async def record_pending(self, release: Release) -> None:
        self._insert(release)

    async def record_failed(self, version: str, error: str) -> None:
        self.releases[version] = replace(self.releases[version], status="failed")
        self.errors[version] = error[:2000]
        self._log(version, "failed", None, {"error": error[:2000]})

    async def record_superseded(self, release: Release, reason: str) -> None:
        self.releases[release.version] = replace(release, status="superseded")
        self.errors.pop(release.version, None)
        self._log(release.version, "superseded", None, {"reason": reason})

    async def record_refused(self, release: Release, reason: str) -> None:
        if release.run_id not in self.runs:
            self._log(None, "refused", None, {"reason": reason, "release": release.version})
            return
        self.releases[release.version] = replace(release, status="failed")
        self.errors[release.version] = reason[:2000]
        self._log(release.version, "refused", None, {"reason": reason[:2000]})

    async def trained_run(self, run_id: uuid.UUID) -> TrainedRun | None:
        return self.runs.get(run_id)

    async def current(self) -> Release | None:
        published = [r for r in self.releases.values() if r.status == "published"]
        return max(published, key=lambda r: r.trained_at, default=None)

    async def record_published(
        self, version: str, landed: Published, at: datetime, files: list[str], event: Event
    ) -> None:
        self.releases[version] = replace(self.releases[version], status="published")
        self.published_at[version] = at
        self.errors.pop(version, None)
        self._log(version, "published", landed.commit, {"files": files})
        self._enqueue(event)

    async def run_artifacts(self, run_id: uuid.UUID) -> dict[str, str]:
        return dict(self.artifacts.get(run_id, {}))

    async def read_blobs(self, shas: Mapping[str, str]) -> dict[str, bytes]:
        try:
            return {key: self.blobs[sha] for key, sha in shas.items()}
        except KeyError as missing:
            raise BlobNotFound(str(missing)) from None

    async def knowledge_map(self) -> dict[str, str]:
        return {key: label for key, label in sorted(self.consensus.items()) if label is not None}

    async def knowledge_published(self, message_id: str) -> bool:
        return message_id in self.processed

    async def release_mode(self) -> str:
        return self.mode

    async def set_release_mode(self, mode: str, requested_by: str, message_id: str) -> bool:
        if message_id in self.processed:
            return False
        self.processed.add(message_id)
        self.mode = mode
        self._log(None, "mode", None, {"mode": mode, "requested_by": requested_by})
        return True

    async def record_held(self, release: Release) -> None:
        self._insert(replace(release, status="held"))
        self._log(release.version, "held", None, {})

    async def release_of_run(self, run_id: uuid.UUID) -> Release | None:
        return next((r for r in self.releases.values() if r.run_id == run_id and r.rollback_of is None), None)

    async def record_knowledge(self, message_id: str, landed: Published, entries: int, event: Event) -> bool:
        if message_id in self.processed:
            return False
        self.processed.add(message_id)
        self.log.append(
            {
                "kind": "knowledge",
                "event": "published",
                "hub_commit": landed.commit,
                "detail": {"entries": entries},
            }
        )
        self._enqueue(event)
        return True

    def _insert(self, release: Release) -> None:
        if any(
            release.version == r.version
            or release.source_message_id == r.source_message_id
            or release.trained_at == r.trained_at
            for r in self.releases.values()
        ):
            return  # like ON CONFLICT DO NOTHING on any of the unique columns
        self.releases[release.version] = release

    def _log(self, version: str | None, event: str, commit: str | None, detail: dict[str, Any]) -> None:
        self.log.append(
            {"kind": "model", "version": version, "event": event, "hub_commit": commit, "detail": detail}
        )

    def _enqueue(self, event: Event) -> None:
        if all(queued.message_id != event.message_id for queued in self.outbox):
            self.outbox.append(event)


@dataclass
class FakeHub:
    """Commits kept in memory, with LocalHub's rules: a commit holds every file of the tree, a tagged version
    that exists is found instead of committed again. ``refuse`` makes every call fail permanently."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    head: str | None = None
    attempts: int = 0
    refuse: str | None = None

    def publish(self, version: str, files: Mapping[str, bytes], *, tag: bool = True) -> Published:
        self.attempts += 1
        if self.refuse:
            raise PermanentPublishError(self.refuse)
        if tag and version in self.tags:
            return Published(self.tags[version], version)
        tree = dict(self.commits[self.head]) if self.head else {}
        tree.update(files)
        commit = hashlib.sha1(f"{version}:{len(self.commits)}".encode()).hexdigest()
        self.commits[commit] = tree
        self.head = commit
        if tag:
            self.tags[version] = commit
        return Published(commit, version if tag else "")

    def read(self, revision: str, path: str) -> bytes:
        if self.refuse:
            raise PermanentPublishError(self.refuse)
        return self.commits[self.tags.get(revision, revision)][path]

    @property
    def current(self) -> dict[str, bytes]:
        return self.commits[self.head] if self.head else {}
