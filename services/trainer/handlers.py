"""The trainer's service layer: record a training request durably (then the message is acked), and run
recorded runs to completion — resuming from checkpoints after a crash — within the run's deadline.

Orchestration only: the rules are in ``domain/``, the SQL in ``store.py``, the model work (training, scoring,
the release's files) in ``training.py``/``evaluation.py``/``release.py``, injected so tests can replace it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from PIL import UnidentifiedImageError
from prometheus_client import Counter, Gauge, Histogram

from services.trainer import release
from services.trainer.checkpoints import Checkpoints
from services.trainer.domain import runs
from services.trainer.domain.budget import Deadline, GateDecision, quality_gate
from services.trainer.domain.data import (
    ScreenSelection,
    SnapshotItem,
    of_kind,
    select_screens,
    trained_labels,
)
from services.trainer.domain.gold import (
    Candidate,
    GoldDecision,
    GoldItem,
    GoldRule,
    GoldRules,
    GoldSet,
    evidence,
    extend_gold,
    gold_gate,
    judged,
)
from services.trainer.domain.predictions import Wanted, by_model, trained_ref
from services.trainer.imprint import Imprinted, imprint
from services.trainer.settings import TrainerSettings
from services.trainer.store import PredictionStore, PublishedRelease, RunTakenOver, TrainerStore
from services.trainer.training import (
    ICON_CONFIG,
    SCREEN_CONFIG,
    Dataset,
    EpochReport,
    ModelJob,
    ModelOutcome,
    PublishedModel,
    TrainConfig,
    dataset,
    gold_counts,
    predict_images,
    train_model,
)
from shared.blobstore import BlobNotFound, BlobStore
from shared.clock import Clock, utc_now
from shared.consumer import is_outage
from shared.events import (
    Event,
    ModelPredicted,
    Prediction,
    PredictionRequested,
    TrainingProgress,
    TrainingRequested,
    format_trained_at,
)
from shared.imagekeys import keys_of_png
from shared.reads import FINISHED_RUN_STATUSES
from shared.waits import woken

log = logging.getLogger(__name__)
EPOCHS = Counter("warp_trainer_epochs_total", "Training epochs completed", ["model"])
VAL_ACCURACY = Gauge("warp_trainer_val_accuracy", "Held-out accuracy of the latest epoch", ["model"])
THROUGHPUT = Gauge("warp_trainer_images_per_second", "Training throughput of the latest epoch", ["model"])
RUNS = Counter("warp_trainer_runs_total", "Training runs ended", ["status"])
PREDICTED = Counter(
    "warp_trainer_predictions_total", "Items the published model predicted for voting", ["model"]
)
PREDICTION_SECONDS = Histogram(
    "warp_trainer_prediction_seconds", "Time to answer one model.prediction_requested (its items together)"
)

ProgressSink = Callable[[TrainingProgress], Awaitable[None]]
TrainModel = Callable[[ModelJob], ModelOutcome]
ReleaseFiles = Callable[
    [Sequence[SnapshotItem], Dataset, ModelOutcome, ModelOutcome | None, str], dict[str, bytes]
]
Imprint = Callable[[PublishedModel, Dataset], Imprinted]
Counts = dict[str, tuple[int, int]]
GoldCounts = Callable[[str, ModelOutcome, PublishedModel | None, Dataset], tuple[Counts, Counts | None]]
# evidence gold comes only from classes with crops to spare: an icon class keeps 4 for training (a small
# snapshot's 4 crops of an item all train: the end-to-end test's held-out accuracy fell from above 33 % to 29 %
# with one of them gold), a screen type as many as a screen classifier needs of it
GOLD_RULES = {"icon": GoldRules(min_training=4), "screen": GoldRules(min_training=5)}


async def _no_progress(event: TrainingProgress) -> None:
    return None


class RunLedger:
    """Records a training request as a run; the consumer acks only after this committed."""

    def __init__(self, store: TrainerStore, *wakes: asyncio.Event) -> None:
        self._store = store
        self._wakes = wakes

    async def record(self, event: TrainingRequested) -> None:
        await self._store.record_request(event.message_id, event.snapshot_id)
        for wake in self._wakes:
            wake.set()


@dataclass(frozen=True)
class ModelWork:
    """The blocking model work a run needs, run in a worker thread; tests replace it with something instant."""

    train: TrainModel = train_model
    release_files: ReleaseFiles = release.release_files
    imprint: Imprint = imprint
    gold_counts: GoldCounts = gold_counts
    icon_config: TrainConfig = ICON_CONFIG
    screen_config: TrainConfig = SCREEN_CONFIG


class TrainingRunner:
    def __init__(
        self,
        store: TrainerStore,
        blobs: BlobStore,
        settings: TrainerSettings,
        *,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        progress: ProgressSink = _no_progress,
        work: ModelWork | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._checkpoints = Checkpoints(store, blobs)
        self._settings = settings
        self._clock = clock
        self._monotonic = monotonic
        self._progress = progress
        self._work = work or ModelWork()
        self._executing: uuid.UUID | None = None
        # one imprint at a time, and none of a run while it is being started
        self._imprinting = asyncio.Lock()

    async def run_unfinished(self) -> int:
        done = 0
        for run_id in await self._store.unfinished_runs():
            try:
                await self.execute(run_id)
            except RunTakenOver as taken:
                # this process lost the active trainer's lock meanwhile: the other trainer's attempt stands
                log.warning("%s; its result is the other trainer's", taken, extra={"run_id": str(run_id)})
            except Exception as error:
                if is_outage(error):
                    log.warning("run %s interrupted by an outage (%r); it resumes later", run_id, error)
                    return done
                log.exception("training run could not be started", extra={"run_id": str(run_id)})
                continue
            done += 1
        return done

    async def _fail(self, run: runs.Run, error: str) -> None:
        await self._store.fail(run, error, self._clock())
        RUNS.labels("failed").inc()

    async def execute(self, run_id: uuid.UUID) -> str:
        self._executing = run_id
        try:
            async with self._imprinting:  # an imprint of this run in the other lane finishes first
                run = await self._store.run(run_id)
                if run.status in FINISHED_RUN_STATUSES:
                    return run.status
                if stop := runs.give_up(run.attempts):
                    await self._fail(run, stop.reason)
                    return stop.status
                budget = timedelta(minutes=self._settings.budget_minutes)
                attempt = runs.next_attempt(run, self._clock(), budget)
                await self._store.start_attempt(run_id, attempt)
            run = runs.with_attempt(run, attempt)
            try:
                return await self._attempt(run)
            except RunTakenOver:
                raise
            except Exception as error:
                if is_outage(error):
                    raise
                log.exception("training run failed", extra={"run_id": str(run_id)})
                await self._fail(run, repr(error))
                return "failed"
        finally:
            self._executing = None

    async def imprint_ahead(self) -> uuid.UUID | None:
        """While a run trains (minutes), the newest run recorded after it gets its imprint release now rather
        than after that training: its snapshot's new classes reach clients within minutes. Returns the run
        whose imprint release was made."""
        executing = self._executing
        if executing is None:
            return None
        async with self._imprinting:
            waiting = [run_id for run_id in await self._store.unfinished_runs() if run_id != executing]
            if not waiting or self._executing != executing:
                return None
            run = await self._store.run(waiting[-1])
            if run.status != "pending" or await self._store.has_run(runs.imprint_run_id(run.id)):
                return None
            items = await self._store.snapshot_items(run.snapshot_id)
            icons = of_kind(items, "icon")
            if runs.too_few_icons(len(icons), len({i.label for i in icons})):
                return None
            return run.id if await self._imprint(run, items, icons) else None

    async def _attempt(self, run: runs.Run) -> str:
        stop = runs.superseded(run.id, await self._store.unfinished_runs())
        if stop is None:
            items = await self._store.snapshot_items(run.snapshot_id)
            icons = of_kind(items, "icon")
            stop = runs.nothing_new(
                run.snapshot_id, trained_labels(items), *await self._store.published_snapshot()
            ) or runs.too_few_icons(len(icons), len({i.label for i in icons}))
        if stop:
            await self._store.skip(run.id, stop.reason, self._clock())
            log.info("run %s skipped: %s", run.id, stop.reason, extra={"run_id": str(run.id)})
            return stop.status
        screens = select_screens({i.key: i.label for i in of_kind(items, "screen")})
        async with self._imprinting:
            await self._imprint(run, items, icons)
        await self._train_and_release(run, items, icons, screens)
        return "succeeded"

    async def _imprint(self, run: runs.Run, items: list[SnapshotItem], icons: list[SnapshotItem]) -> bool:
        """Before the full training, when the snapshot has classes the published icon model does not know: a
        quick release of that model with their head rows imprinted (``imprint.py``), gated on gold and handed on
        like any release, as a run of its own. Made once per run (the caller holds ``_imprinting``); whether it
        was made now."""
        run = replace(run, started_at=run.started_at or self._clock())  # imprinted ahead: not started yet
        published = await self._published_model("icon")
        new = runs.imprint_first({i.label for i in icons}, published.classes if published else None)
        imprint_id = runs.imprint_run_id(run.id)
        if published is None or not new or await self._store.has_run(imprint_id):
            return False
        gold = await self._gold_set("icon", icons)
        data = await self._dataset("icon", [i for i in icons if i.key not in gold.keys])
        if not set(data.labels) - set(published.classes):
            return False  # every crop of the new classes is gold: nothing to imprint from
        imprinted = await asyncio.to_thread(self._work.imprint, published, data)
        outcome = ModelOutcome(
            state=imprinted.state,
            classes=imprinted.classes,
            accuracy=0.0,
            current_accuracy=None,
            epochs=0,
            history=[],
            images_per_second=0.0,
            n_samples=len(data.keys),
            carried={"head_rows": len(published.classes), "imprinted_rows": len(imprinted.new_classes)},
        )
        decision = await self._gold_gate("icon", outcome, gold)
        outcome = replace(outcome, accuracy=decision.candidate or 0.0, current_accuracy=decision.published)
        gate = GateDecision(
            decision.publish,
            f"imprint of {len(new)} new classes; {decision.reason}",
            outcome.accuracy,
            decision.published,
        )
        trained_at = format_trained_at(self._clock())
        files = await asyncio.to_thread(self._work.release_files, items, data, outcome, None, trained_at)
        files |= await self._published_files("screen")
        metrics = release.run_metrics(
            outcome,
            None,
            "the published screen model: an imprint release trains none",
            gate,
            started_at=run.started_at,
            now=self._clock(),
            trained_at=trained_at,
            gold={"icon": decision.as_metrics()},
        ) | {"release": "imprint", "imprinted_crops": imprinted.crops, "full_training_run": str(run.id)}
        event = release.model_trained(
            replace(run, id=imprint_id),
            files,
            metrics,
            outcome,
            gate,
            n_users=await self._store.n_users(run.snapshot_id),
            trained_at=trained_at,
        )
        await self._store.finish_imprint(
            run, release.Release(files, metrics, event, gold.added), self._clock()
        )
        log.info(
            "imprint release %s of run %s: %d new classes, gate: %s",
            imprint_id,
            run.id,
            len(new),
            gate.reason,
            extra={"run_id": str(run.id)},
        )
        return True

    async def _train_and_release(
        self,
        run: runs.Run,
        items: list[SnapshotItem],
        icons: list[SnapshotItem],
        screens: ScreenSelection,
    ) -> None:
        # deadline_at is a recorded wall time, so what is left of it is read on the wall clock once; the training
        # then counts down on the monotonic clock, which a step of the wall clock (NTP) does not move
        deadline = Deadline(runs.seconds_left(run.deadline_at, self._clock()), self._monotonic)
        icon_gold = await self._gold_set("icon", icons)
        icon_data = await self._dataset("icon", [i for i in icons if i.key not in icon_gold.keys])
        icon = await self._train(run, "icon", icon_data, deadline.share(runs.icon_share(screens.trainable)))
        icon_gold_gate = await self._gold_gate("icon", icon, icon_gold)
        gold = {"icon": icon_gold_gate.as_metrics()}
        added = list(icon_gold.added)
        screen, kept_files = None, {}
        if screens.trainable:
            chosen = [i for i in of_kind(items, "screen") if i.key in screens.items]
            screen_gold = await self._gold_set("screen", chosen)
            training = [i for i in chosen if i.key not in screen_gold.keys]
            screen = await self._train(run, "screen", await self._dataset("screen", training), deadline)
            screen_gold_gate = await self._gold_gate("screen", screen, screen_gold)
            gold["screen"] = screen_gold_gate.as_metrics()
            if screen_gold_gate.publish:
                added += screen_gold.added
            else:  # the icon model may still be released: with the published screen model, as it is
                screen, kept_files = None, await self._published_files("screen")
                screens = replace(screens, reason=f"screen model kept: {screen_gold_gate.reason}")
        gate = _both(
            quality_gate(
                icon.accuracy,
                icon.current_accuracy,
                margin=self._settings.quality_margin,
                trained_epochs=icon.epochs,
                classes=len(icon.classes),
            ),
            icon_gold_gate,
        )
        if stale := runs.newer_release_out(await self._store.newer_released_snapshot(run.snapshot_id)):
            gate = replace(gate, publish=False, reason=f"{gate.reason}; {stale}")
        trained_at = format_trained_at(self._clock())
        files = await asyncio.to_thread(self._work.release_files, items, icon_data, icon, screen, trained_at)
        files |= kept_files
        metrics = release.run_metrics(
            icon,
            screen,
            screens.reason,
            gate,
            started_at=run.started_at,
            now=self._clock(),
            trained_at=trained_at,
            gold=gold,
        )
        event = release.model_trained(
            run,
            files,
            metrics,
            icon,
            gate,
            n_users=await self._store.n_users(run.snapshot_id),
            trained_at=trained_at,
        )
        await self._store.finish(run, release.Release(files, metrics, event, added), self._clock())
        RUNS.labels("succeeded").inc()
        log.info(
            "run %s finished: held-out %.3f, gate: %s",
            run.id,
            icon.accuracy,
            gate.reason,
            extra={"run_id": str(run.id)},
        )

    async def _dataset(self, kind: str, items: Sequence[SnapshotItem | GoldItem]) -> Dataset:
        examples = [(i.key, i.label, await self._blobs.get(i.image_sha256)) for i in items]
        return await asyncio.to_thread(dataset, kind, examples)

    async def _published_files(self, kind: str) -> dict[str, bytes]:
        """The published release's files of the ``kind`` model (weights, label map, meta), as they are."""
        shas = await self._store.published_artifacts(release.MODEL_FILES[kind])
        return {path: await self._blobs.get(sha) for path, sha in shas.items()}

    async def _published_model(self, kind: str) -> PublishedModel | None:
        """The published model of ``kind`` (weights and class list), to fine-tune from and gate against."""
        return release.read_model(kind, await self._published_files(kind))

    async def _gold_set(self, kind: str, items: Sequence[SnapshotItem]) -> GoldSet:
        """The stored gold set of ``kind`` and what this snapshot adds to it (``domain/gold.py``)."""
        candidates = [
            Candidate(i.key, i.label, i.image_sha256, evidence(i.value))
            for i in items
            if i.label is not None and i.image_sha256 is not None
        ]
        return extend_gold(kind, await self._store.gold(kind), candidates, GOLD_RULES[kind])

    async def _gold_gate(self, kind: str, candidate: ModelOutcome, gold: GoldSet) -> GoldDecision:
        """Candidate and published model on the same gold crops, through the client path."""
        published = await self._published_model(kind)
        data = await self._dataset(
            kind, judged(gold.items, candidate.classes, published.classes if published else ())
        )
        mine, theirs = await asyncio.to_thread(self._work.gold_counts, kind, candidate, published, data)
        rule = GoldRule(
            margin=self._settings.quality_margin,
            class_margin=self._settings.gold_class_margin,
            min_class_examples=self._settings.gold_min_class_examples,
            known_margin=self._settings.gold_known_margin,
        )
        return gold_gate(mine, theirs, rule, published.classes if published else None)

    async def _train(self, run: runs.Run, kind: str, data: Dataset, deadline: Deadline) -> ModelOutcome:
        """One model of the run in a worker thread, unless a checkpoint says it was trained already."""
        resume = await self._checkpoints.load(run.id, kind)
        if resume is not None and resume.get("done"):
            return resume["outcome"]
        loop = asyncio.get_running_loop()
        started = self._monotonic()
        reported: list[EpochReport] = []

        def on_epoch(epoch: EpochReport) -> None:
            reported.append(epoch)
            elapsed = self._monotonic() - started
            self._report(run.id, kind, epoch, len(reported), elapsed, deadline, loop)

        def on_checkpoint(bundle: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(self._checkpoints.save(run.id, kind, bundle), loop).result()

        job = ModelJob(
            kind=kind,
            data=data,
            config=self._work.icon_config if kind == "icon" else self._work.screen_config,
            deadline=deadline,
            previous=await self._published_model(kind),
            resume=resume,
            initial_weights=self._settings.initial_weights,
            device=self._settings.device,
            torch_threads=self._settings.torch_threads,
            checkpoint_seconds=self._settings.checkpoint_seconds,
            on_epoch=on_epoch,
            on_checkpoint=on_checkpoint,
        )
        outcome = await asyncio.to_thread(self._work.train, job)
        await self._checkpoints.save(
            run.id, kind, {"done": True, "outcome": outcome, "epoch": outcome.epochs}
        )
        return outcome

    def _report(
        self,
        run_id: uuid.UUID,
        kind: str,
        epoch: EpochReport,
        number: int,
        elapsed: float,
        deadline: Deadline,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Called from the training thread after every epoch; progress is informational, so a failed send is
        only logged."""
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
        EPOCHS.labels(kind).inc()
        THROUGHPUT.labels(kind).set(epoch.images_per_second)
        if epoch.val_accuracy is not None:
            VAL_ACCURACY.labels(kind).set(epoch.val_accuracy)
        event = TrainingProgress(
            run_id=run_id,
            model=kind,
            epoch=number,
            train_loss=epoch.train_loss,
            val_accuracy=epoch.val_accuracy,
            elapsed_seconds=elapsed,
            deadline_seconds=deadline.remaining,
        )
        asyncio.run_coroutine_threadsafe(self._progress(event), loop).add_done_callback(_log_unsent)


def _both(gate: GateDecision, gold: GoldDecision) -> GateDecision:
    """Published only if the held-out gate and the gold gate both pass; both reasons are kept."""
    return replace(gate, publish=gate.publish and gold.publish, reason=f"{gate.reason}; {gold.reason}")


async def _stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task])


def _log_unsent(sent: concurrent.futures.Future[None]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        log.warning("progress event not sent: %r", sent.exception())


PredictImages = Callable[[str, PublishedModel, Sequence[bytes]], list[tuple[str | None, float]]]
Publish = Callable[[Event], Awaitable[None]]


class Predictor:
    """Answers voting's ``model.prediction_requested`` with ``model.predicted``: the published release's icon
    model (icons, knowledge crops) or screen model (screenshots) run on each item's stored image through the
    client path, with whether that release's training snapshot held the item (then its answer is no evidence).

    Cost: one forward pass per distinct item of a request (voting sends at most ``prediction_batch`` items an
    event, only for items it is waiting on, once per model version), in a worker thread; the release's
    models are loaded once per version. Before the first release a request is acked unanswered (voting asks
    again after ``WARP_PREDICTION_RETRY_SECONDS``)."""

    def __init__(
        self,
        store: PredictionStore,
        blobs: BlobStore,
        publish: Publish,
        *,
        predict: PredictImages = predict_images,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._publish = publish
        self._predict = predict
        # the release's version, its models and its training snapshot's items: read once per version
        self._loaded: tuple[str, dict[str, PublishedModel | None], set[tuple[str, str]]] | None = None

    async def handle(self, request: PredictionRequested) -> None:
        published = await self._store.published_release()
        if published is None:
            log.info("no published model yet: prediction request %s left unanswered", request.message_id)
            return
        with PREDICTION_SECONDS.time():
            models, trained = await self._release(published)
            wanted = [Wanted(i.item_kind, i.item_key, i.image_sha256) for i in request.items]
            predictions: list[Prediction] = []
            for model_kind, items in sorted(by_model(wanted).items()):
                images = [await self._image(item.image_sha256) for item in items]
                model = models.get(model_kind)
                answers = (
                    [(None, 0.0)] * len(items)
                    if model is None
                    else await asyncio.to_thread(self._predict, model_kind, model, images)
                )
                for item, image, (label, confidence) in zip(items, images, answers, strict=True):
                    ref = trained_ref(item.item_kind, item.item_key, _pixels_key(image))
                    predictions.append(
                        Prediction(
                            item_kind=item.item_kind,
                            item_key=item.item_key,
                            label=label,
                            confidence=min(1.0, max(0.0, confidence)),
                            trained_on=ref is None or ref in trained,
                        )
                    )
                PREDICTED.labels(model_kind).inc(len(items))
        await self._publish(
            ModelPredicted(
                model_version=published.version, request_id=request.message_id, predictions=predictions
            )
        )

    async def _image(self, sha256: str) -> bytes:
        try:
            return await self._blobs.get(sha256)
        except BlobNotFound:
            return b""  # answered as unreadable: voting counts no prediction for it

    async def _release(
        self, published: PublishedRelease
    ) -> tuple[dict[str, PublishedModel | None], set[tuple[str, str]]]:
        """The release's icon and screen models (None where it has none) and the (kind, key) of its training
        snapshot, loaded once per version: a published snapshot does not change."""
        if self._loaded is None or self._loaded[0] != published.version:
            models: dict[str, PublishedModel | None] = {}
            for kind, paths in release.MODEL_FILES.items():
                shas = await self._store.release_artifacts(published.run_id, paths)
                files = {path: await self._blobs.get(sha) for path, sha in shas.items()}
                models[kind] = release.read_model(kind, files)
            self._loaded = (published.version, models, await self._store.snapshot_refs(published.snapshot_id))
        return self._loaded[1], self._loaded[2]


def _pixels_key(image: bytes) -> str | None:
    try:
        return keys_of_png(image).pixels_sha256
    except (ValueError, OSError, UnidentifiedImageError):
        return None


class ActiveTrainer:
    """Runs recorded runs while this process holds the active trainer's lock; a standby waits for it, and takes
    over (resuming unfinished runs from their checkpoints) when the active trainer dies. Beside the training, a
    second lane makes the imprint release of a run recorded meanwhile (``recorded`` is set when one is)."""

    def __init__(
        self,
        store: TrainerStore,
        runner: TrainingRunner,
        wake: asyncio.Event,
        after_runs: Callable[[], None] = lambda: None,
        idle_seconds: float = 10.0,
        recorded: asyncio.Event | None = None,
    ) -> None:
        self._store = store
        self._runner = runner
        self._wake = wake
        self._after_runs = after_runs
        self._idle_seconds = idle_seconds
        self._recorded = recorded
        self.active = False

    async def _imprint_lane(self, recorded: asyncio.Event) -> None:
        while True:
            await woken(recorded, self._idle_seconds)
            recorded.clear()
            try:
                if await self._runner.imprint_ahead() is not None:
                    self._after_runs()
            except RunTakenOver as taken:
                log.warning("imprint ahead: %s", taken)
            except Exception as error:  # the training lane goes on; the run's own attempt imprints it then
                if is_outage(error):
                    log.warning("imprint ahead interrupted by an outage (%r)", error)
                else:
                    log.exception("imprint ahead failed")

    async def run(self) -> None:
        async with self._store.active_lock() as still_held, contextlib.AsyncExitStack() as lanes:
            if self._recorded is not None:
                lanes.push_async_callback(_stopped, asyncio.create_task(self._imprint_lane(self._recorded)))
            self.active = True
            log.info("this trainer is the active one")
            try:
                while True:
                    await still_held()  # if the lock's connection broke, stop being the active trainer
                    if not await self._runner.run_unfinished():
                        await woken(self._wake, self._idle_seconds)
                        self._wake.clear()
                    self._after_runs()
            finally:
                self.active = False
