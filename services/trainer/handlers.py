"""The trainer's service layer: record a training request durably (then the message is acked), and run
recorded runs to completion — resuming from checkpoints after a crash — within the run's deadline."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import torch
from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.trainer import artifacts
from services.trainer.domain.budget import Deadline, GateDecision, quality_gate
from services.trainer.domain.client_path import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    icon_crop_64,
    icon_input,
    screen_input_from_rgb,
    screen_rgb,
)
from services.trainer.domain.data import select_screens, stratified_split
from services.trainer.models import (
    ICON_HEAD,
    SCREEN_HEAD,
    carry_over,
    icon_model,
    load_initial_weights,
    screen_model,
)
from services.trainer.settings import TrainerSettings
from services.trainer.tables import checkpoints, model_artifacts, training_runs
from services.trainer.training import EpochReport, Phase, TrainConfig, fit
from shared.blobstore import PostgresBlobStore
from shared.consumer import is_outage
from shared.events import ModelTrained, TrainingProgress, TrainingRequested, format_trained_at
from shared.outbox import enqueue

log = logging.getLogger(__name__)
EPOCHS = Counter("warp_trainer_epochs_total", "Training epochs completed", ["model"])
VAL_ACCURACY = Gauge("warp_trainer_val_accuracy", "Held-out accuracy of the latest epoch", ["model"])
THROUGHPUT = Gauge("warp_trainer_images_per_second", "Training throughput of the latest epoch", ["model"])
RUNS = Counter("warp_trainer_runs_total", "Training runs ended", ["status"])
FINISHED = ("succeeded", "failed", "skipped")
MIN_ICON_CROPS = 5  # the old trainer's floor
MAX_ATTEMPTS = 3
ProgressSink = Callable[[TrainingProgress], None]


class RunLedger:
    """Records a training request as a run; the consumer acks only after this committed."""

    def __init__(self, engine: AsyncEngine, wake: asyncio.Event | None = None) -> None:
        self._engine = engine
        self._wake = wake

    async def record(self, event: TrainingRequested) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(training_runs)
                .values(
                    id=uuid.uuid4(),
                    request_message_id=event.message_id,
                    snapshot_id=event.snapshot_id,
                    status="pending",
                )
                .on_conflict_do_nothing(index_elements=["request_message_id"])
            )
        if self._wake is not None:
            self._wake.set()


@dataclass
class Dataset:
    keys: list[str]
    labels: list[str]
    images: torch.Tensor  # uint8 N x 3 x H x W

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def targets(self) -> torch.Tensor:
        index = {label: i for i, label in enumerate(self.classes)}
        return torch.tensor([index[label] for label in self.labels], dtype=torch.long)


@dataclass
class ModelOutcome:
    state: dict[str, torch.Tensor]
    classes: list[str]
    accuracy: float  # held-out, through the client path
    current_accuracy: float | None
    epochs: int
    history: list[EpochReport]
    images_per_second: float
    n_samples: int = 0
    per_class: dict[str, Any] = field(default_factory=dict)
    carried: dict[str, int] = field(default_factory=dict)


class TrainingRunner:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: TrainerSettings,
        *,
        progress: ProgressSink = lambda event: None,
        icon_config: TrainConfig | None = None,
        screen_config: TrainConfig | None = None,
        checkpoint_seconds: float = 60.0,
    ) -> None:
        self._engine = engine
        self._blobs = PostgresBlobStore(engine)
        self._settings = settings
        self._progress = progress
        self._icon_config = icon_config or TrainConfig()
        self._screen_config = screen_config or TrainConfig(
            phases=(Phase(224, 1.0, 16),),
            normalise=(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()),
        )
        self._checkpoint_seconds = checkpoint_seconds

    async def unfinished_runs(self) -> list[uuid.UUID]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT id FROM training_runs WHERE status IN ('pending', 'running') ORDER BY created_at"
                )
            )
            return [row.id for row in rows]

    async def run_unfinished(self) -> int:
        done = 0
        for run_id in await self.unfinished_runs():
            try:
                await self.execute(run_id)
            except Exception as error:
                if is_outage(error):
                    log.warning("run %s interrupted by an outage (%r); it resumes later", run_id, error)
                    return done
                log.exception("training run failed", extra={"run_id": str(run_id)})
                await self._fail(run_id, repr(error))
            done += 1
        return done

    async def _fail(self, run_id: uuid.UUID, error: str) -> None:
        RUNS.labels("failed").inc()
        async with self._engine.begin() as connection:
            await connection.execute(
                training_runs.update()
                .where(training_runs.c.id == run_id)
                .values(status="failed", finished_at=datetime.now(UTC), error=error[:2000])
            )
            await _drop_checkpoints(connection, run_id)

    async def execute(self, run_id: uuid.UUID) -> str:
        run = await self._load_run(run_id)
        if run.status in FINISHED:
            return run.status
        if run.attempts >= MAX_ATTEMPTS:
            # e.g. a run that kills its process every time (out of memory) must not block every later run
            await self._fail(run_id, f"gave up after {run.attempts} attempts")
            return "failed"
        now = datetime.now(UTC)
        deadline_at = run.deadline_at or now + timedelta(minutes=self._settings.budget_minutes)
        await self._set(
            run_id,
            status="running",
            attempts=run.attempts + 1,
            started_at=run.started_at or now,
            deadline_at=deadline_at,
        )
        run = await self._load_run(run_id)  # with started_at and deadline_at as recorded
        items = await self._snapshot_items(run.snapshot_id)
        if await self._adds_nothing(run.snapshot_id, items):
            await self._set(
                run_id,
                status="skipped",
                finished_at=datetime.now(UTC),
                metrics={"skipped": "snapshot adds nothing over the published model"},
            )
            return "skipped"
        icon_data = await self._icon_dataset(items)
        if len(icon_data.keys) < MIN_ICON_CROPS or len(icon_data.classes) < 2:
            reason = f"{len(icon_data.keys)} icon crops in {len(icon_data.classes)} classes: at least {MIN_ICON_CROPS} in 2"
            await self._set(
                run_id, status="skipped", finished_at=datetime.now(UTC), metrics={"skipped": reason}
            )
            return "skipped"
        deadline = Deadline((deadline_at - datetime.now(UTC)).total_seconds())
        loop = asyncio.get_running_loop()
        previous = await self._published_model("icon")
        resume = await self._load_checkpoint(run_id, "icon")
        screens = select_screens({i["item_key"]: i["label"] for i in items if i["item_kind"] == "screen"})
        # icons get the budget first; the screen classifier, when there is one to train, gets a quarter of it
        icon_deadline = deadline.share(0.75) if screens.trainable else deadline
        icon = await asyncio.to_thread(
            self._train, run_id, "icon", icon_data, previous, resume, icon_deadline, loop
        )
        screen = None
        if screens.trainable:
            screen_data = await self._screen_dataset(screens.items)
            screen_previous = await self._published_model("screen")
            screen_resume = await self._load_checkpoint(run_id, "screen")
            screen = await asyncio.to_thread(
                self._train, run_id, "screen", screen_data, screen_previous, screen_resume, deadline, loop
            )
        gate = quality_gate(
            icon.accuracy,
            icon.current_accuracy,
            margin=self._settings.quality_margin,
            trained_epochs=icon.epochs,
            classes=len(icon.classes),
        )
        await self._finish(run, items, icon_data, icon, screen, screens.reason, gate)
        return "succeeded"

    # --- training (runs in a worker thread) --------------------------------------------------------------------

    def _train(self, run_id, kind, data: Dataset, previous, resume, deadline: Deadline, loop) -> ModelOutcome:
        torch.set_num_threads(self._settings.torch_threads)
        if resume is not None and resume.get("done"):
            return resume["outcome"]
        classes = data.classes
        build, head = (icon_model, ICON_HEAD) if kind == "icon" else (screen_model, SCREEN_HEAD)
        config = self._icon_config if kind == "icon" else self._screen_config
        model = build(len(classes))
        carried: dict[str, int] = {}
        if previous is not None:
            carried = carry_over(model, previous["state"], previous["classes"], classes, head)
        elif kind == "icon" and self._settings.initial_weights is not None:
            carried = {"initial_weights": load_initial_weights(model, self._settings.initial_weights, head)}
        split = stratified_split(data.labels, seed=0)
        targets = data.targets()
        started = time.monotonic()

        def report(epoch: EpochReport) -> None:
            log.info(
                "%s epoch %d at %d px: loss %.3f, held-out %s, %.0f img/s",
                kind,
                epoch.epoch,
                epoch.size,
                epoch.train_loss,
                "-" if epoch.val_accuracy is None else f"{epoch.val_accuracy:.3f}",
                epoch.images_per_second,
                extra={"run_id": str(run_id)},
            )
            self._progress(
                TrainingProgress(
                    run_id=run_id,
                    model=kind,
                    epoch=len(history) + 1,
                    train_loss=epoch.train_loss,
                    val_accuracy=epoch.val_accuracy,
                    elapsed_seconds=time.monotonic() - started,
                    deadline_seconds=deadline.remaining,
                )
            )
            history.append(epoch)
            EPOCHS.labels(kind).inc()
            THROUGHPUT.labels(kind).set(epoch.images_per_second)
            if epoch.val_accuracy is not None:
                VAL_ACCURACY.labels(kind).set(epoch.val_accuracy)

        def save(bundle: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(
                self._save_checkpoint(run_id, kind, bundle, bundle["epoch"]), loop
            ).result()

        history: list[EpochReport] = []
        result = fit(
            model,
            data.images,
            targets,
            split.train,
            split.validation,
            config,
            deadline,
            fine_tuning=previous is not None,
            resume=resume,
            on_epoch=report,
            on_checkpoint=save,
            checkpoint_seconds=self._checkpoint_seconds,
        )
        model.load_state_dict(result.best_state)
        model.eval()
        candidate_predictions = self._client_predictions(kind, model, data, split.validation)
        truth = [int(targets[i]) for i in split.validation]
        accuracy = (
            float(np.mean([p == t for p, t in zip(candidate_predictions, truth, strict=True)]))
            if truth
            else 0.0
        )
        current = None
        if previous is not None and truth:
            old = build(len(previous["classes"]))
            old.load_state_dict(previous["state"])
            old.eval()
            old_labels = [
                previous["classes"][p] for p in self._client_predictions(kind, old, data, split.validation)
            ]
            current = float(
                np.mean(
                    [label == data.labels[i] for label, i in zip(old_labels, split.validation, strict=True)]
                )
            )
        trained = [r for r in result.history if r.images_per_second > 0]
        outcome = ModelOutcome(
            state=result.best_state,
            classes=classes,
            accuracy=accuracy,
            current_accuracy=current,
            epochs=result.epochs,
            history=result.history,
            images_per_second=float(np.mean([r.images_per_second for r in trained])) if trained else 0.0,
            n_samples=len(data.keys),
            per_class=artifacts.per_class_accuracy(candidate_predictions, truth, classes),
            carried=carried,
        )
        save({"done": True, "outcome": outcome, "epoch": result.epochs})
        return outcome

    @staticmethod
    @torch.no_grad()
    def _client_predictions(kind: str, model, data: Dataset, indices: list[int]) -> list[int]:
        """Top-1 through the client's own preprocessing (OpenCV resizes, BGR, scaling) — what counts."""
        if not indices:
            return []
        if kind == "icon":
            batch = np.stack([icon_input(data.images[i].permute(1, 2, 0).numpy()) for i in indices])
        else:
            batch = np.stack(
                [screen_input_from_rgb(data.images[i].permute(1, 2, 0).numpy()) for i in indices]
            )
        predictions = []
        for start in range(0, len(batch), 32):
            predictions += model(torch.from_numpy(batch[start : start + 32])).argmax(1).tolist()
        return predictions

    # --- data ----------------------------------------------------------------------------------------------------

    async def _icon_dataset(self, items: list[dict]) -> Dataset:
        icons = sorted(
            (i["item_key"], i["label"], i["image_sha256"]) for i in items if i["item_kind"] == "icon"
        )
        crops = [icon_crop_64(await self._blobs.get(sha)) for _, _, sha in icons]
        images = (
            torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
            if crops
            else torch.zeros(0, 3, 64, 64, dtype=torch.uint8)
        )
        return Dataset([k for k, _, _ in icons], [label for _, label, _ in icons], images)

    async def _screen_dataset(self, chosen: dict[str, str]) -> Dataset:
        keys = sorted(chosen)
        rgb = [screen_rgb(await self._blobs.get(sha)) for sha in keys]
        return Dataset(
            keys, [chosen[k] for k in keys], torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous()
        )

    async def _snapshot_items(self, snapshot_id: uuid.UUID) -> list[dict]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT item_kind, item_key, label, value, image_sha256 FROM snapshot_items WHERE snapshot_id = :s"
                ),
                {"s": snapshot_id},
            )
            return [dict(row._mapping) for row in rows]

    async def _adds_nothing(self, snapshot_id: uuid.UUID, items: list[dict]) -> bool:
        async with self._engine.connect() as connection:
            published = await connection.scalar(
                text(
                    "SELECT snapshot_id FROM model_versions WHERE status = 'published' ORDER BY trained_at DESC LIMIT 1"
                )
            )
            if published is None or published == snapshot_id:
                return False
            rows = await connection.execute(
                text(
                    "SELECT item_kind, item_key, label FROM snapshot_items WHERE snapshot_id = :s AND item_kind IN ('icon', 'screen')"
                ),
                {"s": published},
            )
            before = {(r.item_kind, r.item_key, r.label) for r in rows}
        now = {
            (i["item_kind"], i["item_key"], i["label"]) for i in items if i["item_kind"] in ("icon", "screen")
        }
        return now == before

    async def _published_model(self, kind: str) -> dict | None:
        """The current published model of ``kind`` (weights and class list), to fine-tune from and gate against."""
        weights, classes = (
            ("models/icon_classifier.pt", "models/label_map.json")
            if kind == "icon"
            else ("models/screen_classifier.pt", "models/screen_classifier_labels.json")
        )
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT a.path, a.blob_sha256 FROM model_artifacts a JOIN model_versions v ON v.run_id = a.run_id "
                        "WHERE v.status = 'published' AND a.path IN (:w, :c) "
                        "AND v.trained_at = (SELECT max(trained_at) FROM model_versions WHERE status = 'published')"
                    ),
                    {"w": weights, "c": classes},
                )
            ).all()
        found = {row.path: row.blob_sha256 for row in rows}
        if set(found) != {weights, classes}:
            return None
        label_map = json.loads(await self._blobs.get(found[classes]))
        return {
            "state": artifacts.load_state_dict_bytes(await self._blobs.get(found[weights])),
            "classes": [label_map[str(i)] for i in range(len(label_map))],
        }

    # --- persistence ---------------------------------------------------------------------------------------------

    async def _load_run(self, run_id: uuid.UUID):
        async with self._engine.connect() as connection:
            return (
                await connection.execute(training_runs.select().where(training_runs.c.id == run_id))
            ).one()

    async def _set(self, run_id: uuid.UUID, **values) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                training_runs.update().where(training_runs.c.id == run_id).values(**values)
            )

    async def _save_checkpoint(self, run_id: uuid.UUID, kind: str, bundle: dict, epoch: int) -> None:
        buffer = io.BytesIO()
        torch.save(bundle, buffer)
        async with self._engine.begin() as connection:
            sha = await PostgresBlobStore.put_in(connection, buffer.getvalue())
            old = await connection.scalar(
                text("SELECT blob_sha256 FROM checkpoints WHERE run_id = :r AND model_kind = :k"),
                {"r": run_id, "k": kind},
            )
            await connection.execute(
                insert(checkpoints)
                .values(run_id=run_id, model_kind=kind, epoch=epoch, blob_sha256=sha)
                .on_conflict_do_update(
                    index_elements=["run_id", "model_kind"],
                    set_={"epoch": epoch, "blob_sha256": sha, "updated_at": text("now()")},
                )
            )
            if old and old != sha:
                await _delete_blob_if_unused(connection, old)

    async def _load_checkpoint(self, run_id: uuid.UUID, kind: str) -> dict | None:
        async with self._engine.connect() as connection:
            sha = await connection.scalar(
                text("SELECT blob_sha256 FROM checkpoints WHERE run_id = :r AND model_kind = :k"),
                {"r": run_id, "k": kind},
            )
        if sha is None:
            return None
        log.info("resuming %s training of run %s from its checkpoint", kind, run_id)
        return torch.load(io.BytesIO(await self._blobs.get(sha)), map_location="cpu", weights_only=False)

    async def _finish(
        self, run, items, icon_data: Dataset, icon: ModelOutcome, screen, screen_note: str, gate: GateDecision
    ) -> None:
        trained_at = format_trained_at(datetime.now(UTC))
        probe = torch.from_numpy(
            np.stack(
                [
                    icon_input(icon_data.images[i].permute(1, 2, 0).numpy())
                    for i in range(min(4, len(icon_data.keys)))
                ]
            )
        )
        model = icon_model(len(icon.classes))
        model.load_state_dict(icon.state)
        files = artifacts.icon_files(model.eval(), icon.classes, probe)
        histories = {"icon": icon.history}
        if screen is not None:
            net = screen_model(len(screen.classes))
            net.load_state_dict(screen.state)
            files |= artifacts.screen_files(net.eval(), screen.classes)
            histories["screen"] = screen.history
        ocr = {i["item_key"]: i["label"] for i in items if i["item_kind"] == "ocr"}
        anchors = [i["value"] for i in items if i["item_kind"] == "anchor"]
        files |= artifacts.derived_files(ocr, anchors, icon_data.keys, trained_at)
        files["models/training_curve.png"] = artifacts.training_curve_png(histories)
        files["models/per_class_accuracy.json"] = json.dumps(
            icon.per_class, indent=2, sort_keys=True
        ).encode()
        started = run.started_at or datetime.now(UTC)
        metrics = {
            "training_seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
            "val_acc": icon.accuracy,
            "published_model_val_acc": icon.current_accuracy,
            "quality_gate": {"publish": gate.publish, "reason": gate.reason},
            "icon_epochs": icon.epochs,
            "icon_images_per_second": icon.images_per_second,
            "icon_carried_over": icon.carried,
            "screen": screen_note,
        }
        if screen is not None:
            metrics |= {
                "screen_trained_at": trained_at,
                "screen_val_acc": screen.accuracy,
                "screen_n_samples": screen.n_samples,
                "screen_n_classes": len(screen.classes),
            }
        async with self._engine.connect() as connection:
            n_users = await connection.scalar(
                text(
                    "SELECT count(DISTINCT install_id) FROM votes WHERE item_kind = 'icon' AND item_key IN "
                    "(SELECT item_key FROM snapshot_items WHERE snapshot_id = :s AND item_kind = 'icon')"
                ),
                {"s": run.snapshot_id},
            )
        async with self._engine.begin() as connection:
            shas = {path: await PostgresBlobStore.put_in(connection, data) for path, data in files.items()}
            for path, sha in shas.items():
                await connection.execute(
                    insert(model_artifacts)
                    .values(run_id=run.id, path=path, blob_sha256=sha)
                    .on_conflict_do_nothing()
                )
            await _drop_checkpoints(connection, run.id)
            finished = await connection.execute(
                training_runs.update()
                .where(
                    training_runs.c.id == run.id,
                    training_runs.c.status == "running",
                    training_runs.c.attempts == run.attempts,
                )
                .values(status="succeeded", finished_at=datetime.now(UTC), metrics=metrics)
            )
            if finished.rowcount == 1:
                RUNS.labels("succeeded").inc()
            else:
                # another trainer took this run over (it holds a newer attempt): its result stands, not ours
                raise RunTakenOver(f"run {run.id} was taken over by another trainer")
            await enqueue(
                connection,
                ModelTrained(
                    message_id=f"model-trained-{run.id}",
                    run_id=run.id,
                    snapshot_id=run.snapshot_id,
                    trained_at=trained_at,
                    artifacts=shas,
                    metrics=metrics,
                    n_classes=len(icon.classes),
                    n_samples=len(icon_data.keys),
                    n_users=int(n_users or 0),
                    quality_gate_passed=gate.publish,
                ),
            )
        log.info(
            "run %s finished: held-out %.3f, gate: %s",
            run.id,
            icon.accuracy,
            gate.reason,
            extra={"run_id": str(run.id)},
        )


class RunTakenOver(RuntimeError):
    pass


async def _drop_checkpoints(connection, run_id: uuid.UUID) -> None:
    for sha in (
        await connection.execute(
            text("DELETE FROM checkpoints WHERE run_id = :r RETURNING blob_sha256"), {"r": run_id}
        )
    ).scalars():
        await _delete_blob_if_unused(connection, sha)


async def _delete_blob_if_unused(connection, sha: str) -> None:
    await connection.execute(
        text(
            "DELETE FROM blobs WHERE sha256 = :s AND NOT EXISTS (SELECT 1 FROM checkpoints WHERE blob_sha256 = :s) "
            "AND NOT EXISTS (SELECT 1 FROM model_artifacts WHERE blob_sha256 = :s) "
            "AND NOT EXISTS (SELECT 1 FROM snapshot_items WHERE image_sha256 = :s) "
            "AND NOT EXISTS (SELECT 1 FROM contributions WHERE image_sha256 = :s)"
        ),
        {"s": sha},
    )
