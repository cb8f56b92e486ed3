"""The gold set and the gate on it: pure rules.

The gold set is a fixed evaluation set, kept out of training, on which a candidate and the published model are
compared through the client path. Its items are moderator-confirmed crops where there are any, otherwise the
accepted crops with the strongest evidence; once a release has published them they are stored by the trainer and
never taken from a later snapshot again, so a poisoned snapshot cannot grade itself. A later snapshot only adds:
moderator-confirmed crops, and evidence crops for classes the gold set does not cover yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MODERATOR = "moderator"
EVIDENCE = "evidence"


@dataclass(frozen=True)
class GoldItem:
    kind: str  # icon | screen
    key: str
    label: str
    image_sha256: str
    source: str  # moderator | evidence


@dataclass(frozen=True)
class Evidence:
    """What voting says about an accepted item (``snapshot_items.value``; NULL before issue 13)."""

    confidence: float | None
    moderator_confirmed: bool


def evidence(value: Any) -> Evidence:
    """``{"confidence": float in [0, 1], "gold": bool}`` or NULL; anything else counts as no evidence."""
    if not isinstance(value, Mapping):
        return Evidence(None, False)
    confidence = value.get("confidence")
    usable = isinstance(confidence, int | float) and not isinstance(confidence, bool) and 0 <= confidence <= 1
    return Evidence(float(confidence) if usable else None, value.get("gold") is True)


@dataclass(frozen=True)
class Candidate:
    """An accepted item of the snapshot that could join the gold set."""

    key: str
    label: str
    image_sha256: str
    evidence: Evidence


@dataclass(frozen=True)
class GoldRules:
    share: float = 0.2  # of a class's crops taken as gold from evidence
    max_per_class: int = 3
    min_training: int = 2  # crops a class keeps for training


@dataclass(frozen=True)
class GoldSet:
    items: list[GoldItem]  # everything evaluated on: stored and added
    added: list[GoldItem]  # to be stored with the release

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(item.key for item in self.items)


def extend_gold(
    kind: str, stored: Sequence[GoldItem], snapshot: Sequence[Candidate], rules: GoldRules = GoldRules()
) -> GoldSet:
    """The stored gold set of ``kind``, plus what ``snapshot`` may add: every moderator-confirmed item not yet
    in it (a moderator's label replaces a stored evidence label), and for each class without gold yet the items
    with the strongest evidence (confidence, then key: deterministic), as long as the class keeps
    ``rules.min_training`` crops for training. Stored labels are never taken from the snapshot otherwise."""
    gold = {item.key: item for item in stored}
    added: dict[str, GoldItem] = {}
    for candidate in snapshot:
        known = gold.get(candidate.key)
        confirmed = candidate.evidence.moderator_confirmed
        if confirmed and (known is None or known.source != MODERATOR):
            added[candidate.key] = _gold(kind, candidate, MODERATOR)
    covered = {item.label for item in gold.values()} | {item.label for item in added.values()}
    by_class: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in snapshot:
        by_class[candidate.label].append(candidate)
    for label in sorted(set(by_class) - covered):
        members = by_class[label]
        take = min(rules.max_per_class, round(len(members) * rules.share), len(members) - rules.min_training)
        strongest = sorted(members, key=lambda c: (-(c.evidence.confidence or 0.0), c.key))
        for candidate in strongest[: max(take, 0)]:
            added[candidate.key] = _gold(kind, candidate, EVIDENCE)
    merged = gold | added
    return GoldSet(
        sorted(merged.values(), key=lambda item: item.key), sorted(added.values(), key=lambda i: i.key)
    )


def judged(
    gold: Sequence[GoldItem], candidate_classes: Collection[str], published_classes: Collection[str]
) -> list[GoldItem]:
    """The gold items a candidate is judged on: those of every class it or the published model knows. A class
    the published model knows and the snapshot lost (every crop relabelled, say) counts as a class that fell."""
    known = set(candidate_classes) | set(published_classes)
    return [item for item in gold if item.label in known]


def _gold(kind: str, candidate: Candidate, source: str) -> GoldItem:
    return GoldItem(kind, candidate.key, candidate.label, candidate.image_sha256, source)


# --- the gate -------------------------------------------------------------------------------------------------------

ClassCounts = Mapping[str, tuple[int, int]]  # label -> (correct, examples) on the gold set


@dataclass(frozen=True)
class GoldRule:
    margin: float = 0.0  # overall accuracy the candidate may lose
    class_margin: float = 0.2  # accuracy one class may lose
    min_class_examples: int = 3  # classes with fewer gold examples are judged overall only
    # accuracy the candidate may lose on the gold crops of the classes both models know
    known_margin: float = 0.02


@dataclass(frozen=True)
class GoldDecision:
    publish: bool
    reason: str
    candidate: float | None
    published: float | None
    examples: int
    fallen_classes: dict[str, tuple[float, float]]  # label -> (published, candidate), past class_margin

    def as_metrics(self) -> dict[str, Any]:
        return {
            "publish": self.publish,
            "reason": self.reason,
            "candidate_accuracy": self.candidate,
            "published_accuracy": self.published,
            "examples": self.examples,
            "fallen_classes": {k: list(v) for k, v in self.fallen_classes.items()},
        }


def overall(counts: ClassCounts) -> float | None:
    examples = sum(n for _, n in counts.values())
    return sum(c for c, _ in counts.values()) / examples if examples else None


def gold_gate(
    candidate: ClassCounts,
    published: ClassCounts | None,
    rule: GoldRule,
    known: Collection[str] | None = None,
) -> GoldDecision:
    """Candidate against published model on the same gold crops: refused when its overall accuracy falls by more
    than ``rule.margin``, when on the crops of the classes both know (``known``: the published model's classes)
    it falls by more than ``rule.known_margin`` (a release that adds classes gains their crops, which the
    published model cannot get right, and could hide what the old classes lost, a few crops each), or any class
    with at least ``rule.min_class_examples`` gold crops falls by more than ``rule.class_margin``. Without a
    published model or gold crops there is nothing to compare: passed."""
    examples = sum(n for _, n in candidate.values())
    mine = overall(candidate)
    if published is None or not examples:
        why = "no published model to compare with" if published is None else "no gold crops yet"
        return GoldDecision(True, f"gold set: {why}", mine, None, examples, {})
    theirs = overall(published)
    fallen = {}
    for label, (correct, n) in sorted(candidate.items()):
        before = published.get(label)
        if n < rule.min_class_examples or before is None or not before[1]:
            continue
        was, now = before[0] / before[1], correct / n
        if was - now > rule.class_margin:
            fallen[label] = (was, now)
    scores = f"{mine:.3f} vs published {theirs:.3f} on {examples} gold crops"
    if theirs is not None and mine is not None and mine + rule.margin < theirs:
        return GoldDecision(
            False, f"gold set: {scores}, below by more than {rule.margin}", mine, theirs, examples, fallen
        )
    if known is not None:
        shared = set(known) & set(candidate)
        mine_known = overall({label: candidate[label] for label in shared})
        theirs_known = overall({label: published[label] for label in shared if label in published})
        if (
            mine_known is not None
            and theirs_known is not None
            and mine_known + rule.known_margin < theirs_known
        ):
            return GoldDecision(
                False,
                f"gold set: {scores}; on the {len(shared)} classes the published model knows "
                f"{mine_known:.3f} vs {theirs_known:.3f}, below by more than {rule.known_margin}",
                mine,
                theirs,
                examples,
                fallen,
            )
    if fallen:
        worst = ", ".join(f"{label} {was:.2f} -> {now:.2f}" for label, (was, now) in list(fallen.items())[:5])
        return GoldDecision(
            False,
            f"gold set: {scores}; {len(fallen)} class(es) fell by more than {rule.class_margin}: {worst}",
            mine,
            theirs,
            examples,
            fallen,
        )
    return GoldDecision(True, f"gold set: {scores}", mine, theirs, examples, {})
