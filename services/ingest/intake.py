"""Pure rules of taking a contribution request in: its items checked, each an event or a rejection. No I/O.

What a request holds is cleaned or refused here, item by item, so that whatever is answered 2xx can be stored
downstream: each text through its ``TextRule`` (``services.ingest.schemas``), each image through ``check_png``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from services.ingest.domain import (
    ICON_LIMITS,
    KNOWLEDGE_LIMITS,
    POSITION_ONLY_SLOTS,
    SCREENSHOT_LIMITS,
    TEXT_CROP_LIMITS,
    TEXT_SLOTS,
    CheckedImage,
    ImageLimits,
    ImageRejected,
    TextRejected,
    TextRule,
    check_png,
    clean_text,
    contribution_id,
    decode_base64,
)
from services.ingest.schemas import (
    ANCHOR_SLOT_NAME,
    BUILD_TYPE,
    CROP_NAME,
    ML_NAME,
    RESOLUTION,
    SLOT,
    AnchorGrid,
    AnchorsRequest,
    BulkCropItem,
    BulkCropsRequest,
    ContributeRequest,
    ScreenTypeItem,
    ScreenTypesRequest,
)
from shared.events import (
    AnchorGridContributed,
    AnchorSlot,
    Contribution,
    IconCropContributed,
    KnowledgeContributed,
    OcrCorrectionContributed,
    ScreenTypeContributed,
)

Item = TypeVar("Item")


@dataclass(frozen=True)
class Rejection:
    index: int
    code: str
    reason: str


# Called at each rejected image; answers whether the request's other items are still checked.
OnReject = Callable[[], bool]


def _go_on() -> bool:
    return True


@dataclass
class Intake:
    """The outcome of checking a request's items: events ready to publish and per-item rejections.

    ``on_reject`` is called at each rejected image, as it happens (a rejection that cost a look at its pixels;
    a virtual label or a refused text costs nothing and is not charged): the caller charges the sender there,
    and answers False once the sender may spend no more; the request's remaining items are then rejected
    unchecked (a request of twenty bad screenshots need not have all twenty decoded), its accepted ones kept."""

    kind: str
    events: list[tuple[int, Contribution]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    on_reject: OnReject = _go_on
    stopped: bool = False

    def reject(self, index: int, code: str, reason: str) -> None:
        self.rejections.append(Rejection(index, code, reason))

    def checked_image(self, index: int, b64: str, limits: ImageLimits) -> CheckedImage | None:
        """The item's PNG once it passed the checks, else None with the item rejected for the reason."""
        try:
            return check_png(decode_base64(b64), limits)
        except ImageRejected as problem:
            self.reject(index, problem.code, f"item {index}: {problem}")
            self.stopped = self.stopped or not self.on_reject()
            return None

    def cleaned_texts(self, index: int, texts: Iterable[tuple[TextRule, str]]) -> list[str] | None:
        """The item's texts, each cleaned by its rule, else None with the item rejected for the first refusal."""
        try:
            return [rule.clean(text) for rule, text in texts]
        except TextRejected as problem:
            self.reject(index, problem.code, f"item {index}: {problem}")
            return None


def _image_fields(
    id_kind: str,
    install_id: str,
    image: CheckedImage,
    now: datetime,
    *id_parts: str,
    sha256_field: str = "crop_sha256",
) -> dict:
    """What every image contribution carries; its id is derived from the install, the image and ``id_parts``."""
    return {
        "message_id": contribution_id(id_kind, install_id, image.sha256, *id_parts),
        "occurred_at": now,
        "install_id": install_id,
        sha256_field: image.sha256,
        "png": image.data,
    }


def knowledge_intake(request: ContributeRequest, now: datetime, on_reject: OnReject = _go_on) -> Intake:
    """``/contribute``: one pHash knowledge crop. A bad image raises ``ImageRejected`` (HTTP 400); its texts
    were cleaned by the schema."""
    image = check_png(decode_base64(request.crop_png_b64), KNOWLEDGE_LIMITS)
    event = KnowledgeContributed(
        message_id=contribution_id(
            "knowledge", request.install_id, request.phash, image.sha256, request.item_name
        ),
        occurred_at=now,
        install_id=request.install_id,
        phash=request.phash,
        crop_sha256=image.sha256,
        png=image.data,
        item_name=request.item_name,
        wrong_name=request.wrong_name,
        confirmed=request.confirmed,
        warp_version=request.warp_version,
        client_timestamp=request.timestamp,
    )
    return Intake("knowledge", events=[(0, event)])


