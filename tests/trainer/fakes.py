"""In-memory stand-ins for the trainer's adapters: the store (same protocol as ``PostgresTrainerStore``), the
blob store, and model work that trains nothing (moving the hand-moved ``FakeClock`` of ``tests/utils``)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import torch

from services.trainer.domain.data import SnapshotItem
from services.trainer.domain.gold import MODERATOR, GoldItem
from services.trainer.domain.runs import Attempt, Labels, Run, with_attempt
from services.trainer.handlers import ModelWork
from services.trainer.imprint import Imprinted
from services.trainer.release import MODEL_FILES, Release, state_dict_bytes
from services.trainer.store import RunTakenOver
from services.trainer.training import ModelJob, ModelOutcome
from shared.blobstore import BlobNotFound, sha256_hex
from shared.events import ModelTrained
from shared.reads import UNFINISHED_RUN_STATUSES
from tests.utils.clock import FakeClock


class FakeBlobs:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, data: bytes) -> str:
        self.data[sha256_hex(data)] = data
        return sha256_hex(data)

    async def get(self, sha256: str) -> bytes:
        if sha256 not in self.data:
            raise BlobNotFound(sha256)
        return self.data[sha256]


@dataclass
class FakeTrainerStore:
    blobs: FakeBlobs
    runs: dict[uuid.UUID, Run] = field(default_factory=dict)
    requests: dict[str, uuid.UUID] = field(default_factory=dict)
    finished_at: dict[uuid.UUID, datetime] = field(default_factory=dict)
    metrics: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    errors: dict[uuid.UUID, str] = field(default_factory=dict)
    snapshots: dict[uuid.UUID, list[SnapshotItem]] = field(default_factory=dict)
    published: tuple[uuid.UUID | None, Labels] = (None, {})
    published_run: uuid.UUID | None = None
    published_files: dict[str, str] = field(default_factory=dict)
    checkpoints: dict[tuple[uuid.UUID, str], str] = field(default_factory=dict)
    checkpoint_epochs: list[tuple[uuid.UUID, str, int]] = field(default_factory=list)
    artifacts: dict[uuid.UUID, dict[str, str]] = field(default_factory=dict)
    outbox: list[ModelTrained] = field(default_factory=list)
    users: int = 0
    gold_items: dict[tuple[str, str], GoldItem] = field(default_factory=dict)

    def add_run(self, snapshot_id: uuid.UUID, **values: Any) -> uuid.UUID:
        run_id = uuid.uuid4()
        fields = {"status": "pending", "attempts": 0, "started_at": None, "deadline_at": None} | values
        self.runs[run_id] = Run(id=run_id, snapshot_id=snapshot_id, **fields)
        return run_id

    async def record_request(self, message_id: str, snapshot_id: uuid.UUID) -> None:
        if message_id not in self.requests:
            self.requests[message_id] = self.add_run(snapshot_id)

    async def unfinished_runs(self) -> list[uuid.UUID]:
        return [run_id for run_id, run in self.runs.items() if run.status in ("pending", "running")]

    async def run(self, run_id: uuid.UUID) -> Run:
        return self.runs[run_id]

    async def start_attempt(self, run_id: uuid.UUID, attempt: Attempt) -> None:
        self.runs[run_id] = with_attempt(self.runs[run_id], attempt)

    async def skip(self, run_id: uuid.UUID, reason: str, now: datetime) -> None:
        self._drop_checkpoints(run_id)
        self._end(run_id, "skipped", now)
        self.metrics[run_id] = {"skipped": reason}

    async def fail(self, run: Run, error: str, now: datetime) -> None:
        self._check_latest_attempt(run)
        self._end(run.id, "failed", now)
        self.errors[run.id] = error
        self._drop_checkpoints(run.id)

    def _check_latest_attempt(self, run: Run) -> None:
        current = self.runs[run.id]
        if current.status not in UNFINISHED_RUN_STATUSES or current.attempts != run.attempts:
            raise RunTakenOver(f"run {run.id} was taken over by another trainer")

    def _end(self, run_id: uuid.UUID, status: str, now: datetime) -> None:
        self.runs[run_id] = replace(self.runs[run_id], status=status)
        self.finished_at[run_id] = now

    def _drop_checkpoints(self, run_id: uuid.UUID) -> None:
        for key in [key for key in self.checkpoints if key[0] == run_id]:
            del self.checkpoints[key]

    async def snapshot_items(self, snapshot_id: uuid.UUID) -> list[SnapshotItem]:
        return list(self.snapshots[snapshot_id])

    async def published_snapshot(self) -> tuple[uuid.UUID | None, Labels]:
        imprint = self.metrics.get(self.published_run, {}).get("release") == "imprint"
        return (None, {}) if imprint else self.published  # as the Postgres store: see its docstring

    async def newer_released_snapshot(self, snapshot_id: uuid.UUID) -> uuid.UUID | None:
        order = list(self.snapshots)  # in the order they were made
        released = {self.published[0]} | {  # published, or passed its gates and on its way to the publisher
            self.runs[event.run_id].snapshot_id for event in self.outbox if event.quality_gate_passed
        }
        newer = [
            s
            for s in released
            if s in order and snapshot_id in order and order.index(s) > order.index(snapshot_id)
        ]
        return max(newer, key=order.index) if newer else None

    async def published_artifacts(self, paths: Collection[str]) -> dict[str, str]:
        return {path: sha for path, sha in self.published_files.items() if path in paths}

    async def checkpoint(self, run_id: uuid.UUID, kind: str) -> str | None:
        return self.checkpoints.get((run_id, kind))

    async def save_checkpoint(self, run_id: uuid.UUID, kind: str, epoch: int, data: bytes) -> None:
        self.checkpoints[(run_id, kind)] = await self.blobs.put(data)
        self.checkpoint_epochs.append((run_id, kind, epoch))

    async def n_users(self, snapshot_id: uuid.UUID) -> int:
        return self.users

    async def finish(self, run: Run, release: Release, now: datetime) -> None:
        self._check_latest_attempt(run)
        self.artifacts[run.id] = {path: await self.blobs.put(data) for path, data in release.files.items()}
        self._drop_checkpoints(run.id)
        self._end(run.id, "succeeded", now)
        self.metrics[run.id] = release.metrics
        self._released(release)

    async def has_run(self, run_id: uuid.UUID) -> bool:
        return run_id in self.runs

    async def finish_imprint(self, parent: Run, release: Release, now: datetime) -> None:
        self._check_latest_attempt(parent)
        run_id = release.event.run_id
        self.runs[run_id] = replace(parent, id=run_id, status="succeeded", attempts=1)
        self.finished_at[run_id] = now
        self.artifacts[run_id] = {path: await self.blobs.put(data) for path, data in release.files.items()}
        self.metrics[run_id] = release.metrics
        self._released(release)

    def _released(self, release: Release) -> None:
        self.outbox.append(release.event)
        if release.event.quality_gate_passed:
            for item in release.gold:
                known = self.gold_items.get((item.kind, item.key))
                if known is None or item.source == MODERATOR:
                    self.gold_items[(item.kind, item.key)] = item

    async def gold(self, kind: str) -> list[GoldItem]:
        return sorted((i for (k, _), i in self.gold_items.items() if k == kind), key=lambda i: i.key)

    @contextlib.asynccontextmanager
    async def active_lock(self) -> AsyncIterator[Any]:
        async def still_held() -> None:
            return None

        yield still_held


@dataclass
class FakeModelWork:
    """Trains nothing: each job is recorded, reports ``epochs`` epochs (moving ``clock`` by ``epoch_seconds``
    each) and comes back with a fixed accuracy."""

    clock: FakeClock
    accuracy: float = 0.9
    current_accuracy: float | None = None
    epochs: int = 2
    epoch_seconds: float = 1.0
    jobs: list[ModelJob] = field(default_factory=list)
    remaining_at_start: list[float] = field(default_factory=list)
    releases: int = 0
    # {label: accuracy} on gold crops of the candidate and of the published model; any other label: all correct
    # if the model knows it, else none
    gold_accuracy: dict[str, float] = field(default_factory=dict)
    published_gold_accuracy: dict[str, float] = field(default_factory=dict)
    gold_judged: list[tuple[str, list[str]]] = field(default_factory=list)
    imprinted: list[list[str]] = field(default_factory=list)

    def train(self, job: ModelJob) -> ModelOutcome:
        from services.trainer.training import EpochReport

        self.jobs.append(job)
        self.remaining_at_start.append(job.deadline.remaining)
        history = []
        for epoch in range(1, self.epochs + 1):
            self.clock.advance(seconds=self.epoch_seconds)
            report = EpochReport(0, epoch, 64, 1.0 / epoch, self.accuracy, 100.0, epoch * self.epoch_seconds)
            history.append(report)
            job.on_epoch(report)
            job.on_checkpoint({"epoch": epoch, "history": [r.__dict__ for r in history]})
        return ModelOutcome(
            state={"weight": torch.zeros(1)},
            classes=job.data.classes,
            accuracy=self.accuracy,
            current_accuracy=self.current_accuracy,
            epochs=self.epochs,
            history=history,
            images_per_second=100.0,
            n_samples=len(job.data.keys),
        )

    def release_files(self, items, icon_data, icon, screen, trained_at) -> dict[str, bytes]:
        """The weights and label maps, which a later run reads back as the published model."""
        self.releases += 1
        files = {}
        for kind, model in (("icon", icon), ("screen", screen)):
            if model is not None:
                weights, labels, _ = MODEL_FILES[kind]
                files[weights] = state_dict_bytes(model.state)
                files[labels] = json.dumps(dict(enumerate(model.classes))).encode()
        return files

    def imprint(self, published, data) -> Imprinted:
        self.imprinted.append(sorted(set(data.labels) - set(published.classes)))
        classes = sorted(set(published.classes) | set(data.labels))
        new = sorted(set(classes) - set(published.classes))
        return Imprinted({"weight": torch.ones(1)}, classes, new, {c: data.labels.count(c) for c in new})

    def gold_counts(self, kind, candidate, published, gold):
        self.gold_judged.append((kind, list(gold.labels)))

        def counts(model, accuracy: dict[str, float]) -> dict[str, tuple[int, int]]:
            n = Counter(gold.labels)
            known = set(model.classes)
            return {label: (round(accuracy.get(label, label in known) * k), k) for label, k in n.items()}

        mine = counts(candidate, self.gold_accuracy)
        return mine, None if published is None else counts(published, self.published_gold_accuracy)

    def as_work(self) -> ModelWork:
        return ModelWork(
            train=self.train,
            release_files=self.release_files,
            gold_counts=self.gold_counts,
            imprint=self.imprint,
        )
