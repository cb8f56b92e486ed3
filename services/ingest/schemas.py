"""Request and response bodies: the wire contract's shapes and limits (WIRE_CONTRACT.md §1), plus /v1."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.ingest.domain import clean_install_id, clean_text


def _cleaned_install_id(value: str) -> str:
    cleaned = clean_install_id(value)
    if not cleaned:
        raise ValueError("install_id has no characters from [A-Za-z0-9_-]")
    return cleaned


def _cleaned_text(value: str) -> str:
    cleaned = clean_text(value)
    if not cleaned:
        raise ValueError("text is empty once control characters and surrounding spaces are removed")
    return cleaned


def _cleaned_optional_text(value: str | None) -> str | None:
    return None if value is None else clean_text(value) or None


LegacyInstallId = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_cleaned_install_id)]
InstallId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
CropBase64 = Annotated[str, Field(min_length=100, max_length=200_000)]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContributeRequest(WireModel):
    install_id: LegacyInstallId
    phash: str = Field(pattern=r"^[0-9a-f]{16}$")
    crop_png_b64: CropBase64
    item_name: Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_cleaned_text)]
    wrong_name: Annotated[str | None, Field(max_length=300), AfterValidator(_cleaned_optional_text)] = None
    confirmed: bool = True
    warp_version: str | None = Field(None, max_length=20)
    timestamp: str | None = Field(None, max_length=30)


class ContributeResponse(BaseModel):
    ok: Literal[True] = True
    contribution_id: str


class BulkCropItem(WireModel):
    slot: str = Field(min_length=1, max_length=80)
    name: str = Field(min_length=1, max_length=120)
    crop_png_b64: CropBase64
    ml_name: str = Field("", max_length=120)


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
    build_type: str = Field(min_length=1, max_length=40)
    aspect: float | None = Field(None, gt=0, le=10)
    resolution: str = Field(max_length=16)
    slots: dict[Annotated[str, Field(min_length=1, max_length=80)], AnchorSlotIn] = Field(
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
