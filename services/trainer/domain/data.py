"""Pure data rules: label maps, the stratified split, and the screen classifier's class rules."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def label_map(labels: Sequence[str]) -> dict[str, str]:
    """``{"0": label, ...}`` with indices in alphabetical label order (WIRE_CONTRACT §3)."""
    return {str(i): label for i, label in enumerate(sorted(set(labels)))}


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


def select_screens(
    items: Mapping[str, str],
    min_total: int = 7,
    min_per_class: int = 5,
    keep_all_up_to: int = 30,
    cap: int = 150,
) -> ScreenSelection:
    """The screen classifier's rules: classes with fewer than ``min_per_class`` images are dropped; a class keeps
    all its images up to ``keep_all_up_to`` and is capped at ``cap`` beyond; at least ``min_total`` images and two
    classes are needed to train at all."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for sha, screen_type in items.items():
        by_type[screen_type].append(sha)
    dropped = sorted(t for t, shas in by_type.items() if len(shas) < min_per_class)
    kept: dict[str, str] = {}
    for screen_type, shas in by_type.items():
        if screen_type in dropped:
            continue
        chosen = sorted(shas) if len(shas) <= keep_all_up_to else sorted(shas)[:cap]
        kept.update(dict.fromkeys(chosen, screen_type))
    classes = set(kept.values())
    if len(kept) < min_total:
        return ScreenSelection(
            kept, dropped, False, f"{len(kept)} usable screenshots; at least {min_total} needed"
        )
    if len(classes) < 2:
        return ScreenSelection(kept, dropped, False, "fewer than two screen types with enough images")
    return ScreenSelection(kept, dropped, True, f"{len(kept)} screenshots in {len(classes)} types")
