"""Consensus over one install = one vote per item, robust to noisy installs, spammers and coordinated groups.

Pure functions over arrays of votes; no I/O. The method, in order:

1. **Settled labels.** An item is *settled* once its first ``settle_votes`` votes (in arrival order) agree by a
   strict majority; a later vote for another label is a *flip vote*.
2. **Cohorts.** Two installs that cast flip votes for the same label on the same item, on at least
   ``cohort_min_shared_flips`` different items, are linked; linked groups of at least ``cohort_min_size`` installs
   are cohorts. Honest mistakes rarely coincide (they scatter over many labels) and spammers vote at random, but a
   coordinated group pushing one label onto settled items coincides on every target.
3. **Reliability (Dawid–Skene, one-coin).** EM estimates each install's accuracy ``r`` (Beta prior) and each
   item's label posterior, where a vote for a label multiplies its odds by ``r (K-1) / (1-r)``. A cohort's votes
   on an item count as one vote, cast with the cohort's lowest member reliability.
4. **Decision.** An item is accepted when the posterior of its best label is at least ``min_posterior`` and at
   least ``min_support`` independent voters (a cohort counts once) back it; otherwise it is withheld. A settled
   item whose label would flip to one backed by a cohort is withheld instead.

Plain majority (``plain_majority``) is kept as the baseline the simulator compares against.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Vote:
    item: Hashable
    install: str
    label: str
    seq: int  # arrival order: larger is later


@dataclass(frozen=True)
class ConsensusParams:
    min_posterior: float = 0.95
    min_support: int = 2
    settle_votes: int = 3
    cohort_min_shared_flips: int = 3
    cohort_min_size: int = 3
    reliability_prior: tuple[float, float] = (8.0, 2.0)  # Beta(a, b): prior mean 0.8
    em_iterations: int = 15
    label_space: int | None = None  # K; default: the number of distinct labels voted


@dataclass(frozen=True)
class Decision:
    label: str | None
    accepted: bool
    confidence: float
    support: int
    reason: str


@dataclass
class ConsensusResult:
    decisions: dict[Hashable, Decision]
    reliability: dict[str, float]
    cohorts: list[frozenset[str]] = field(default_factory=list)


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


def settled_labels(votes: Sequence[Vote], settle_votes: int) -> dict[Hashable, tuple[str, int]]:
    """item -> (settled label, seq of the vote that settled it)."""
    by_item: dict[Hashable, list[Vote]] = defaultdict(list)
    for vote in votes:
        by_item[vote.item].append(vote)
    settled = {}
    for item, item_votes in by_item.items():
        if len(item_votes) < settle_votes:
            continue
        first = sorted(item_votes, key=lambda v: v.seq)[:settle_votes]
        label, count = Counter(v.label for v in first).most_common(1)[0]
        if count * 2 > settle_votes:
            settled[item] = (label, first[-1].seq)
    return settled


def find_cohorts(
    votes: Sequence[Vote], settled: dict[Hashable, tuple[str, int]], min_shared_flips: int, min_size: int
) -> list[frozenset[str]]:
    flips: dict[tuple[Hashable, str], set[str]] = defaultdict(set)
    for vote in votes:
        if vote.item in settled:
            label, settled_at = settled[vote.item]
            if vote.seq > settled_at and vote.label != label:
                flips[(vote.item, vote.label)].add(vote.install)
    shared: Counter[tuple[str, str]] = Counter()
    for installs in flips.values():
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


def robust_consensus(votes: Sequence[Vote], params: ConsensusParams = ConsensusParams()) -> ConsensusResult:
    if not votes:
        return ConsensusResult({}, {})
    settled = settled_labels(votes, params.settle_votes)
    cohorts = find_cohorts(votes, settled, params.cohort_min_shared_flips, params.cohort_min_size)
    cohort_of = {install: index for index, cohort in enumerate(cohorts) for install in cohort}

    # Collapse each cohort's votes on an item into one voter per (item, label).
    voter_ids: dict[str, int] = {}
    cohort_members: dict[int, list[int]] = defaultdict(list)
    installs = sorted({vote.install for vote in votes})
    install_index = {install: i for i, install in enumerate(installs)}
    for install in installs:
        key = f"cohort:{cohort_of[install]}" if install in cohort_of else install
        voter_ids.setdefault(key, len(voter_ids))
        cohort_members[voter_ids[key]].append(install_index[install])
    candidates: dict[tuple[Hashable, str], int] = {}
    collapsed: dict[tuple[int, int], None] = {}
    for vote in votes:
        key = f"cohort:{cohort_of[vote.install]}" if vote.install in cohort_of else vote.install
        candidate = candidates.setdefault((vote.item, vote.label), len(candidates))
        collapsed.setdefault((candidate, voter_ids[key]), None)
    vote_candidate = np.fromiter((c for c, _ in collapsed), dtype=np.int64, count=len(collapsed))
    vote_voter = np.fromiter((v for _, v in collapsed), dtype=np.int64, count=len(collapsed))
    candidate_keys = list(candidates)
    items = sorted({item for item, _ in candidate_keys}, key=repr)
    item_index = {item: i for i, item in enumerate(items)}
    candidate_item = np.array([item_index[item] for item, _ in candidate_keys], dtype=np.int64)
    n_labels = params.label_space or len({vote.label for vote in votes})
    n_labels = max(n_labels, 2)

    # Each install's own votes, for the reliability update (cohort members share their cohort's posterior).
    install_votes_candidate = np.array([candidates[(v.item, v.label)] for v in votes], dtype=np.int64)
    install_votes_install = np.array([install_index[v.install] for v in votes], dtype=np.int64)
    votes_per_install = np.bincount(install_votes_install, minlength=len(installs)).astype(float)
    a, b = params.reliability_prior
    reliability = np.full(len(installs), a / (a + b))
    candidates_per_item = np.bincount(candidate_item, minlength=len(items))
    for _ in range(params.em_iterations):
        voter_reliability = np.array(
            [reliability[members].min() for _, members in sorted(cohort_members.items())]
        )
        odds = voter_reliability * (n_labels - 1) / np.clip(1 - voter_reliability, 1e-6, None)
        weight = np.log(np.clip(odds, 1.0, None))
        score = np.bincount(vote_candidate, weights=weight[vote_voter], minlength=len(candidate_keys))
        item_max = np.full(len(items), -np.inf)
        np.maximum.at(item_max, candidate_item, score)
        item_max = np.maximum(item_max, 0.0)  # the unvoted labels have score 0
        exp_score = np.exp(score - item_max[candidate_item])
        unvoted = (n_labels - candidates_per_item) * np.exp(-item_max)
        normaliser = np.bincount(candidate_item, weights=exp_score, minlength=len(items)) + unvoted
        posterior = exp_score / normaliser[candidate_item]
        correct = np.bincount(
            install_votes_install, weights=posterior[install_votes_candidate], minlength=len(installs)
        )
        reliability = (correct + a) / (votes_per_install + a + b)

    support = np.bincount(vote_candidate, minlength=len(candidate_keys))
    best: dict[int, int] = {}
    for candidate, item in enumerate(candidate_item):
        if item not in best or posterior[candidate] > posterior[best[item]]:
            best[item] = candidate
    voter_keys = list(voter_ids)  # insertion order is the voter index
    cohort_backed = {candidate for candidate, voter in collapsed if voter_keys[voter].startswith("cohort:")}
    decisions: dict[Hashable, Decision] = {}
    for candidate in best.values():
        item, label = candidate_keys[candidate]
        confidence = float(posterior[candidate])
        backers = int(support[candidate])
        if item in settled and settled[item][0] != label and candidate in cohort_backed:
            decisions[item] = Decision(
                None, False, confidence, backers, "settled label contested by a cohort"
            )
        elif backers < params.min_support:
            decisions[item] = Decision(label, False, confidence, backers, "too few independent voters")
        elif confidence < params.min_posterior:
            decisions[item] = Decision(label, False, confidence, backers, "too contested")
        else:
            decisions[item] = Decision(label, True, confidence, backers, "accepted")
    return ConsensusResult(
        decisions=decisions,
        reliability={install: float(reliability[i]) for i, install in enumerate(installs)},
        cohorts=cohorts,
    )
