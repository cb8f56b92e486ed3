"""Pure data rules: what a snapshot holds, the stratified split, and whether a screen classifier can be trained."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.reads import TRAINED_KINDS


@dataclass(frozen=True)
class SnapshotItem:
    """One row of a training snapshot (voting's ``snapshot_items``)."""

    kind: str  # icon | screen | ocr | anchor
    key: str
    label: str | None
    value: Any = None  # an anchor entry
    image_sha256: str | None = None


def trained_labels(items: Sequence[SnapshotItem]) -> dict[tuple[str, str], str | None]:
    """{(kind, key): label} of the kinds a model is trained on: what decides whether a snapshot adds anything."""
    return {(i.kind, i.key): i.label for i in items if i.kind in TRAINED_KINDS}


def of_kind(items: Sequence[SnapshotItem], kind: str) -> list[SnapshotItem]:
    return sorted((i for i in items if i.kind == kind), key=lambda i: i.key)


@dataclass(frozen=True)
class Split:
    train: list[int]
    validation: list[int]


def stratified_split(labels: Sequence[str], validation_share: float = 0.2, seed: int = 0) -> Split:
    """Every class with at least 2 samples keeps at least one for validation; singletons train only."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    rng = random.Random(seed)
    train, validation = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label])
        rng.shuffle(members)
        if len(members) < 2:
            train += members
            continue
        held = max(1, round(len(members) * validation_share))
        held = min(held, len(members) - 1)
        validation += members[:held]
        train += members[held:]
    return Split(sorted(train), sorted(validation))


@dataclass(frozen=True)
class ScreenSelection:
    items: dict[str, str]  # sha -> screen type, after the rules
    dropped_classes: list[str]
    trainable: bool
    reason: str


def select_screens(items: Mapping[str, str], min_total: int = 7, min_per_class: int = 5) -> ScreenSelection:
    """Whether a screen classifier can be trained on the snapshot's screenshots (already capped per type by
    voting's snapshot), and on which: classes with fewer than ``min_per_class`` images are dropped; at least
    ``min_total`` images in two classes are needed to train at all."""
    counts = Counter(items.values())
    dropped = sorted(t for t, n in counts.items() if n < min_per_class)
    kept = {sha: screen_type for sha, screen_type in items.items() if counts[screen_type] >= min_per_class}
    classes = set(kept.values())
    if len(kept) < min_total:
        return ScreenSelection(
            kept, dropped, False, f"{len(kept)} usable screenshots; at least {min_total} needed"
        )
    if len(classes) < 2:
        return ScreenSelection(kept, dropped, False, "fewer than two screen types with enough images")
    return ScreenSelection(kept, dropped, True, f"{len(kept)} screenshots in {len(classes)} types")
