"""Consensus by earned trust: how much each install's vote weighs, and what an item's evidence decides.

Pure functions of plain values; the refresh (``handlers.ConsensusRefresher``) feeds them what changed.

**Trust is earned.** Install ids cost nothing, so a fresh install weighs ``fresh_weight`` (little) and gains
weight only from *judgements*: its votes on items that were already settled when it voted (or that a
moderator decided, which counts ``gold_factor`` times). From ``agree`` and ``disagree`` the weight is

    weight = fresh_weight * (1 - c) + c * q(accuracy)
    c = judged / (judged + ramp_votes)          (how much history there is)
    prior_agree, prior_disagree = params.accuracy_prior
    accuracy = (agree + prior_agree) / (judged + prior_agree + prior_disagree)       (Beta(1, 1) posterior mean)
    q = clip((accuracy - accuracy_floor) / (accuracy_good - accuracy_floor), 0, 1)

so it never exceeds 1 (no install dominates), falls towards 0 for an install that keeps contradicting settled
labels, and rounds down to ``step`` so that small drifts do not recompute every item the install voted on. This is
the one-coin Dawid–Skene reliability with the settled labels as the truth; unlike an EM over every vote, an
install cannot raise its own weight by agreeing with itself or with other fresh installs.

**One voice per origin.** Installs behind one network origin (ingest's keyed hash of the client's /24 or /64)
share one voice per item: a voice's support for a label is its strongest install's, not their sum. Members of
a cohort (installs that pushed the same labels onto the same settled items) share one voice too.

**Evidence beyond voters.**
- The client's model guess: the client model is one voice however many installs run it, so the votes that
  confirm its guess share one confirmation (``model_confirm`` times the strongest confirmer's weight;
  ``confirm_shared`` off: each weighs ``1 + model_confirm``). A trusted install's vote against the guess is a
  deliberate correction: the strongest such vote per label adds ``model_override`` times its weight (once, like
  the confirmation; a fresh install's adds nothing: a troll forges the guess it overrides); ``model_dissent``
  times a dissenting vote's weight goes to the model's label. A guess counts only if it is a label the model can
  know (a known label): a client model cannot guess a label nobody has.
- OCR (``lone_text_tolerance``): a lone correction much less like the raw text than a known text is waits for a
  second voice (OCR garbles a few characters; a slip or a troll's name is unlike the text read).
- The visual family (icons): votes on near-duplicate crops add ``family_factor`` of their voices' support,
  capped at ``family_cap``, to a label the item's own voters gave: a near-copy meets the original's votes, but
  a family never decides alone nor contests (different items can look alike: shared frames, rarity colours).
  Where the family holds another label, though, one voice is not enough: look-alikes are where honest users
  and client models err together.

**The published model's prediction** (icons, knowledge crops, screenshots): computed by the trainer on the
server, so no client can forge it, and counted only from a model version that did not train on the item (a
label never vouches for itself). Once a release has trained on the item, the latest prediction of a version
that had not is what counts for agreement (kept beside the newest), so an accepted lone vote does not lose its
second voice by being trained on. It is asked for only where it can matter: items whose leading label fewer
than ``model_contradict_origins`` trusted installs back.
- It agrees (same known label, confidence >= ``model_agree_confidence``) and the item's own voters gave that
  label: it adds ``model_support``, so one fresh install's vote (with the client model's confirmation) is enough
  for a known label. Like the family, it never decides alone.
- It contradicts (another label, confidence >= ``model_contradict_confidence``): the label needs
  ``model_contradict_origins`` trusted installs of distinct origins, however many fresh ones back it. This is
  what stops a swarm of fresh installs with forged client guesses planting an existing label. A model that
  trained on the item contradicts too (it learned another label for it): only agreement must come from a
  model that never saw the item's label.
- A published model exists but has not answered yet, and fewer than ``model_contradict_origins`` trusted
  installs back the label: the item waits for the prediction (withheld) rather than being decided before the
  check. Once it
  answered, a label only untrusted installs back needs its confident agreement (``fresh_need_model``), unless
  it is the label the model was trained on for this very item.

**Decision.** An item is accepted when its best label's score leads the next by ``accept_score``. A label
that is not yet known (no published model, accepted item or moderator has it) also needs
``new_label_origins`` trusted installs (weight >= ``trusted_weight``) of distinct origins (before the first
release or moderator decision, distinct origins of any weight: see ``decide_item``). A moderator's
decision (gold) settles the item whatever the votes say. Everything else is withheld, with its reason.
"""

