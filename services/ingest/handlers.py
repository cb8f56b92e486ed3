"""The service layer: requests become validated contribution events, quota is taken, events are published.

Order matters and is the contract: schema (FastAPI, 422) -> image and item checks (400 / per-item rejection)
-> quota (429) -> publish and await the broker's confirm (503 on failure, quota given back) -> 2xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TypeVar

from services.ingest import metrics
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
    check_png,
    contribution_id,
    decode_base64,
    is_printable_name,
)
from services.ingest.ratelimit import QuotaExceeded, RateLimiter
from services.ingest.schemas import (
    AnchorGrid,
    AnchorsRequest,
    BulkCropItem,
    BulkCropsRequest,
    ContributeRequest,
    ScreenTypeItem,
    ScreenTypesRequest,
)
from shared.broker import EventPublisher, PublishFailed
from shared.events import (
    AnchorGridContributed,
    AnchorSlot,
    Contribution,
    IconCropContributed,
    KnowledgeContributed,
    OcrCorrectionContributed,
    ScreenTypeContributed,
)

log = logging.getLogger(__name__)
Item = TypeVar("Item")


@dataclass(frozen=True)
class Rejection:
    index: int
    code: str
    reason: str


@dataclass
class Intake:
    """The outcome of checking a request's items: events ready to publish and per-item rejections."""

    kind: str
    events: list[tuple[int, Contribution]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def reject(self, index: int, code: str, reason: str) -> None:
        self.rejections.append(Rejection(index, code, reason))

    def checked_image(self, index: int, b64: str, limits: ImageLimits) -> CheckedImage | None:
        """The item's PNG once it passed the checks, else None with the item rejected for the reason."""
        try:
            return check_png(decode_base64(b64), limits)
        except ImageRejected as problem:
            self.reject(index, problem.code, f"item {index}: {problem}")
            return None


class ServiceUnavailable(RuntimeError):
    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} unavailable: {detail}")
        self.dependency = dependency


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


def knowledge_intake(request: ContributeRequest, now: datetime) -> Intake:
    """``/contribute``: one pHash knowledge crop. A bad image raises ``ImageRejected`` (HTTP 400)."""
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
    kind: str, items: Iterable[Item], contribution: Callable[[Intake, int, Item], Contribution | None]
) -> Intake:
    """Each item's event, or (``contribution`` answering None) the rejection it recorded."""
    intake = Intake(kind)
    for index, item in enumerate(items):
        event = contribution(intake, index, item)
        if event is not None:
            intake.events.append((index, event))
    return intake


def bulk_crops_intake(request: BulkCropsRequest, now: datetime) -> Intake:
    def contribution(intake: Intake, index: int, item: BulkCropItem) -> Contribution | None:
        if item.name.startswith("__"):
            intake.reject(index, "virtual_label", f"item {index}: name {item.name!r} is a virtual label")
            return None
        if not is_printable_name(item.name):
            intake.reject(index, "unprintable_name", f"item {index}: name contains non-printable characters")
            return None
        if item.slot in POSITION_ONLY_SLOTS:
            intake.reject(index, "position_only_slot", f"item {index}: slot {item.slot!r} is never uploaded")
            return None
        is_text = item.slot in TEXT_SLOTS
        image = intake.checked_image(index, item.crop_png_b64, TEXT_CROP_LIMITS if is_text else ICON_LIMITS)
        if image is None:
            return None
        if is_text:
            return OcrCorrectionContributed(
                **_image_fields("ocr", request.install_id, image, now, item.slot, item.name, item.ml_name),
                slot=item.slot,
                raw_text=item.ml_name,
                corrected_text=item.name,
            )
        return IconCropContributed(
            **_image_fields("icon", request.install_id, image, now, item.slot, item.name),
            slot=item.slot,
            label=item.name,
            model_guess=item.ml_name,
        )

    return _intake("bulk_crops", request.items, contribution)


def screen_types_intake(request: ScreenTypesRequest, now: datetime) -> Intake:
    def contribution(intake: Intake, index: int, item: ScreenTypeItem) -> Contribution | None:
        image = intake.checked_image(index, item.png_b64, SCREENSHOT_LIMITS)
        if image is None:
            return None
        fields = _image_fields(
            "screen", request.install_id, image, now, request.screen_type, sha256_field="image_sha256"
        )
        return ScreenTypeContributed(**fields, screen_type=request.screen_type)

    return _intake("screen_type", request.items, contribution)


def anchors_intake(request: AnchorsRequest, now: datetime) -> Intake:
    def contribution(intake: Intake, index: int, grid: AnchorGrid) -> Contribution:
        slots = {name: AnchorSlot(**slot.model_dump()) for name, slot in grid.slots.items()}
        canonical = json.dumps({k: v.model_dump() for k, v in sorted(slots.items())}, sort_keys=True)
        return AnchorGridContributed(
            message_id=contribution_id(
                "anchor", request.install_id, grid.build_type, repr(grid.aspect), grid.resolution, canonical
            ),
            occurred_at=now,
            install_id=request.install_id,
            build_type=grid.build_type,
            aspect=grid.aspect,
            resolution=grid.resolution,
            slots=slots,
        )

    return _intake("anchor_grid", request.grids, contribution)


class ContributionService:
    def __init__(
        self,
        publisher: EventPublisher,
        limiter: RateLimiter,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._publisher = publisher
        self._limiter = limiter
        self.clock = clock

    def today(self) -> date:
        return self.clock().date()

    async def submit(self, intake: Intake, install_id: str, client_ip: str) -> None:
        """Take quota for the accepted items and publish them; return only when the broker confirmed all.

        Raises ``QuotaExceeded`` (nothing taken, nothing published) or ``ServiceUnavailable`` (quota given
        back; some items may have been confirmed, and a resend carries the same ids, so they count once).
        """
        for rejection in intake.rejections:
            metrics.REJECTED.labels(intake.kind, rejection.code).inc()
        if not intake.events:
            return
        units, day = len(intake.events), self.today()
        started = time.perf_counter()
        try:
            await self._limiter.consume(install_id, client_ip, units, day)
        except QuotaExceeded as exceeded:
            metrics.RATE_LIMITED.labels(exceeded.scope).inc()
            raise
        except Exception as error:
            raise ServiceUnavailable("database", repr(error)) from error
        metrics.QUOTA_SECONDS.observe(time.perf_counter() - started)
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(self._publisher.publish(event) for _, event in intake.events), return_exceptions=True
        )
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            log.warning(
                "publish failed; answering 503",
                extra={"install_id": install_id, "reason": repr(failures[0])},
            )
            try:
                await self._limiter.refund(install_id, client_ip, units, day)
            except Exception:
                log.exception("could not give quota back", extra={"install_id": install_id})
            if not all(isinstance(failure, PublishFailed) for failure in failures):
                log.error("unexpected publish error", exc_info=failures[0])
            raise ServiceUnavailable("broker", repr(failures[0]))
        for _, event in intake.events:
            metrics.ACCEPTED.labels(event.event_type.removeprefix("contribution.")).inc()
