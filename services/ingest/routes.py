"""HTTP entrypoints: translate a request into a handler call and the outcome into the wire contract's answer."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import aio_pika
import aiormq
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from services.ingest import errors, metrics
from services.ingest.domain import ImageRejected, client_ip
from services.ingest.handlers import (
    Intake,
    ServiceUnavailable,
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
    KnowledgeResponse,
    LabelsResponse,
    MergeResponse,
    ModelVersionResponse,
    ScreenTypesRequest,
    TrainResponse,
    V1BatchResponse,
)
from shared.dead_letters import list_dead_letters, replay_dead_letters
from shared.events import KnowledgePublishRequested, RollbackRequested, TrainingForceRequested

if TYPE_CHECKING:
    from services.ingest.app import Runtime

router = APIRouter()
# Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, which
# cost more than a third of the CPU of a contribution request under load.
MAX_REASONS = 10


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated["Runtime", Depends(get_runtime)]


async def get_client_ip(request: Request, runtime: RuntimeDep) -> str:
    peer = request.client.host if request.client else None
    return client_ip(peer, request.headers.get("x-forwarded-for"), runtime.settings.trusted_proxies)


ClientIpDep = Annotated[str, Depends(get_client_ip)]


async def require_admin(runtime: RuntimeDep, x_admin_key: Annotated[str | None, Header()] = None) -> None:
    configured = runtime.settings.admin_key
    if configured is None:
        raise HTTPException(404, "admin endpoints are disabled: set WARP_ADMIN_KEY to enable them")
    if x_admin_key is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("header", "x-admin-key"), "msg": "Field required", "input": None}]
        )
    if not hmac.compare_digest(x_admin_key.encode(), configured.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin key")


AdminDep = Depends(require_admin)


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
    intake: Callable[[Any, datetime], Intake]
    answer: Callable[[Intake], tuple[int, dict]]
    max_body_bytes: int
    image_field: str = "image"

    async def accept(self, body: Any, runtime: Runtime, ip: str) -> tuple[int, dict]:
        """``(status, body)`` of the answer; raises ``ImageRejected``, ``QuotaExceeded`` or ``ServiceUnavailable``
        (answered by ``services.ingest.errors``)."""
        try:
            intake = self.intake(body, runtime.service.clock())
        except ImageRejected as problem:
            metrics.REJECTED.labels(self.kind, problem.code).inc()
            raise
        await runtime.service.submit(intake, body.install_id, ip)
        return self.answer(intake)

    async def respond(self, body: Any, runtime: Runtime, ip: str) -> JSONResponse:
        try:
            status, content = await self.accept(body, runtime, ip)
            return JSONResponse(content, status_code=status)
        except errors.CONTRIBUTION_PROBLEMS as problem:
            status, content, headers = errors.contribution_problem(problem, self.image_field)
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
)
ANCHORS = ContributionEndpoint(
    "/upload/anchors",
    "anchor_grid",
    AnchorsRequest,
    anchors_intake,
    _batch_answer,
    max_body_bytes=6 * MIB,  # 20 grids of 200 slots
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


# --- contributions, wire-compatible -----------------------------------------------------------------------------

_CONTRIBUTE_RESPONSES = {400: {"description": "the crop is not a usable PNG; `detail[0].msg` says why"}}


@router.post(
    "/contribute", response_model=ContributeResponse, responses=_CONTRIBUTE_RESPONSES, tags=["contributions"]
)
async def contribute(body: ContributeRequest, runtime: RuntimeDep, ip: ClientIpDep):
    """One pHash knowledge crop (the original WARP endpoint). A resend gets the same id and counts once."""
    return await CONTRIBUTE.respond(body, runtime, ip)


_BATCH_RESPONSES = {400: {"model": BatchResponse, "description": "every item was rejected"}}


@router.post(
    "/contribute/bulk-crops", response_model=BatchResponse, responses=_BATCH_RESPONSES, tags=["contributions"]
)
async def bulk_crops(body: BulkCropsRequest, runtime: RuntimeDep, ip: ClientIpDep):
    """Labelled icon crops and Ship Type/Tier text crops (OCR corrections), up to 50 per request."""
    return await BULK_CROPS.respond(body, runtime, ip)


@router.post(
    "/upload/screen-types", response_model=BatchResponse, responses=_BATCH_RESPONSES, tags=["contributions"]
)
async def screen_types(body: ScreenTypesRequest, runtime: RuntimeDep, ip: ClientIpDep):
    """Screenshots labelled with their screen type, up to 20 per request."""
    return await SCREEN_TYPES.respond(body, runtime, ip)


@router.post("/upload/anchors", response_model=BatchResponse, tags=["contributions"])
async def anchors(body: AnchorsRequest, runtime: RuntimeDep, ip: ClientIpDep):
    """Layout anchor grids (where a build screen's slots sit), up to 20 per request."""
    return await ANCHORS.respond(body, runtime, ip)


# --- contributions, native /v1: a result and contribution id per item -------------------------------------------

_V1_RESPONSES = {400: {"model": V1BatchResponse, "description": "every item was rejected"}}


@router.post("/v1/contributions/crops", response_model=V1BatchResponse, responses=_V1_RESPONSES, tags=["v1"])
async def v1_crops(body: BulkCropsRequest, runtime: RuntimeDep, ip: ClientIpDep):
    """As /contribute/bulk-crops, answering each item's status and contribution id in request order."""
    return await V1_CROPS.respond(body, runtime, ip)


@router.post(
    "/v1/contributions/screen-types", response_model=V1BatchResponse, responses=_V1_RESPONSES, tags=["v1"]
)
async def v1_screen_types(body: ScreenTypesRequest, runtime: RuntimeDep, ip: ClientIpDep):
    return await V1_SCREEN_TYPES.respond(body, runtime, ip)


@router.post("/v1/contributions/anchors", response_model=V1BatchResponse, tags=["v1"])
async def v1_anchors(body: AnchorsRequest, runtime: RuntimeDep, ip: ClientIpDep):
    return await V1_ANCHORS.respond(body, runtime, ip)


# --- what clients poll ------------------------------------------------------------------------------------------


@router.get("/health", tags=["operations"])
async def health() -> dict[str, str]:
    """Liveness: the process answers. Dependencies are reported by /ready."""
    return {"status": "ok", "service": "ingest"}


@router.get("/ready", tags=["operations"])
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: RabbitMQ connected and Postgres answering."""
    checks = {"broker": "ok" if runtime.publisher.connected else "unreachable"}
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    is_ready = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ready" if is_ready else "not ready", **checks}, status_code=200 if is_ready else 503
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)


@router.get("/model/version", response_model=ModelVersionResponse, tags=["read"])
async def model_version(runtime: RuntimeDep):
    """The current published model; ``{"available": false}`` only when none was ever published."""
    return await runtime.read_models.model_version.get()


@router.get("/knowledge", response_model=KnowledgeResponse, tags=["read"])
async def knowledge(runtime: RuntimeDep):
    """The pHash -> item name map from accepted community consensus."""
    return {"knowledge": await runtime.read_models.knowledge.get()}


@router.get("/config/labels", response_model=LabelsResponse, tags=["read"])
async def labels(runtime: RuntimeDep):
    """The label vocabulary clients may use."""
    return await runtime.read_models.labels.get()


# --- admin ------------------------------------------------------------------------------------------------------


async def _publish_command(runtime: Runtime, event) -> None:
    try:
        await runtime.publisher.publish(event)
    except Exception as error:
        raise ServiceUnavailable("broker", repr(error)) from error


@router.post("/admin/merge", response_model=MergeResponse, dependencies=[AdminDep], tags=["admin"])
async def admin_merge(runtime: RuntimeDep):
    """Ask for the knowledge map to be rebuilt and published; answers the counts it will publish."""
    merged, total = await runtime.read_models.knowledge_merge_counts()
    await _publish_command(runtime, KnowledgePublishRequested())
    return MergeResponse(merged=merged, total=total)


@router.post(
    "/admin/train", response_model=TrainResponse, status_code=202, dependencies=[AdminDep], tags=["admin"]
)
async def admin_train(runtime: RuntimeDep):
    """Ask voting to snapshot now and request a training, even below the threshold."""
    command = TrainingForceRequested()
    await _publish_command(runtime, command)
    return TrainResponse(request_id=command.message_id)


@router.post(
    "/admin/rollback/{version}",
    response_model=TrainResponse,
    status_code=202,
    dependencies=[AdminDep],
    tags=["admin"],
)
async def admin_rollback(version: Annotated[str, Path(min_length=1, max_length=64)], runtime: RuntimeDep):
    """Make an earlier version current again: the publisher re-releases its weights with a fresh trained_at."""
    command = RollbackRequested(target_version=version)
    await _publish_command(runtime, command)
    return TrainResponse(request_id=command.message_id)


Role = Literal["voting", "trainer", "publisher"]


@contextlib.asynccontextmanager
async def _admin_connection(runtime: Runtime) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A short-lived connection for reading dead-letter queues; RabbitMQ unreachable -> 503, not 500."""
    try:
        connection = await aio_pika.connect(runtime.settings.broker_url, timeout=5)
    except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as error:
        raise ServiceUnavailable("broker", repr(error)) from error
    async with connection:
        yield connection


@router.get("/admin/dead-letters/{role}", dependencies=[AdminDep], tags=["admin"])
async def admin_dead_letters(
    role: Role, runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
):
    """What sits in a consumer's dead-letter queue, and why."""
    async with _admin_connection(runtime) as connection:
        letters = await list_dead_letters(await connection.channel(), runtime.topology, role, limit)
    return {
        "queue": runtime.topology.dead_letter_queue(role),
        "messages": [letter.as_dict() for letter in letters],
    }


@router.post("/admin/dead-letters/{role}/replay", dependencies=[AdminDep], tags=["admin"])
async def admin_replay(role: Role, runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 100):
    """Send dead-lettered messages back to their consumers (after the cause was fixed)."""
    async with _admin_connection(runtime) as connection:
        replayed = await replay_dead_letters(
            await connection.channel(), runtime.publisher, runtime.topology, role, limit
        )
    return {"replayed": len(replayed), "message_ids": replayed}