from __future__ import annotations

import difflib
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

# The reason of an item a moderator decided (a snapshot marks such icons as gold).
SETTLED_BY_MODERATOR = "settled by a moderator"


@dataclass(frozen=True)
class TrustParams:
    fresh_weight: float = 0.35
    ramp_votes: float = 2.0
    accuracy_floor: float = 0.6
    accuracy_good: float = 0.9
    gold_factor: float = 3.0
    step: float = 0.05
    accuracy_prior: tuple[float, float] = (4.0, 1.0)


@dataclass(frozen=True)
class TrustCounts:
    agree: int = 0
    disagree: int = 0
    gold_agree: int = 0
    gold_disagree: int = 0


def install_weight(counts: TrustCounts, params: TrustParams, *, banned: bool = False) -> float:
    if banned:
        return 0.0
    agree = counts.agree + params.gold_factor * counts.gold_agree
    disagree = counts.disagree + params.gold_factor * counts.gold_disagree
    judged = agree + disagree
    history = judged / (judged + params.ramp_votes)
    prior_agree, prior_disagree = params.accuracy_prior
    accuracy = (agree + prior_agree) / (judged + prior_agree + prior_disagree)
    quality = (accuracy - params.accuracy_floor) / (params.accuracy_good - params.accuracy_floor)
    weight = params.fresh_weight * (1 - history) + history * min(1.0, max(0.0, quality))
    return round(math.floor(weight / params.step + 1e-9) * params.step, 6)


@dataclass(frozen=True)
class EvidenceParams:
    accept_score: float = 1.0
    model_confirm: float = 0.5
    model_dissent: float = 0.0
    model_override: float = 0.5
    confirm_shared: bool = True
    family_factor: float = 0.5
    family_cap: float = 0.6
    new_label_origins: int = 3
    trusted_weight: float = 0.5
    look_alike_second_voice: bool = True
    look_alike_model_voice: bool = True
    fresh_need_model: bool = True
    model_support: float = 0.65
    model_agree_confidence: float = 0.8
    model_contradict_confidence: float = 0.6
    model_contradict_origins: int = 2
    model_unsure_confidence: float = 0.5
    # OCR: a lone voice's correction must be about as close to the text OCR read as the nearest known text is
    # (None: off)
    lone_text_tolerance: float | None = None


@dataclass(frozen=True)
class ModelPrediction:
    """The published model's top-1 on an item, computed on the server (``model.predicted``)."""

    label: str | None
    confidence: float
    version: str
    trained_on: bool  # the version's training snapshot held the item: no evidence for its label
    # the latest prediction on the item from a version that had not trained on it (None: none yet)
    independent: ModelPrediction | None = None

    def usable(self) -> bool:
        return not self.trained_on and self.label is not None

    def evidence(self) -> ModelPrediction | None:
        """The prediction that counts as evidence for a label: this one if its version never saw the item, else
        the latest one that did not; once a release has trained on an accepted item, the model that judged it
        before keeps vouching, while the new one can still contradict (``decide``)."""
        if self.usable():
            return self
        return self.independent if self.independent is not None and self.independent.usable() else None


@dataclass(frozen=True)
class WeighedVote:
    """One install's vote on an item, as the decision sees it."""

    install: str
    voice: str  # its origin, or its cohort: installs of one voice count once per item
    label: str
    weight: float
    model_guess: str | None = None


@dataclass(frozen=True)
class Gold:
    """A moderator's decision on an item: its label, or ``None`` for rejected."""

    label: str | None
    moderator: str


