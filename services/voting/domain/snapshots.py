"""When a refresh recomputes consensus, when it makes a training snapshot, and what the snapshot holds: pure
decisions of plain values and ``now``.

A snapshot is made when enough accepted labels are new or changed since the last one (icons or screenshots),
unless the last one still waits for its training (at most one waits) or contributions are still arriving (the
debounce), which ten times the threshold of changes overrides. An admin request snapshots at once. A snapshot
that is due but deferred keeps the next refresh looking, even if no vote changes meanwhile.

Classes the previous snapshot did not have are not held back by any of that: clients should recognise a new
item within minutes, and the trainer adds them to the published model with an imprint release (seconds), even
while it trains on an earlier snapshot. Such a snapshot is made at most once per ``new_class_spacing``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from services.voting.domain.derived import ocr_corrections

Trigger = Literal["icon_threshold", "screen_threshold", "new_classes", "admin"]


@dataclass(frozen=True)
class SnapshotRules:
    icon_threshold: int
    screen_threshold: int
    debounce: timedelta
    training_wait: timedelta
    pile_up_factor: int = 10
    # the least time between a snapshot and the next one made for new classes alone; None: no such snapshots
    new_class_spacing: timedelta | None = timedelta(seconds=60)

    @property
    def pile_up(self) -> int:
        """Changes that snapshot even while contributions are still arriving."""
        return self.pile_up_factor * self.icon_threshold


@dataclass(frozen=True)
class LabelChanges:
    """Accepted labels new or changed since the previous snapshot."""

    icons: int
    screens: int
    # labels of accepted icons that no icon of the previous snapshot had (0 without a previous snapshot)
    new_classes: int = 0


@dataclass(frozen=True)
class PreviousSnapshot:
    id: uuid.UUID
    created_at: datetime
    runs: int
    finished_runs: int


@dataclass(frozen=True)
class SnapshotDecision:
    make: bool
    still_due: bool  # deferred: the next refresh looks again even if no vote changed
    trigger: Trigger | None
    reason: str


def refresh_pause(interval_seconds: float, last_took_seconds: float) -> float:
    """A refresh that takes long (many votes) runs less often: at most a quarter of the time."""
    return max(interval_seconds, 3 * last_took_seconds)


def awaits_training(previous: PreviousSnapshot, now: datetime, wait: timedelta) -> bool:
    """The snapshot still waits: its run is unfinished, or it has none yet and was made recently (a request
    lost on its way, e.g. dead-lettered, must not block training forever)."""
    if previous.finished_runs:
        return False
    if previous.runs:
        return True
    return now - previous.created_at < wait


def decide_snapshot(
    changes: LabelChanges,
    rules: SnapshotRules,
    *,
    now: datetime,
    previous: PreviousSnapshot | None,
    last_arrival: datetime | None,
    forced: bool = False,
) -> SnapshotDecision:
    if forced:
        return SnapshotDecision(True, False, "admin", "an admin asked for training")
    decision = _threshold_decision(changes, rules, now=now, previous=previous, last_arrival=last_arrival)
    if decision.make or not changes.new_classes or previous is None or rules.new_class_spacing is None:
        return decision
    # new classes: neither the thresholds, the debounce nor the previous snapshot's training hold them back
    since = now - previous.created_at
    if since >= rules.new_class_spacing:
        return SnapshotDecision(
            True,
            False,
            "new_classes",
            f"{changes.new_classes} new classes: added by an imprint release without waiting for training",
        )
    return SnapshotDecision(
        False,
        True,
        "new_classes",
        f"{changes.new_classes} new classes, but the previous snapshot is {since.total_seconds():.0f} s old "
        f"(at least {rules.new_class_spacing.total_seconds():.0f} s)",
    )


def _threshold_decision(
    changes: LabelChanges,
    rules: SnapshotRules,
    *,
    now: datetime,
    previous: PreviousSnapshot | None,
    last_arrival: datetime | None,
) -> SnapshotDecision:
    trigger: Trigger
    if changes.icons >= rules.icon_threshold:
        trigger, counted = "icon_threshold", f"{changes.icons} new icon labels"
    elif changes.screens >= rules.screen_threshold:
        trigger, counted = "screen_threshold", f"{changes.screens} new screenshots"
    else:
        return SnapshotDecision(False, False, None, "below both thresholds")
    if previous is not None and awaits_training(previous, now, rules.training_wait):
        return SnapshotDecision(
            False, True, trigger, f"{counted}, but snapshot {previous.id} awaits training"
        )
    quiet = last_arrival is None or now - last_arrival >= rules.debounce
    if quiet:
        return SnapshotDecision(True, False, trigger, f"{counted} and no contribution for {rules.debounce}")
    if max(changes.icons, changes.screens) >= rules.pile_up:
        return SnapshotDecision(True, False, trigger, f"{counted}: at least {rules.pile_up}, burst or not")
    return SnapshotDecision(False, True, trigger, f"{counted}, but contributions are still arriving")


@dataclass(frozen=True)
class SnapshotItem:
    kind: str
    key: str
    label: str | None
    value: dict[str, Any] | None
    image_sha256: str | None


@dataclass
class Accepted:
    """Every accepted item of the kinds composed here: {kind: {key: label (anchors: the merged grid)}}. Icons
    are not among them: the store copies every accepted icon into the snapshot with its first stored crop and a
    value (its confidence, whether a moderator settled it), in the database, since they are most of a
    community's items."""

    labels: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, kind: str) -> dict[str, Any]:
        return self.labels.get(kind, {})


@dataclass(frozen=True)
class NewSnapshot:
    id: uuid.UUID
    parent_id: uuid.UUID | None
    reason: Literal["threshold", "admin"]
    items: list[SnapshotItem]
    new_label_count: int
    details: dict[str, Any]


def compose_snapshot(
    snapshot_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    accepted: Accepted,
    screens: Mapping[str, str],
    changes: LabelChanges,
    trigger: Trigger,
    rules: SnapshotRules,
) -> NewSnapshot:
    """What training gets besides the accepted icons (which the store copies): ``screens`` (capped per type),
    knowledge entries; derived maps in their published form (OCR: {raw text: corrected name}; anchor grids)."""
    corrections = ocr_corrections(accepted.of("ocr"))
    items = [SnapshotItem("screen", key, label, None, key) for key, label in screens.items()]
    items += [
        SnapshotItem("knowledge", key, label, None, None) for key, label in accepted.of("knowledge").items()
    ]
    items += [SnapshotItem("ocr", raw, fixed, None, None) for raw, fixed in corrections.items()]
    items += [SnapshotItem("anchor", key, None, value, None) for key, value in accepted.of("anchor").items()]
    items.sort(key=lambda item: (item.kind, item.key))
    return NewSnapshot(
        id=snapshot_id,
        parent_id=parent_id,
        reason="admin" if trigger == "admin" else "threshold",
        items=items,
        new_label_count=changes.icons,
        details={
            "trigger": trigger,
            "new_icon_labels": changes.icons,
            "new_screen_images": changes.screens,
            "new_icon_classes": changes.new_classes,
            "icon_threshold": rules.icon_threshold,
            "screen_threshold": rules.screen_threshold,
            "ocr_corrections": len(corrections),
        },
    )
