"""From the stored votes to what a refresh writes: the consensus of every item, each install's reliability,
and the accepted labels a snapshot is made of. Pure; the estimator itself is ``consensus.robust_consensus``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.voting.domain.consensus import ConsensusParams, ConsensusResult, Vote, robust_consensus
from services.voting.domain.derived import anchor_consensus

ESTIMATED_KINDS = ("icon", "knowledge", "screen", "ocr")
ITEM_KINDS = (*ESTIMATED_KINDS, "anchor")

Job = tuple[str, list[Vote], ConsensusParams]


@dataclass(frozen=True)
class StoredVote:
    item_kind: str
    item_key: str
    install_id: str
    label: str | None
    value: dict[str, Any] | None


@dataclass(frozen=True)
class ItemConsensus:
    kind: str
    key: str
    label: str | None
    value: dict[str, Any] | None
    status: str
    support: int
    confidence: float


@dataclass(frozen=True)
class InstallReliability:
    install: str
    reliability: float
    votes: int
    cohort: int | None


@dataclass
class Tally:
    accepted: dict[str, dict[str, Any]] = field(default_factory=lambda: {kind: {} for kind in ITEM_KINDS})
    consensus: list[ItemConsensus] = field(default_factory=list)
    reliability: dict[str, list[InstallReliability]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def consensus_jobs(
    votes: Sequence[StoredVote], icon_params: ConsensusParams, single_voter_params: ConsensusParams
) -> list[Job]:
    """One estimator run per kind; ``votes`` in arrival order (a vote's position is its ``seq``)."""
    jobs = []
    for kind in ESTIMATED_KINDS:
        of_kind = [
            Vote(v.item_key, v.install_id, v.label, i)
            for i, v in enumerate(v for v in votes if v.item_kind == kind)
            if v.label is not None
        ]
        jobs.append((kind, of_kind, icon_params if kind == "icon" else single_voter_params))
    return jobs


def decide_all(jobs: list[Job]) -> dict[str, ConsensusResult]:
    """CPU-bound: runs in the consensus worker process."""
    return {kind: robust_consensus(votes, params) for kind, votes, params in jobs}


def tally_votes(
    jobs: list[Job],
    results: dict[str, ConsensusResult],
    votes: Sequence[StoredVote],
    anchor_min_contributors: int,
) -> Tally:
    out = Tally()
    for kind, kind_votes, _ in jobs:
        result = results[kind]
        for item, decision in result.decisions.items():
            out.consensus.append(
                ItemConsensus(
                    kind,
                    item,
                    decision.label,
                    None,
                    "accepted" if decision.accepted else "withheld",
                    decision.support,
                    min(1.0, max(0.0, decision.confidence)),
                )
            )
            if decision.accepted:
                out.accepted[kind][item] = decision.label
        out.reliability[kind] = reliability_rows(result, kind_votes)
        out.stats[kind] = {
            "items": len(result.decisions),
            "accepted": len(out.accepted[kind]),
            "cohorts": [sorted(c) for c in result.cohorts],
        }
    groups: dict[str, list[dict]] = {}
    for vote in votes:
        if vote.item_kind == "anchor":
            groups.setdefault(vote.item_key, []).append(vote.value)
    for group, grids in groups.items():
        merged = anchor_consensus(group, grids, anchor_min_contributors)
        status = "accepted" if merged else "withheld"
        out.consensus.append(
            ItemConsensus("anchor", group, None, merged, status, len(grids), 1.0 if merged else 0.0)
        )
        if merged:
            out.accepted["anchor"][group] = merged
    out.stats["anchor"] = {"items": len(groups), "accepted": len(out.accepted["anchor"])}
    out.consensus.sort(key=lambda c: (c.kind, c.key))
    return out


def reliability_rows(result: ConsensusResult, votes: Sequence[Vote]) -> list[InstallReliability]:
    counts: dict[str, int] = {}
    for vote in votes:
        counts[vote.install] = counts.get(vote.install, 0) + 1
    cohort_of = {install: i for i, cohort in enumerate(result.cohorts) for install in cohort}
    return [
        InstallReliability(
            install, result.reliability[install], counts.get(install, 0), cohort_of.get(install)
        )
        for install in sorted(result.reliability)
    ]