@dataclass(frozen=True)
class ItemDecision:
    label: str | None
    accepted: bool
    confidence: float  # the best label's share of all evidence, 0..1
    support: int  # voices backing the label
    reason: str
    establishes: bool  # accepted with enough trusted origins to make its label known
    evidence: dict[str, Any] = field(default_factory=dict)
    wants_prediction: bool = False  # the published model's (current) prediction could change this decision


def _voice_scores(
    votes: Sequence[WeighedVote], known: Collection[str], params: EvidenceParams
) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """({label: voter score}, {label: model score}, model evidence) with one voice per origin or cohort."""
    by_voice: dict[tuple[str, str], float] = {}
    model_by_voice: dict[tuple[str, str], float] = {}
    shared_confirm: dict[str, float] = {}  # label -> the client model's one voice for it
    # label -> the strongest trusted correction of a client guess to it
    shared_override: dict[str, float] = {}
    confirmed = dissented = 0
    dissent = params.model_dissent
    for vote in votes:
        weight = vote.weight
        if weight <= 0:
            continue
        label, guess = vote.label, vote.model_guess
        score = weight
        if guess is not None and guess in known:
            if guess == label:
                if params.confirm_shared:
                    shared_confirm[label] = max(shared_confirm.get(label, 0.0), weight * params.model_confirm)
                else:
                    score *= 1 + params.model_confirm
                confirmed += 1
            else:
                if weight >= params.trusted_weight:  # a trusted install looked and corrected the client model
                    # once per label, like the confirmation: the guess it overrides is the client's word, so a
                    # pair of farmed installs forging guesses gains one bonus, not one each
                    shared_override[label] = max(
                        shared_override.get(label, 0.0), weight * params.model_override
                    )
                if dissent > 0:
                    slot = (vote.voice, guess)
                    model_by_voice[slot] = max(model_by_voice.get(slot, 0.0), weight * dissent)
                dissented += 1
        slot = (vote.voice, label)
        if score > by_voice.get(slot, 0.0):
            by_voice[slot] = score
    scores: dict[str, float] = defaultdict(float)
    for (_, label), score in by_voice.items():
        scores[label] += score
    for bonus in (shared_confirm, shared_override):
        for label, score in bonus.items():
            scores[label] += score
    model: dict[str, float] = defaultdict(float)
    for (_, label), score in model_by_voice.items():
        model[label] += score
    return dict(scores), dict(model), {"confirmed": confirmed, "dissented": dissented}


