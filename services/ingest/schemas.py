"""Request and response bodies: the wire contract's shapes and limits (WIRE_CONTRACT.md §1), plus /v1."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.ingest.domain import TextRule, clean_install_id, clean_text

# Every text field of the wire, with its rule (``TextRule``: what it may hold, its length once cleaned). Fields
# of a request are refused with 422 naming the field; fields of a batch's item reject that item only
# (``services.ingest.intake``). Free text a client copies from elsewhere (``item_name``, ``wrong_name``,
# ``warp_version``, ``timestamp``, and ``ml_name``, raw OCR text on text slots) keeps the old backend's
# cleaning: control and format characters removed rather than refused, so an honest trailing newline is no 422.
ITEM_NAME = TextRule("item_name", 300, name=False)
WRONG_NAME = TextRule("wrong_name", 300, name=False, required=False)
WARP_VERSION = TextRule("warp_version", 20, name=False, required=False)
TIMESTAMP = TextRule("timestamp", 30, name=False, required=False)
SLOT = TextRule("slot", 80)
CROP_NAME = TextRule("name", 120)
ML_NAME = TextRule("ml_name", 120, name=False, required=False)
BUILD_TYPE = TextRule("build_type", 40)
RESOLUTION = TextRule("resolution", 16, required=False)
ANCHOR_SLOT_NAME = TextRule("slot name", 80)


def _cleaned_install_id(value: str) -> str:
    cleaned = clean_install_id(value)
    if not cleaned:
        raise ValueError("install_id has no characters from [A-Za-z0-9_-]")
    return cleaned


def _cleaned_item_name(value: str) -> str:
    return ITEM_NAME.clean(clean_text(value))


def _cleaned_wrong_name(value: str | None) -> str | None:
    return None if value is None else WRONG_NAME.clean(clean_text(value)) or None


def _optional_text(rule: TextRule) -> Any:
    """An optional free-text request field: control and format characters removed, then cleaned by ``rule``."""
    return Annotated[
        str | None,
        Field(max_length=rule.max_length),
        AfterValidator(lambda value: None if value is None else rule.clean(clean_text(value))),
    ]


def _item_text(rule: TextRule) -> Any:
    """The length limits of ``rule`` (422 beyond them), checked before it is applied: by a validator of the
    request field, or per item by ``services.ingest.intake``."""
    return Field(min_length=int(rule.required), max_length=rule.max_length)


WarpVersion = _optional_text(WARP_VERSION)
ClientTimestamp = _optional_text(TIMESTAMP)
LegacyInstallId = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_cleaned_install_id)]
InstallId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
CropBase64 = Annotated[str, Field(min_length=100, max_length=200_000)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContributeRequest(WireModel):
    install_id: LegacyInstallId
    phash: str = Field(pattern=r"^[0-9a-f]{16}$")
    crop_png_b64: CropBase64
    item_name: Annotated[str, _item_text(ITEM_NAME), AfterValidator(_cleaned_item_name)]
    wrong_name: Annotated[
        str | None, Field(max_length=WRONG_NAME.max_length), AfterValidator(_cleaned_wrong_name)
    ] = None
    confirmed: bool = True
    warp_version: WarpVersion = None
    timestamp: ClientTimestamp = None


class ContributeResponse(BaseModel):
    ok: Literal[True] = True
    contribution_id: str


class BulkCropItem(WireModel):
    slot: str = _item_text(SLOT)
    name: str = _item_text(CROP_NAME)
    crop_png_b64: CropBase64
    ml_name: str = Field("", max_length=ML_NAME.max_length)


class BulkCropsRequest(WireModel):
    install_id: InstallId
    items: list[BulkCropItem] = Field(min_length=1, max_length=50)


class ScreenTypeItem(WireModel):
    png_b64: str = Field(min_length=1, max_length=4_000_000)


class ScreenTypesRequest(WireModel):
    install_id: InstallId
    screen_type: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    items: list[ScreenTypeItem] = Field(min_length=1, max_length=20)


class AnchorSlotIn(WireModel):
    x0_rel: float = Field(ge=0, le=1)
    y_rel: float = Field(ge=0, le=1)
    w_rel: float = Field(gt=0, le=1)
    h_rel: float = Field(gt=0, le=1)
    step_rel: float | None = Field(None, ge=0, le=1)
    count: int | None = Field(None, ge=0, le=1000)


class AnchorGrid(WireModel):
    build_type: str = _item_text(BUILD_TYPE)
    aspect: float | None = Field(None, gt=0, le=10)
    resolution: str = _item_text(RESOLUTION)
    slots: dict[Annotated[str, _item_text(ANCHOR_SLOT_NAME)], AnchorSlotIn] = Field(
        min_length=3, max_length=200
    )


class AnchorsRequest(WireModel):
    install_id: InstallId
    grids: list[AnchorGrid] = Field(min_length=1, max_length=20)


class BatchResponse(BaseModel):
    ok: bool
    accepted: int
    rejected: int
    rejected_reasons: list[str] = Field(max_length=10)


class ItemResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected"]
    contribution_id: str | None = None
    reason: str | None = None


class V1BatchResponse(BaseModel):
    """The native answer: a result per item, in request order, with its contribution id."""

    accepted: int
    rejected: int
    results: list[ItemResult]


class ModelVersionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    available: bool


class KnowledgeResponse(BaseModel):
    knowledge: dict[str, str]


class LabelsResponse(BaseModel):
    icon_labels: list[str]
    screen_types: list[str]
    text_slots: list[str]
    virtual_labels: list[str]


class MergeResponse(BaseModel):
    ok: Literal[True] = True
    merged: int
    total: int


class TrainResponse(BaseModel):
    ok: Literal[True] = True
    request_id: str
