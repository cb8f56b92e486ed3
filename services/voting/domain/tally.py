"""From the votes of the items a refresh takes up to what it writes: trust judgements, each item's decision
and the consensus rows that changed. Pure; the rules of evidence are ``domain.evidence``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.voting.domain.derived import anchor_consensus
from services.voting.domain.evidence import (
    EvidenceParams,
    Gold,
    ItemDecision,
    ModelPrediction,
    TrustCounts,
    TrustParams,
    WeighedVote,
    decide_item,
    install_weight,
)
from services.voting.domain.items import ocr_read_text

ESTIMATED_KINDS = ("icon", "knowledge", "screen", "ocr")
ITEM_KINDS = (*ESTIMATED_KINDS, "anchor")
# the published model that predicts each kind: knowledge crops are icon crops, named by the icon model
MODEL_OF_KIND = {"icon": "icon", "knowledge": "icon", "screen": "screen"}
# knowledge entries name icon items: a label the icon model knows is a known knowledge label too
KNOWN_FROM = {"icon": ("icon",), "knowledge": ("knowledge", "icon"), "screen": ("screen",), "ocr": ("ocr",)}

ItemRef = tuple[str, str]  # (item kind, item key)


@dataclass(frozen=True)
class StoredVote:
    item_kind: str
    item_key: str
    install_id: str
    label: str | None
    value: dict[str, Any] | None
    origin: str | None = None
    model_guess: str | None = None
    seq: int = 0


@dataclass(frozen=True)
class InstallTrust:
    install: str
    weight: float
    cohort: str | None = None
    banned: bool = False


@dataclass(frozen=True)
class CurrentConsensus:
    label: str | None
    status: str
    settled_seq: int | None


@dataclass(frozen=True)
class ItemConsensus:
    kind: str
    key: str
    label: str | None
    value: dict[str, Any] | None
    status: str
    support: int
    confidence: float
    reason: str
    evidence: dict[str, Any] | None
    settled_seq: int | None


@dataclass(frozen=True)
class Judgement:
    kind: str
    key: str
    install: str
    label: str
    settled_label: str
    gold: bool

    @property
    def agree(self) -> bool:
        return self.label == self.settled_label


def voice_of(vote: StoredVote, trust: InstallTrust | None) -> str:
    """Installs of one origin (or one cohort) speak with one voice per item."""
    if trust is not None and trust.cohort is not None:
        return f"cohort:{trust.cohort}"
    return f"origin:{vote.origin}" if vote.origin else f"install:{vote.install_id}"


def weigh(
    votes: Iterable[StoredVote], trust: Mapping[str, InstallTrust], fresh_weight: float
) -> list[WeighedVote]:
    weighed = []
    for vote in votes:
        if vote.label is None:
            continue
        held = trust.get(vote.install_id)
        weight = fresh_weight if held is None else held.weight
        weighed.append(
            WeighedVote(vote.install_id, voice_of(vote, held), vote.label, weight, vote.model_guess or None)
        )
    return weighed


def judgements(
    votes: Iterable[StoredVote], current: Mapping[ItemRef, CurrentConsensus], gold: Mapping[ItemRef, Gold]
) -> list[Judgement]:
    """What trust learns from these votes: each vote on an item settled before it was cast (a later seq than
    the item's settling vote) is judged against the settled label; on a moderator's item, every vote is."""
    out = []
    for vote in votes:
        if vote.label is None:
            continue
        ref = (vote.item_kind, vote.item_key)
        decided = gold.get(ref)
        if decided is not None and decided.label is not None:
            out.append(Judgement(*ref, vote.install_id, vote.label, decided.label, True))
            continue
        held = current.get(ref)
        if (
            held is not None
            and held.status == "accepted"
            and held.label is not None
            and held.settled_seq is not None
            and vote.seq > held.settled_seq
        ):
            out.append(Judgement(*ref, vote.install_id, vote.label, held.label, False))
    return out


@dataclass(frozen=True)
class DecisionInputs:
    """Everything one refresh decides its items on (the incremental refresh and a full recompute alike)."""

    votes: Mapping[ItemRef, Sequence[StoredVote]]
    families: Mapping[str, Collection[str]]  # icon key -> near-copy icon keys
    trust: Mapping[str, InstallTrust]
    gold: Mapping[ItemRef, Gold]
    known: Mapping[str, Mapping[str, str]]  # kind -> {known label: its source}
    anchor_min_contributors: int
    cold_start_labels: int = 10
    predictions: Mapping[ItemRef, ModelPrediction] = field(default_factory=dict)
    model_versions: Mapping[str, str] = field(default_factory=dict)  # model kind -> version published now


AUTHORITIES = ("published", "moderator")


def known_for(kind: str, known: Mapping[str, Mapping[str, str]]) -> set[str]:
    return {label for source in KNOWN_FROM.get(kind, (kind,)) for label in known.get(source, {})}


def cold(kind: str, known: Mapping[str, Mapping[str, str]], cold_start_labels: int) -> bool:
    """A cold start: nobody can have earned trust yet, since no published model or moderator gave the kind a
    label and fewer than ``cold_start_labels`` labels were accepted."""
    sources = [
        origin for source in KNOWN_FROM.get(kind, (kind,)) for origin in known.get(source, {}).values()
    ]
    return not any(origin in AUTHORITIES for origin in sources) and len(sources) < cold_start_labels


def decide(
    refs: Iterable[ItemRef],
    inputs: DecisionInputs,
    params: Mapping[str, EvidenceParams],
    trust_params: TrustParams,
) -> dict[ItemRef, ItemDecision | dict[str, Any] | None]:
    """Each item's decision; an anchor group's is its merged grid (None below the contributor minimum)."""
    known = {kind: known_for(kind, inputs.known) for kind in ESTIMATED_KINDS}
    cold_start = {kind: cold(kind, inputs.known, inputs.cold_start_labels) for kind in ESTIMATED_KINDS}
    out: dict[ItemRef, ItemDecision | dict[str, Any] | None] = {}
    weighed: dict[ItemRef, list[WeighedVote]] = {}  # each item's votes weighed once (families share members)

    def weighed_of(ref: ItemRef) -> list[WeighedVote]:
        if ref not in weighed:
            weighed[ref] = weigh(inputs.votes.get(ref, ()), inputs.trust, trust_params.fresh_weight)
        return weighed[ref]

    for ref in refs:
        kind, key = ref
        votes = inputs.votes.get(ref, ())
        if kind == "anchor":  # one grid per voice (the latest), none from a banned install
            by_voice = {
                voice_of(v, inputs.trust.get(v.install_id)): v.value
                for v in sorted(votes, key=lambda v: v.seq)
                if v.value is not None and not _banned(v, inputs.trust)
            }
            out[ref] = anchor_consensus(key, list(by_voice.values()), inputs.anchor_min_contributors)
            continue
        family: list[WeighedVote] = []
        members = inputs.families.get(key, ()) if kind == "icon" else ()
        for member in members:
            family += weighed_of(("icon", member))
        out[ref] = decide_item(
            weighed_of(ref),
            known=known[kind],
            params=params[kind],
            cold_start=cold_start[kind],
            family=family,
            family_items=len(members),
            gold=inputs.gold.get(ref),
            prediction=inputs.predictions.get(ref),
            model_version=inputs.model_versions.get(MODEL_OF_KIND.get(kind, "")),
            read_text=ocr_read_text(key) if kind == "ocr" else None,
        )
    return out


def _banned(vote: StoredVote, trust: Mapping[str, InstallTrust]) -> bool:
    held = trust.get(vote.install_id)
    return held is not None and held.banned


def consensus_rows(
    decisions: Mapping[ItemRef, ItemDecision | dict[str, Any] | None],
    current: Mapping[ItemRef, CurrentConsensus],
    votes: Mapping[ItemRef, Sequence[StoredVote]],
) -> list[ItemConsensus]:
    """The consensus row of each decided item. An accepted label keeps the vote it was settled on while it
    stays; a newly accepted or changed label is settled on the item's newest vote."""
    rows = []
    for ref, decision in sorted(decisions.items()):
        kind, key = ref
        newest = max((v.seq for v in votes.get(ref, ())), default=None)
        held = current.get(ref)
        if kind == "anchor":
            merged = decision if isinstance(decision, dict) else None
            count = len(votes.get(ref, ()))
            rows.append(
                ItemConsensus(
                    kind,
                    key,
                    None,
                    merged,
                    "accepted" if merged else "withheld",
                    count,
                    1.0 if merged else 0.0,
                    "accepted" if merged else "too few contributors",
                    None,
                    newest if merged else None,
                )
            )
            continue
        assert isinstance(decision, ItemDecision)
        settled = None
        if decision.accepted:
            unchanged = held is not None and held.status == "accepted" and held.label == decision.label
            settled = held.settled_seq if unchanged and held.settled_seq is not None else newest
        rows.append(
            ItemConsensus(
                kind,
                key,
                decision.label,
                None,
                "accepted" if decision.accepted else "withheld",
                decision.support,
                min(1.0, max(0.0, decision.confidence)),
                decision.reason,
                decision.evidence,
                settled,
            )
        )
    return rows


def trust_weights(
    counts: Mapping[str, TrustCounts], banned: Collection[str], params: TrustParams
) -> dict[str, float]:
    return {install: install_weight(c, params, banned=install in banned) for install, c in counts.items()}


def group_votes(votes: Iterable[StoredVote]) -> dict[ItemRef, list[StoredVote]]:
    grouped: dict[ItemRef, list[StoredVote]] = defaultdict(list)
    for vote in votes:
        grouped[(vote.item_kind, vote.item_key)].append(vote)
    return grouped