def decide_item(
    votes: Sequence[WeighedVote],
    *,
    known: Collection[str],
    params: EvidenceParams,
    family: Sequence[WeighedVote] = (),
    family_items: int = 0,
    gold: Gold | None = None,
    cold_start: bool = False,
    prediction: ModelPrediction | None = None,
    model_version: str | None = None,
    read_text: str | None = None,
) -> ItemDecision:
    """The decision on one item from its votes (already weighed), its visual family's votes, gold and the
    published model's ``prediction`` (``model_version``: the version published now, None when the kind has no
    published model).

    At a ``cold_start`` (no published model and no moderator has given the kind a label yet) nobody can have
    earned trust, so a new label needs ``new_label_origins`` distinct origins of any weight; the first release
    or moderator decision ends it. ``read_text``: an OCR item's raw text (what OCR read), which a lone
    correction must resemble about as well as the nearest known text does."""
    voters, model, model_evidence = _voice_scores(votes, known, params)
    family_raw: dict[str, float] = {}
    if family:
        family_raw, _, _ = _voice_scores(family, known, params)
    family_scores = {
        label: min(params.family_cap, params.family_factor * score) for label, score in family_raw.items()
    }
    totals: dict[str, float] = defaultdict(float)
    for part in (voters, model):
        for label, score in part.items():
            totals[label] += score
    for label, score in family_scores.items():  # a family supports what the item's own voters say, no more
        if label in voters:
            totals[label] += score
    counted = [vote for vote in votes if vote.weight > 0]

    def trusted_origins(label: str) -> int:
        return len(
            {
                vote.voice
                for vote in counted
                if vote.label == label and (cold_start or vote.weight >= params.trusted_weight)
            }
        )

    # a label nobody has yet competes only once enough trusted origins back it: before that it is held back,
    # so a swarm's new label can neither be accepted nor unsettle a known one
    held_back = {
        label: score
        for label, score in totals.items()
        if label not in known and trusted_origins(label) < params.new_label_origins
    }
    for label in held_back:
        del totals[label]
    usable = prediction.evidence() if prediction is not None else None
    agrees = (
        usable is not None
        and usable.label in voters
        and usable.label in known
        and usable.confidence >= params.model_agree_confidence
    )
    if agrees and usable is not None and usable.label is not None:
        totals[usable.label] += params.model_support
    evidence: dict[str, Any] = {
        "scores": {label: round(score, 4) for label, score in sorted(totals.items(), key=lambda kv: -kv[1])},
        "held_back_new_labels": {label: round(score, 4) for label, score in held_back.items()},
        "voters": len(votes),
        "counted_voters": len(counted),
        "voices": len({vote.voice for vote in counted}),
        "model": model_evidence | {"scores": {k: round(v, 4) for k, v in model.items()}},
        "family": {"items": family_items, "scores": {k: round(v, 4) for k, v in family_scores.items()}},
    }
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    best, best_score = ranked[0] if ranked else (None, 0.0)
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    total = sum(totals.values())
    confidence = best_score / total if total > 0 else 0.0
    support = len({vote.voice for vote in counted if vote.label == best})
    backers = 0 if best is None else trusted_origins(best)
    evidence |= {"margin": round(best_score - runner_up, 4), "trusted_origins": backers}
    establishes = backers >= params.new_label_origins
    look_alikes = sorted(label for label in family_raw if label != best)
    # a lone voice is enough only where nothing that looks like the crop is labelled otherwise: look-alike
    # items are where honest users and client models err together; with ``look_alike_model_voice`` the
    # published model's agreement is the second voice
    lone_look_alike = support == 1 and bool(look_alikes) and params.look_alike_second_voice
    model_voice = lone_look_alike and params.look_alike_model_voice
    # the model's prediction can change the decision while fewer trusted origins back the label than its
    # contradiction would need: such items are checked (asked about, and waited for)
    checked = backers < params.model_contradict_origins
    wants_prediction = (
        model_version is not None
        and best is not None
        and best in known
        and (checked or model_voice)
        and (prediction is None or prediction.version != model_version)
    )
    if prediction is not None:
        evidence["published_model"] = {
            "label": prediction.label,
            "confidence": round(prediction.confidence, 4),
            "version": prediction.version,
            "trained_on": prediction.trained_on,
            "agrees": agrees,
        }
        if usable is not None and usable is not prediction:
            evidence["published_model"]["independent"] = {
                "label": usable.label,
                "confidence": round(usable.confidence, 4),
                "version": usable.version,
            }

    def withheld(label: str | None, confidence: float, support: int, reason: str) -> ItemDecision:
        return ItemDecision(label, False, confidence, support, reason, False, evidence, wants_prediction)

    if gold is not None:
        evidence["gold"] = {"label": gold.label, "moderator": gold.moderator}
        if gold.label is None:
            return ItemDecision(None, False, 1.0, support, "rejected by a moderator", False, evidence)
        gold_support = len({vote.voice for vote in counted if vote.label == gold.label})
        return ItemDecision(gold.label, True, 1.0, gold_support, SETTLED_BY_MODERATOR, True, evidence)
    if (best is None or best_score <= 0) and held_back:
        label = max(held_back, key=lambda k: (held_back[k], k))
        reason = f"new label: needs {params.new_label_origins} trusted installs of distinct origins"
        voices = len({vote.voice for vote in counted if vote.label == label})
        return ItemDecision(label, False, 0.0, voices, reason, False, evidence)
    if best is None or best_score <= 0:
        reason = "no counted votes" if votes else "no votes"
        return withheld(None, 0.0, 0, reason)
    if best_score - runner_up < params.accept_score:
        reason = "contested" if runner_up > 0 else "not enough evidence yet"
        return withheld(best, confidence, support, reason)
    if (
        prediction is not None
        and prediction.label is not None
        and prediction.label != best
        and prediction.confidence >= params.model_contradict_confidence
        and backers < params.model_contradict_origins
    ):
        # the published model says otherwise: fresh voices (and the client guesses they send, which a troll
        # forges) cannot outvote it; trusted installs can. A model that trained on the item contradicts too:
        # it learned another label for it, so relabelling a trained item takes trusted installs
        reason = (
            f"the published model says {prediction.label} ({prediction.confidence:.2f}): needs "
            f"{params.model_contradict_origins} trusted installs of distinct origins"
        )
        return withheld(best, confidence, support, reason)
    if checked and model_version is not None and prediction is None and not cold_start:
        return withheld(best, confidence, support, "waiting for the published model's prediction")
    repeats_training = prediction is not None and prediction.trained_on and prediction.label == best
    if (
        params.fresh_need_model
        and backers == 0
        and model_version is not None
        and prediction is not None
        and not agrees
        and not repeats_training
    ):
        # only untrusted installs back it and the published model does not confirm it: the look-alike twin's
        # name, which the model itself half-believes, is what a swarm with forged client guesses would plant
        reason = (
            f"only untrusted installs back it and the published model does not confirm it "
            f"({prediction.label}, {prediction.confidence:.2f})"
        )
        return withheld(best, confidence, support, reason)
    if (
        support == 1
        and usable is not None
        and usable.confidence < params.model_unsure_confidence
        and not (lone_look_alike and model_voice and agrees)
    ):
        # the published model, which never saw this item's label, cannot tell what the crop is: an ambiguous
        # crop is where one honest voter errs as easily as the client model did
        reason = (
            f"one voice, and the published model is unsure of this crop ({usable.label}, "
            f"{usable.confidence:.2f}): needs a second"
        )
        return withheld(best, confidence, support, reason)
    if support == 1 and read_text is not None and params.lone_text_tolerance is not None:
        nearest = nearer_text(read_text, best, known, params.lone_text_tolerance)
        if nearest is not None:
            # OCR garbles a few characters: a lone correction to a text unlike what OCR read, while a known
            # text is much more like it, is a slip or a troll's name
            reason = (
                f"one voice, and the correction is far from the text OCR read ({read_text!r}; {nearest!r} is "
                f"nearer): needs a second"
            )
            return withheld(best, confidence, support, reason)
    if lone_look_alike and not (model_voice and agrees and backers > 0):
        # the model's agreement is the second voice of a trusted install only: on a look-alike pair the model
        # half-believes the twin's name, and an untrusted install (a farmed one with a forged client guess) naming
        # the twin is exactly what would plant it
        reason = f"one voice on a crop that looks like another item ({look_alikes[0]}): needs a second"
        return withheld(best, confidence, support, reason)
    return ItemDecision(best, True, confidence, support, "accepted", establishes, evidence, wants_prediction)


def nearer_text(read: str, label: str, known: Collection[str], tolerance: float) -> str | None:
    """A known text more like ``read`` than ``label`` is by more than ``tolerance``, or None. Similarity is
    difflib's ratio (twice the matched characters over both lengths), case-insensitive, always measured as
    (candidate, read), since the ratio can depend on the order; the cheap upper bounds skip most candidates."""
    matcher = difflib.SequenceMatcher(None)
    matcher.set_seq2(read.casefold())  # difflib caches what it learns about the second sequence
    matcher.set_seq1(label.casefold())
    floor = matcher.ratio() + tolerance + 1e-9
    if floor > 1:
        return None
    best, best_text = floor, None
    for text in known:
        if text == label:
            continue
        matcher.set_seq1(text.casefold())
        if matcher.real_quick_ratio() >= best and matcher.quick_ratio() >= best:
            ratio = matcher.ratio()
            if ratio >= best:
                best, best_text = ratio, text
    return best_text
