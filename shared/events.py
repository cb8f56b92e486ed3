"""Versioned domain events: the contract between the services.

Every event carries ``message_id`` (the idempotency key consumers deduplicate on), ``event_type`` (also its
routing key), ``schema_version`` and a UTC ``occurred_at``. Additive changes (a new optional field) keep the
version and are ignored by older consumers; anything else is a new version, and a consumer that does not read
that version dead-letters the message with the reason instead of guessing.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.clock import utc_now

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
InstallId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
ModelKind = Literal["icon", "screen"]


def format_trained_at(moment: datetime) -> str:
    """The fixed-width UTC form installed clients compare as strings: ``2026-04-06T12:01:02.345678+00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00Z")


def new_message_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_bytes="base64", val_json_bytes="base64")

    event_type: ClassVar[str]
    schema_version: int = 1
    message_id: str = Field(default_factory=new_message_id, min_length=1, max_length=128)
    occurred_at: AwareDatetime = Field(default_factory=utc_now)

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def to_json(self) -> bytes:
        return (
            b'{"event_type":'
            + json.dumps(self.event_type).encode()
            + b","
            + self.model_dump_json().encode()[1:]
        )


# --- contributions (ingest -> voting) -------------------------------------------------------------------------


OriginKey = Annotated[str, Field(pattern=r"^[0-9a-f]{16,64}$")]
ItemKind = Literal["icon", "knowledge", "screen", "ocr", "anchor"]


class Contribution(Event):
    install_id: InstallId
    origin: OriginKey | None = Field(
        None,
        description="keyed hash of the client's network prefix (/24 IPv4, /64 IPv6), never the address; "
        "installs behind one origin share one voice per item",
    )


class IconCropContributed(Contribution):
    """A labelled icon crop from ``/contribute/bulk-crops`` (one item)."""

    event_type: ClassVar[str] = "contribution.icon_crop"
    crop_sha256: Sha256Hex
    png: bytes
    slot: str = Field(min_length=1, max_length=80)
    label: str = Field(min_length=1, max_length=120)
    model_guess: str = Field("", max_length=120, description="the client's own model prediction (ml_name)")
    pixels_sha256: Sha256Hex | None = Field(
        None,
        description="sha256 of the crop as clients feed the model (decoded, 64x64 BGR): the item's identity",
    )
    phash: str | None = Field(None, pattern=r"^[0-9a-f]{16}$", description="64-bit DCT pHash of the crop")


class OcrCorrectionContributed(Contribution):
    """A user's correction of the client's OCR of a ``Ship Type``/``Ship Tier`` text crop."""

    event_type: ClassVar[str] = "contribution.ocr_correction"
    crop_sha256: Sha256Hex
    png: bytes
    slot: Literal["Ship Type", "Ship Tier"]
    raw_text: str = Field(max_length=120)
    corrected_text: str = Field(min_length=1, max_length=120)


class KnowledgeContributed(Contribution):
    """A pHash -> item name confirmation or correction from ``/contribute``."""

    event_type: ClassVar[str] = "contribution.knowledge"
    phash: str = Field(pattern=r"^[0-9a-f]{16}$")
    crop_sha256: Sha256Hex
    png: bytes
    item_name: str = Field(min_length=1, max_length=300)
    wrong_name: str | None = Field(None, max_length=300)
    confirmed: bool = True
    warp_version: str | None = Field(None, max_length=20)
    client_timestamp: str | None = Field(None, max_length=30)


class ScreenTypeContributed(Contribution):
    """A full screenshot labelled with its screen type."""

    event_type: ClassVar[str] = "contribution.screen_type"
    image_sha256: Sha256Hex
    png: bytes
    screen_type: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")


