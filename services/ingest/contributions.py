"""The contribution endpoints as data: each route's body schema, how its body becomes events, and its answer.

One table serves both the FastAPI routes (``services.ingest.routes``, which document the API and answer schema
errors) and the fast path (``services.ingest.fastpath``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.ingest import errors, metrics
from services.ingest.dependencies import Runtime
from services.ingest.domain import ImageRejected
from services.ingest.intake import (
    Intake,
    anchors_intake,
    bulk_crops_intake,
    knowledge_intake,
    screen_types_intake,
)
from services.ingest.schemas import (
    AnchorsRequest,
    BatchResponse,
    BulkCropsRequest,
    ContributeRequest,
    ContributeResponse,
    ItemResult,
    ScreenTypesRequest,
    V1BatchResponse,
)

MAX_REASONS = 10


@dataclass(frozen=True)
class ContributionEndpoint:
    """One contribution route: its body schema, how the body becomes events, and how the outcome is answered.

    ``max_body_bytes`` bounds what is buffered: a longer body is refused with 413 before it is read. It is the
    largest body the schema accepts (every item at its size limit, base64 written plainly, every name character
    escaped as a surrogate pair: 12 bytes) plus a quarter, rounded up. Base64 written with JSON escapes
    (``\u002b`` for ``+``, as some encoders do) or ignored extra fields eat into that margin.

    Served by the FastAPI route of the same path (which documents it in OpenAPI and answers schema errors) and,
    for well-formed JSON bodies, by the fast path in ``services.ingest.fastpath``; both call ``accept``."""

    path: str
    kind: str
    schema: type[BaseModel]
    intake: Callable[[Any, datetime, Callable[[], bool]], Intake]
    answer: Callable[[Intake], tuple[int, dict]]
    max_body_bytes: int
    image_field: str = "image"
    image_lane: str | None = "crops"
    reject_cost: int = 1
    images: Callable[[Any], int] = lambda body: len(body.items)

    def _checked(self, runtime: Runtime, ip: str, body: Any, now: datetime) -> Intake:
        """The request's intake, its rejected items charged to the origin's reject budget (``reject_cost``
        each), or ``BudgetSpent`` when the budget was spent while the request waited for a thread. It runs on
        a thread of the request's image lane, so a request's charge is seen by the next one of the lane."""
        runtime.rejects.ensure_left(ip)

        def rejected() -> bool:  # each rejected item as it happens: a spent budget stops the checks there
            runtime.rejects.charge(ip, self.reject_cost)
            return runtime.rejects.retry_after(ip) is None

        try:
            return self.intake(body, now, rejected)
        except ImageRejected:
            runtime.rejects.charge(ip, self.reject_cost)
            raise

    async def accept(self, body: Any, runtime: Runtime, ip: str) -> tuple[int, dict]:
        """``(status, body)`` of the answer; raises ``ImageRejected``, ``QuotaExceeded``, ``ServiceUnavailable``,
        ``Overloaded`` or ``BudgetSpent`` (answered by ``services.ingest.errors``).

        Images are checked in the worker's bounded pool of ``image_lane``, off the event loop, unless the
        request has no more than the lane checks inline (``ImagePool.inline_up_to``)."""
        now = runtime.service.clock()
        lane = None if self.image_lane is None else runtime.images[self.image_lane]
        try:
            if lane is None or self.images(body) <= lane.inline_up_to:
                intake = self._checked(runtime, ip, body, now)
            else:
                intake = await lane.run(self._checked, runtime, ip, body, now)
        except ImageRejected as problem:
            metrics.REJECTED.labels(self.kind, problem.code).inc()
            raise
        await runtime.service.submit(intake, body.install_id, ip, runtime.voice(ip))
        return self.answer(intake)

    async def respond(self, body: Any, runtime: Runtime, ip: str) -> JSONResponse:
        try:
            status, content = await self.accept(body, runtime, ip)
            return JSONResponse(content, status_code=status)
        except errors.CONTRIBUTION_PROBLEMS as problem:
            status, content, headers = errors.contribution_problem(
                problem, self.image_field, runtime.service.clock()
            )
            return JSONResponse(content, status_code=status, headers=headers)


def _contribute_answer(intake: Intake) -> tuple[int, dict]:
    return 200, ContributeResponse(contribution_id=intake.events[0][1].message_id).model_dump()


def _batch_answer(intake: Intake) -> tuple[int, dict]:
    body = BatchResponse(
        ok=bool(intake.events),
        accepted=len(intake.events),
        rejected=len(intake.rejections),
        rejected_reasons=[r.reason for r in intake.rejections[:MAX_REASONS]],
    )
    return (200 if intake.events else 400), body.model_dump()


def _v1_answer(intake: Intake) -> tuple[int, dict]:
    results = [ItemResult(index=i, status="accepted", contribution_id=e.message_id) for i, e in intake.events]
    results += [ItemResult(index=r.index, status="rejected", reason=r.reason) for r in intake.rejections]
    body = V1BatchResponse(
        accepted=len(intake.events),
        rejected=len(intake.rejections),
        results=sorted(results, key=lambda r: r.index),
    )
    return (200 if intake.events else 400), body.model_dump(exclude_none=True)


KIB, MIB = 1024, 1024 * 1024
CONTRIBUTE = ContributionEndpoint(
    "/contribute",
    "knowledge",
    ContributeRequest,
    knowledge_intake,
    _contribute_answer,
    max_body_bytes=320 * KIB,  # one 200,000-character crop
    image_field="crop_png_b64",
    images=lambda body: 1,
)
BULK_CROPS = ContributionEndpoint(
    "/contribute/bulk-crops",
    "bulk_crops",
    BulkCropsRequest,
    bulk_crops_intake,
    _batch_answer,
    max_body_bytes=16 * MIB,  # 50 crops of 200,000 characters
)
SCREEN_TYPES = ContributionEndpoint(
    "/upload/screen-types",
    "screen_type",
    ScreenTypesRequest,
    screen_types_intake,
    _batch_answer,
    max_body_bytes=100 * MIB,  # 20 screenshots of 4,000,000 characters
    image_lane="screens",
    reject_cost=8,  # a rejected screenshot may have cost decoding 8 megapixels; a crop, a few thousand pixels
)
ANCHORS = ContributionEndpoint(
    "/upload/anchors",
    "anchor_grid",
    AnchorsRequest,
    anchors_intake,
    _batch_answer,
    max_body_bytes=6 * MIB,  # 20 grids of 200 slots
    image_lane=None,
)
V1_CROPS = replace(BULK_CROPS, path="/v1/contributions/crops", answer=_v1_answer)
V1_SCREEN_TYPES = replace(SCREEN_TYPES, path="/v1/contributions/screen-types", answer=_v1_answer)
V1_ANCHORS = replace(ANCHORS, path="/v1/contributions/anchors", answer=_v1_answer)
CONTRIBUTION_ENDPOINTS = (
    CONTRIBUTE,
    BULK_CROPS,
    SCREEN_TYPES,
    ANCHORS,
    V1_CROPS,
    V1_SCREEN_TYPES,
    V1_ANCHORS,
)
