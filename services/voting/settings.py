from dataclasses import replace
from datetime import timedelta
from typing import Literal

from pydantic import Field

from services.voting.domain.evidence import EvidenceParams, TrustParams
from services.voting.domain.snapshots import SnapshotRules
from shared.settings import CommonSettings


class VotingSettings(CommonSettings):
    prefetch: int = Field(
        1000, ge=1, le=10000, description="unacknowledged events a voting process holds at once"
    )
    training_threshold: int = Field(
        10, ge=1, description="new or changed icon labels that trigger a training"
    )
    screen_training_threshold: int = Field(
        20, ge=1, description="new or relabelled screen-type screenshots that trigger a training"
    )
    training_debounce_seconds: float = Field(
        30.0,
        ge=0,
        description="no new contribution for this long before a threshold snapshot (unless changes reach 10x the threshold)",
    )
    new_class_snapshot_seconds: float = Field(
        60.0,
        ge=0,
        description="accepted icon labels the previous snapshot lacks are snapshotted at once (for the trainer's "
        "imprint release), whatever the thresholds, the debounce and the previous snapshot's training, at most once "
        "in this long; 0 turns it off",
    )
    training_wait_hours: float = Field(
        3.0, gt=0, description="a snapshot no trainer took up within this long stops blocking the next one"
    )
    role: Literal["all", "consumer", "refresher"] = Field(
        "all",
        description="what this process runs: the queue consumer and the consensus refresher (all), or one of them; "
        "a deployment runs the refresher apart, so deciding (CPU-bound Python) never delays storing votes",
    )
    refresh_seconds: float = Field(
        2.0, gt=0, description="how often consensus is recomputed when votes changed"
    )
    icon_accept_score: float = Field(
        1.0,
        gt=0,
        description="icon labels: evidence by which the best label must lead the next to be accepted",
    )
    single_voter_accept_score: float = Field(
        0.6,
        gt=0,
        description="knowledge, OCR and screen labels (items few installs see): the lead the best label needs",
    )
    fresh_weight: float = Field(
        0.35, ge=0, le=1, description="weight of an install's vote before it has any judged history"
    )
    trust_ramp_votes: float = Field(
        4.0,
        gt=0,
        description="judged votes after which an install's history weighs as much as the fresh weight",
    )
    trust_accuracy_floor: float = Field(
        0.6, ge=0, lt=1, description="accuracy on settled items at or below which an install weighs nothing"
    )
    trust_accuracy_good: float = Field(
        0.9, gt=0, le=1, description="accuracy on settled items at which an install reaches full weight (1)"
    )
    gold_factor: float = Field(
        3.0, ge=1, description="a vote judged against a moderator's decision counts this many times"
    )
    model_confirm: float = Field(
        0.5,
        ge=0,
        description="the votes confirming the client model's guess add this times the strongest one's weight "
        "(confirm_shared; otherwise each weighs 1 + this)",
    )
    model_dissent: float = Field(
        0.0,
        ge=0,
        description="a vote against the client model's guess adds this times its weight to the guess",
    )
    model_override: float = Field(
        0.5,
        ge=0,
        description="trusted installs' votes against the client model's guess (deliberate corrections) add this "
        "times the strongest one's weight to their label, once per label",
    )
    confirm_shared: bool = Field(
        True,
        description="votes confirming the client model's guess share one confirmation (the client model is one "
        "voice, however many installs run it) instead of each weighing 1 + model_confirm",
    )
    family_factor: float = Field(
        0.5, ge=0, description="share of a near-copy family's voice scores an icon item gets"
    )
    family_cap: float = Field(0.6, ge=0, description="most evidence a family adds to one label of an item")
    family_max_distance: int = Field(
        4, ge=-1, le=16, description="pHash bits within which icon crops are one visual family (-1: off)"
    )
    look_alike_second_voice: bool = Field(
        True,
        description="icons: one voice is not enough on a crop whose look-alikes (its pHash family) carry another label",
    )
    look_alike_model_voice: bool = Field(
        True,
        description="icons: on such a crop, the published model's agreement (not trained on it) is the second voice",
    )
    fresh_need_model: bool = Field(
        True,
        description="once a published model exists and predicted an item, a label no trusted install backs needs "
        "its confident agreement",
    )
    new_label_origins: int = Field(
        3, ge=1, description="trusted installs of distinct origins a label nobody has yet needs"
    )
    cold_start_labels: int = Field(
        10,
        ge=0,
        description="until a published model or a moderator gives a kind labels, the labels distinct origins of "
        "any trust may establish (a new community's bootstrap)",
    )
    trusted_weight: float = Field(
        0.5, gt=0, le=1, description="weight from which an install counts as trusted for a new label"
    )
    model_support: float = Field(
        0.65,
        ge=0,
        description="evidence the published model's prediction (not trained on the item) adds to a known label "
        "the item's voters gave, when it agrees at model_agree_confidence or more",
    )
    model_agree_confidence: float = Field(
        0.8,
        ge=0,
        le=1,
        description="the published model's confidence from which its agreement counts (knowledge, screens)",
    )
    icon_model_agree_confidence: float = Field(0.6, ge=0, le=1, description="the same for icon crops")
    model_contradict_confidence: float = Field(
        0.6,
        ge=0,
        le=1,
        description="the published model's confidence in another label from which a label needs "
        "model_contradict_origins trusted installs",
    )
    model_unsure_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="a lone voice is withheld while the published model (not trained on the item) is less sure "
        "than this of any label: an ambiguous crop needs a second voice (0: off)",
    )
    knowledge_model_unsure_confidence: float = Field(
        0.65,
        ge=0,
        le=1,
        description="the same for knowledge entries: clients use an entry as it is, with no training to average "
        "a wrong one out",
    )
    model_contradict_origins: int = Field(
        2,
        ge=1,
        description="trusted installs of distinct origins a label the published model contradicts needs",
    )
    prediction_batch: int = Field(
        200, ge=1, le=1000, description="items per model.prediction_requested event"
    )
    prediction_max_per_refresh: int = Field(
        2_000,
        ge=0,
        description="items one refresh asks the published model about at most (0: the published model's "
        "prediction is neither asked for nor waited on)",
    )
    prediction_retry_seconds: float = Field(
        600.0, gt=0, description="an unanswered prediction request is sent again after this long"
    )
    cohort_min_shared_flips: int = Field(
        3, ge=1, description="settled items two installs contradicted with the same label to be linked"
    )
    cohort_min_size: int = Field(3, ge=2, description="linked installs that make a cohort (one voice)")
    trust_seconds: float = Field(
        30.0, gt=0, description="how often install weights and cohorts are re-estimated from judgements"
    )
    refresh_max_items: int = Field(
        5_000, ge=100, description="items one refresh decides at most (the rest wait for the next)"
    )
    ocr_lone_text_tolerance: float = Field(
        0.2,
        ge=0,
        le=1,
        description="OCR: a lone correction is withheld when a known text is more like the raw text than it by more "
        "than this (difflib similarity, 0..1; 1: off)",
    )
    anchor_min_contributors: int = Field(
        3, ge=1, description="layout anchor grids a (build type, aspect) group needs before it is published"
    )
    max_batch: int = Field(500, ge=1, le=5000, description="contributions stored per transaction")
    health_port: int = Field(
        8081, ge=0, le=65535, description="port of GET /health and /metrics; 0 disables both"
    )

    def snapshot_rules(self) -> SnapshotRules:
        return SnapshotRules(
            icon_threshold=self.training_threshold,
            screen_threshold=self.screen_training_threshold,
            debounce=timedelta(seconds=self.training_debounce_seconds),
            training_wait=timedelta(hours=self.training_wait_hours),
            new_class_spacing=timedelta(seconds=self.new_class_snapshot_seconds)
            if self.new_class_snapshot_seconds
            else None,
        )

    def trust_params(self) -> TrustParams:
        return TrustParams(
            fresh_weight=self.fresh_weight,
            ramp_votes=self.trust_ramp_votes,
            accuracy_floor=self.trust_accuracy_floor,
            accuracy_good=self.trust_accuracy_good,
            gold_factor=self.gold_factor,
        )

    def evidence_params(self) -> dict[str, EvidenceParams]:
        """Per item kind (icons; the kinds few installs see)."""
        common = dict(
            model_confirm=self.model_confirm,
            model_dissent=self.model_dissent,
            model_override=self.model_override,
            confirm_shared=self.confirm_shared,
            family_factor=self.family_factor,
            family_cap=self.family_cap,
            new_label_origins=self.new_label_origins,
            trusted_weight=self.trusted_weight,
            model_support=self.model_support,
            model_agree_confidence=self.model_agree_confidence,
            model_contradict_confidence=self.model_contradict_confidence,
            model_contradict_origins=self.model_contradict_origins,
            model_unsure_confidence=self.model_unsure_confidence,
        )
        icon = EvidenceParams(
            accept_score=self.icon_accept_score,
            look_alike_second_voice=self.look_alike_second_voice,
            look_alike_model_voice=self.look_alike_model_voice,
            fresh_need_model=self.fresh_need_model,
            **(common | {"model_agree_confidence": self.icon_model_agree_confidence}),
        )
        single = EvidenceParams(accept_score=self.single_voter_accept_score, **common)
        ocr = replace(single, lone_text_tolerance=self.ocr_lone_text_tolerance)
        knowledge = replace(single, model_unsure_confidence=self.knowledge_model_unsure_confidence)
        return {"icon": icon, "knowledge": knowledge, "ocr": ocr, "screen": single}
