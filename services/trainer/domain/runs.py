"""The rules of a training run: when to give up, when to skip, how long it may take and how that time is
split between the two models. Plain values in (and ``now``), a decision and its reason out."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

MAX_ATTEMPTS = 3
MIN_ICON_CROPS = 5  # the old trainer's floor
MIN_ICON_CLASSES = 2
# Icons get the budget first; the screen classifier, when there is one to train, gets the last quarter of it.
ICON_SHARE_WITH_SCREENS = 0.75
NOTHING_NEW = "snapshot adds nothing over the published model"

Labels = Mapping[tuple[str, str], str | None]  # (item kind, item key) -> label, of the trained kinds


@dataclass(frozen=True)
class Run:
    id: uuid.UUID
    snapshot_id: uuid.UUID
    status: str
    attempts: int
    started_at: datetime | None
    deadline_at: datetime | None


@dataclass(frozen=True)
class Stop:
    """A run that ends without training: ``status`` is what it is recorded as."""

    status: str
    reason: str


@dataclass(frozen=True)
class Attempt:
    number: int
    started_at: datetime
    deadline_at: datetime


def give_up(attempts: int, max_attempts: int = MAX_ATTEMPTS) -> Stop | None:
    """A run that was started ``max_attempts`` times already fails: one that kills its process every time (out of
    memory, say) must not block every later run."""
    if attempts >= max_attempts:
        return Stop("failed", f"gave up after {attempts} attempts")
    return None


def next_attempt(run: Run, now: datetime, budget: timedelta) -> Attempt:
    """The first attempt fixes when the run started and its deadline; a resumed attempt keeps both, so a crash
    and restart does not buy a run more time."""
    return Attempt(
        number=run.attempts + 1,
        started_at=run.started_at or now,
        deadline_at=run.deadline_at or now + budget,
    )


def with_attempt(run: Run, attempt: Attempt) -> Run:
    """The run as it is recorded once ``attempt`` has started."""
    return replace(
        run,
        status="running",
        attempts=attempt.number,
        started_at=attempt.started_at,
        deadline_at=attempt.deadline_at,
    )


def nothing_new(
    snapshot_id: uuid.UUID,
    labels: Labels,
    published_snapshot_id: uuid.UUID | None,
    published_labels: Labels,
) -> Stop | None:
    """Skip a snapshot whose icon and screen labels are exactly those the published model was trained on. The
    published model's own snapshot is trained again (a retry or a rollback target), never skipped."""
    if published_snapshot_id is None or published_snapshot_id == snapshot_id:
        return None
    if dict(labels) == dict(published_labels):
        return Stop("skipped", NOTHING_NEW)
    return None


def too_few_icons(crops: int, classes: int) -> Stop | None:
    if crops < MIN_ICON_CROPS or classes < MIN_ICON_CLASSES:
        return Stop(
            "skipped",
            f"{crops} icon crops in {classes} classes: at least {MIN_ICON_CROPS} in {MIN_ICON_CLASSES}",
        )
    return None


def imprint_first(snapshot_classes: Collection[str], published_classes: Collection[str] | None) -> list[str]:
    """The classes a quick imprint release adds before the full training: those of the snapshot the published
    icon model does not know (none without a published model)."""
    if published_classes is None:
        return []
    return sorted(set(snapshot_classes) - set(published_classes))


def superseded(run_id: uuid.UUID, unfinished: Sequence[uuid.UUID]) -> Stop | None:
    """A run with a newer one recorded after it (``unfinished``: in the order they were recorded) is not trained:
    the newer snapshot holds everything this one does as it stands now, and the newer run's imprint release has
    added its new classes already. Only the newest waiting snapshot is worth a full training."""
    if run_id in unfinished and unfinished[-1] != run_id:
        return Stop("skipped", f"superseded by run {unfinished[-1]}, of a newer snapshot")
    return None


def newer_release_out(newer_snapshot_id: uuid.UUID | None) -> str | None:
    """Why a run's release must not go out: a release of a newer snapshot is published or on its way (an imprint
    release of new classes, made while this run trained); publishing this one would take those classes from
    clients."""
    if newer_snapshot_id is None:
        return None
    return f"a release of a newer snapshot is published or on its way ({newer_snapshot_id})"


def imprint_run_id(run_id: uuid.UUID) -> uuid.UUID:
    """The imprint release of a run is a run of its own (the publisher checks every release against its run),
    with an id derived from the run's, so a resumed run finds it done."""
    return uuid.uuid5(run_id, "imprint")


def seconds_left(deadline_at: datetime, now: datetime) -> float:
    return max(0.0, (deadline_at - now).total_seconds())


def icon_share(screens_trainable: bool) -> float:
    """The share of the time left that the icon classifier may use; the screen classifier gets the rest."""
    return ICON_SHARE_WITH_SCREENS if screens_trainable else 1.0
