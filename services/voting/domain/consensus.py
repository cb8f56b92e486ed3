"""Plain majority (the old rule, kept as the baseline the benchmarks compare against) and cohorts.

**Cohorts.** Two installs that contradicted settled labels with the same label on the same item, on at least
``min_shared_flips`` different items, are linked; linked groups of at least ``min_size`` installs are cohorts
and speak with one voice (``domain.tally.voice_of``). Honest mistakes rarely coincide (they scatter over many
labels) and spammers vote at random, but a coordinated group pushing one label onto settled items coincides on
every target.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Vote:
    item: Hashable
    install: str
    label: str
    seq: int  # arrival order: larger is later


@dataclass(frozen=True)
class Flip:
    """An install's vote against an item's settled label (a disagreeing trust judgement)."""

    item: Hashable
    label: str
    install: str


def plain_majority(votes: Iterable[Vote]) -> dict[Hashable, str | None]:
    """The old rule: most votes wins; a tie goes to the label voted first."""
    by_item: dict[Hashable, list[Vote]] = defaultdict(list)
    for vote in votes:
        by_item[vote.item].append(vote)
    winners: dict[Hashable, str | None] = {}
    for item, item_votes in by_item.items():
        counts = Counter(vote.label for vote in item_votes)
        first_seen = {}
        for vote in sorted(item_votes, key=lambda v: v.seq):
            first_seen.setdefault(vote.label, vote.seq)
        winners[item] = max(counts, key=lambda label: (counts[label], -first_seen[label]))
    return winners


def find_cohorts(flips: Iterable[Flip], min_shared_flips: int, min_size: int) -> list[frozenset[str]]:
    together: dict[tuple[Hashable, str], set[str]] = defaultdict(set)
    for flip in flips:
        together[(flip.item, flip.label)].add(flip.install)
    shared: Counter[tuple[str, str]] = Counter()
    for installs in together.values():
        members = sorted(installs)
        for i, first in enumerate(members):
            for second in members[i + 1 :]:
                shared[(first, second)] += 1
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for (first, second), count in shared.items():
        if count >= min_shared_flips:
            parent[root(first)] = root(second)
    groups: dict[str, set[str]] = defaultdict(set)
    for node in parent:
        groups[root(node)].add(node)
    return sorted((frozenset(g) for g in groups.values() if len(g) >= min_size), key=lambda g: sorted(g))


def cohort_names(cohorts: Iterable[frozenset[str]]) -> dict[str, str]:
    """{install: its cohort's name}, the name being its first member: stable while the cohort keeps it."""
    return {install: min(cohort) for cohort in cohorts for install in cohort}