class AnchorSlot(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    x0_rel: float
    y_rel: float
    w_rel: float
    h_rel: float
    step_rel: float | None = None
    count: int | None = Field(None, ge=0)


class AnchorGridContributed(Contribution):
    """One layout anchor grid: where the slots of a build screen sit, relative to the screenshot."""

    event_type: ClassVar[str] = "contribution.anchor_grid"
    build_type: str = Field(min_length=1, max_length=40)
    aspect: float | None
    resolution: str = Field(max_length=16)
    slots: dict[str, AnchorSlot] = Field(min_length=3)


# --- commands from operators (ingest admin endpoints) ----------------------------------------------------------


class TrainingForceRequested(Event):
    """An operator asks voting to snapshot now and request training even below the threshold."""

    event_type: ClassVar[str] = "training.force_requested"
    requested_by: str = Field("admin", max_length=64)


class KnowledgePublishRequested(Event):
    """An operator asks for the pHash knowledge map to be rebuilt and published (old ``/admin/merge``)."""

    event_type: ClassVar[str] = "knowledge.publish_requested"
    requested_by: str = Field("admin", max_length=64)


class RollbackRequested(Event):
    """An operator asks for an earlier model version to become current again (as a new release)."""

    event_type: ClassVar[str] = "model.rollback_requested"
    target_version: str = Field(min_length=1, max_length=64)
    requested_by: str = Field("admin", max_length=64)


# --- moderation (the console in ingest -> voting, publisher) ----------------------------------------------------


class ItemModerated(Event):
    """A moderator settled an item (gold): ``label`` is the label it carries, ``None`` rejects the item."""

    event_type: ClassVar[str] = "moderation.item_decided"
    item_kind: ItemKind
    item_key: str = Field(min_length=1, max_length=2000)
    label: str | None = Field(None, min_length=1, max_length=300)
    moderator: str = Field(min_length=1, max_length=64, description="the console session that decided")
    note: str = Field("", max_length=500)


class InstallModerated(Event):
    """A moderator shadow-banned an install (its votes stop counting; its client notices nothing) or lifted it."""

    event_type: ClassVar[str] = "moderation.install"
    install_id: InstallId
    shadow_banned: bool
    moderator: str = Field(min_length=1, max_length=64)
    note: str = Field("", max_length=500)


class ReleaseModeRequested(Event):
    """Releases that passed the gate go out automatically, or are held until a moderator approves each."""

    event_type: ClassVar[str] = "release.mode_requested"
    mode: Literal["automatic", "held"]
    requested_by: str = Field("admin", max_length=64)


class ReleaseApprovalRequested(Event):
    """A moderator approves a held release (a trained run that passed its gate)."""

    event_type: ClassVar[str] = "release.approval_requested"
    run_id: uuid.UUID
    requested_by: str = Field("admin", max_length=64)


# --- training and publishing -----------------------------------------------------------------------------------


class TrainingRequested(Event):
    """Voting froze a training snapshot with enough new consensus."""

    event_type: ClassVar[str] = "training.requested"
    snapshot_id: uuid.UUID
    reason: Literal["threshold", "admin"]
    new_labels: int = Field(ge=0)
    total_labels: int = Field(ge=0)


class TrainingProgress(Event):
    event_type: ClassVar[str] = "training.progress"
    run_id: uuid.UUID
    model: ModelKind
    epoch: int = Field(ge=0)
    train_loss: float
    val_accuracy: float | None = Field(None, ge=0, le=1)
    elapsed_seconds: float = Field(ge=0)
    deadline_seconds: float = Field(ge=0)


class ModelTrained(Event):
    """A finished run: artifacts sit in the blob store under the given sha256s."""

    event_type: ClassVar[str] = "model.trained"
    run_id: uuid.UUID
    snapshot_id: uuid.UUID
    trained_at: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
    artifacts: dict[str, Sha256Hex] = Field(min_length=1, description="Hub path -> blob sha256")
    metrics: dict[str, Any]
    n_classes: int = Field(ge=0)
    n_samples: int = Field(ge=0)
    n_users: int = Field(ge=0)
    quality_gate_passed: bool


class ModelPublished(Event):
    event_type: ClassVar[str] = "model.published"
    version: str
    trained_at: str
    hub_commit: str
    hub_tag: str
    run_id: uuid.UUID


class KnowledgePublished(Event):
    event_type: ClassVar[str] = "knowledge.published"
    hub_commit: str
    n_entries: int = Field(ge=0)
    updated_at: str


# --- the published model's predictions (voting -> trainer -> voting) ----------------------------------------------

PredictedKind = Literal["icon", "knowledge", "screen"]


class PredictionItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    item_kind: PredictedKind
    item_key: str = Field(min_length=1, max_length=2000)
    image_sha256: Sha256Hex = Field(description="the blob (as ingest stored it) the model is run on")


class PredictionRequested(Event):
    """Voting asks for the published model's prediction on items whose decision waits for it (withheld for
    lack of trusted evidence). The trainer, which owns the models, answers with ``model.predicted``."""

    event_type: ClassVar[str] = "model.prediction_requested"
    model_version: str = Field(min_length=1, max_length=64, description="the published version voting saw")
    items: list[PredictionItem] = Field(min_length=1, max_length=1000)


class Prediction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    item_kind: PredictedKind
    item_key: str = Field(min_length=1, max_length=2000)
    label: str | None = Field(None, max_length=300, description="top-1 class; None: the image cannot be read")
    confidence: float = Field(0.0, ge=0, le=1, description="softmax probability of the top-1 class")
    trained_on: bool = Field(
        description="the model's training snapshot held this item (or its pixels): its prediction repeats the "
        "label it was taught, so it is no evidence for that label"
    )


class ModelPredicted(Event):
    """The published model's predictions, through the client path, for the items of one request."""

    event_type: ClassVar[str] = "model.predicted"
    model_version: str = Field(min_length=1, max_length=64)
    request_id: str = Field("", max_length=128, description="the message id of the request answered")
    predictions: list[Prediction] = Field(min_length=1, max_length=1000)


EVENT_TYPES: dict[str, dict[int, type[Event]]] = {}
for _event_class in (
    IconCropContributed,
    OcrCorrectionContributed,
    KnowledgeContributed,
    ScreenTypeContributed,
    AnchorGridContributed,
    TrainingForceRequested,
    KnowledgePublishRequested,
    RollbackRequested,
    ItemModerated,
    InstallModerated,
    ReleaseModeRequested,
    ReleaseApprovalRequested,
    TrainingRequested,
    TrainingProgress,
    ModelTrained,
    ModelPublished,
    KnowledgePublished,
    PredictionRequested,
    ModelPredicted,
):
    _version = _event_class.model_fields["schema_version"].default
    EVENT_TYPES.setdefault(_event_class.event_type, {})[_version] = _event_class


class UndecodableEvent(ValueError):
    """The message can never be processed as sent; it belongs in the dead-letter queue with this reason."""


def decode_event(body: bytes, accepted: frozenset[str] | None = None) -> Event:
    """Parse a message body into its event class, or say exactly why it cannot be."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UndecodableEvent(f"body is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise UndecodableEvent("body is not a JSON object")
    event_type = raw.get("event_type")
    versions = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if versions is None or (accepted is not None and event_type not in accepted):
        raise UndecodableEvent(f"event_type {event_type!r} is not one this consumer handles")
    version = raw.get("schema_version")
    event_class = versions.get(version) if isinstance(version, int) else None
    if event_class is None:
        raise UndecodableEvent(
            f"unsupported schema_version {version!r} for {event_type}; this consumer reads {sorted(versions)}"
        )
    try:
        return event_class.model_validate_json(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, p['loc'])) or '<root>'}: {p['msg']}" for p in error.errors()
        )
        raise UndecodableEvent(f"malformed {event_type} v{version}: {problems}") from None
