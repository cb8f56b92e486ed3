"""Pure data rules: what a snapshot holds, the stratified split, and whether a screen classifier can be trained."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def rendering_variants(crops: np.ndarray, tolerance: float = 20.0) -> list[str]:
    """The rendering variant of each crop (N x H x W x 3, uint8): the colour of the backdrop just inside its
    frame (game icons sit on a rarity background); crops whose colours differ by less than ``tolerance`` in every
    channel from a variant's first crop share it. Crops of one item on one background share one; the same item
    on another rarity does not."""
    if len(crops) == 0:
        return []
    inside = max(2, crops.shape[2] // 16)
    edges = np.concatenate([crops[:, :, inside : inside + 2], crops[:, :, -inside - 2 : -inside]], axis=2)
    colours = np.median(edges.reshape(len(crops), -1, 3), axis=1)
    seeds: list[np.ndarray] = []
    variants = []
    for colour in colours:
        match = next((k for k, seed in enumerate(seeds) if np.abs(seed - colour).max() < tolerance), None)
        if match is None:
            seeds.append(colour)
            match = len(seeds) - 1
        variants.append(f"v{match}")
    return variants


def variant_split(
    labels: Sequence[str], variants: Sequence[str], validation_share: float = 0.2, seed: int = 0
) -> Split:
    """Validation that predicts players' crops: a class with crops in several rendering variants holds out
    whole variants (at least one, about ``validation_share`` of its crops, never all), so what it is validated on
    is a background it never trained on; a class with one variant splits its crops as ``stratified_split``."""
    by_class: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, (label, variant) in enumerate(zip(labels, variants, strict=True)):
        by_class[label][variant].append(index)
    rng = random.Random(seed)
    single = [
        i
        for label in by_class
        if len(by_class[label]) < 2
        for group in by_class[label].values()
        for i in group
    ]
    within = stratified_split([labels[i] for i in single], validation_share, seed)
    train = [single[i] for i in within.train]
    validation = [single[i] for i in within.validation]
    for label in sorted(by_class):
        groups = by_class[label]
        if len(groups) < 2:
            continue
        order = sorted(groups)
        rng.shuffle(order)
        order.sort(key=lambda variant: len(groups[variant]))  # the rarest backgrounds are held out first
        total, held = sum(len(g) for g in groups.values()), 0
        for number, variant in enumerate(order):
            if number < len(order) - 1 and (
                held == 0 or held + len(groups[variant]) <= validation_share * total
            ):
                validation += groups[variant]
                held += len(groups[variant])
            else:
                train += groups[variant]
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