def _intake(
    kind: str,
    items: Iterable[Item],
    contribution: Callable[[Intake, int, Item], Contribution | None],
    on_reject: OnReject,
) -> Intake:
    """Each item's event, or (``contribution`` answering None) the rejection it recorded."""
    intake = Intake(kind, on_reject=on_reject)
    for index, item in enumerate(items):
        if intake.stopped:
            reason = f"item {index}: not checked: the sender's budget of rejected items is spent"
            intake.rejections.append(Rejection(index, "not_checked", reason))
            continue
        event = contribution(intake, index, item)
        if event is not None:
            intake.events.append((index, event))
    return intake


def bulk_crops_intake(request: BulkCropsRequest, now: datetime, on_reject: OnReject = _go_on) -> Intake:
    def contribution(intake: Intake, index: int, item: BulkCropItem) -> Contribution | None:
        texts = intake.cleaned_texts(
            index, ((SLOT, item.slot), (CROP_NAME, item.name), (ML_NAME, clean_text(item.ml_name)))
        )
        if texts is None:
            return None
        slot, name, ml_name = texts
        if name.startswith("__"):
            intake.reject(index, "virtual_label", f"item {index}: name {name!r} is a virtual label")
            return None
        if slot in POSITION_ONLY_SLOTS:
            intake.reject(index, "position_only_slot", f"item {index}: slot {slot!r} is never uploaded")
            return None
        is_text = slot in TEXT_SLOTS
        image = intake.checked_image(index, item.crop_png_b64, TEXT_CROP_LIMITS if is_text else ICON_LIMITS)
        if image is None:
            return None
        if is_text:
            return OcrCorrectionContributed(
                **_image_fields("ocr", request.install_id, image, now, slot, name, ml_name),
                slot=slot,
                raw_text=ml_name,
                corrected_text=name,
            )
        return IconCropContributed(
            **_image_fields("icon", request.install_id, image, now, slot, name),
            slot=slot,
            label=name,
            model_guess=ml_name,
            pixels_sha256=image.keys.pixels_sha256 if image.keys else None,
            phash=image.keys.phash if image.keys else None,
        )

    return _intake("bulk_crops", request.items, contribution, on_reject)


def screen_types_intake(request: ScreenTypesRequest, now: datetime, on_reject: OnReject = _go_on) -> Intake:
    def contribution(intake: Intake, index: int, item: ScreenTypeItem) -> Contribution | None:
        image = intake.checked_image(index, item.png_b64, SCREENSHOT_LIMITS)
        if image is None:
            return None
        fields = _image_fields(
            "screen", request.install_id, image, now, request.screen_type, sha256_field="image_sha256"
        )
        return ScreenTypeContributed(**fields, screen_type=request.screen_type)

    return _intake("screen_type", request.items, contribution, on_reject)


def anchors_intake(request: AnchorsRequest, now: datetime, on_reject: OnReject = _go_on) -> Intake:
    def contribution(intake: Intake, index: int, grid: AnchorGrid) -> Contribution | None:
        texts = intake.cleaned_texts(
            index,
            (
                (BUILD_TYPE, grid.build_type),
                (RESOLUTION, grid.resolution),
                *((ANCHOR_SLOT_NAME, name) for name in grid.slots),
            ),
        )
        if texts is None:
            return None
        build_type, resolution, *names = texts
        slots = {
            name: AnchorSlot(**slot.model_dump())
            for name, slot in zip(names, grid.slots.values(), strict=True)
        }
        if len(slots) < len(grid.slots):
            intake.reject(
                index,
                "duplicate_slot",
                f"item {index}: two slot names are the same once normalised (NFC, stripped)",
            )
            return None
        canonical = json.dumps({k: v.model_dump() for k, v in sorted(slots.items())}, sort_keys=True)
        return AnchorGridContributed(
            message_id=contribution_id(
                "anchor", request.install_id, build_type, repr(grid.aspect), resolution, canonical
            ),
            occurred_at=now,
            install_id=request.install_id,
            build_type=build_type,
            aspect=grid.aspect,
            resolution=resolution,
            slots=slots,
        )

    return _intake("anchor_grid", request.grids, contribution, on_reject)
