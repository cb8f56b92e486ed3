"""HTTP entrypoints: translate a request into a handler call and the outcome into the wire contract's answer."""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Literal

import aio_pika
import aiormq
from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse

from services.ingest import metrics
from services.ingest.contributions import (
    ANCHORS,
    BULK_CROPS,
    CONTRIBUTE,
    SCREEN_TYPES,
    V1_ANCHORS,
    V1_CROPS,
    V1_SCREEN_TYPES,
    ContributionEndpoint,
)
from services.ingest.dependencies import AdminDep, OriginDep, Runtime, RuntimeDep
from services.ingest.handlers import ServiceUnavailable
from services.ingest.schemas import (
    BatchResponse,
    ContributeResponse,
    KnowledgeResponse,
    LabelsResponse,
    MergeResponse,
    ModelVersionResponse,
    TrainResponse,
    V1BatchResponse,
)
from shared.dead_letters import list_dead_letters, replay_dead_letters
from shared.events import Event, KnowledgePublishRequested, RollbackRequested, TrainingForceRequested
from shared.health import dependency_status

router = APIRouter()


# --- contributions ----------------------------------------------------------------------------------------------
# Wire-compatible routes answer counts; the native /v1 ones a result and contribution id per item.

_CONTRIBUTE_RESPONSES = {400: {"description": "the crop is not a usable PNG; `detail[0].msg` says why"}}
_BATCH_RESPONSES = {400: {"model": BatchResponse, "description": "every item was rejected"}}
_V1_RESPONSES = {400: {"model": V1BatchResponse, "description": "every item was rejected"}}
# (endpoint, route name, answer model, documented error answers, OpenAPI tag, description)
_CONTRIBUTION_ROUTES = (
    (
        CONTRIBUTE,
        "contribute",
        ContributeResponse,
        _CONTRIBUTE_RESPONSES,
        "contributions",
        "One pHash knowledge crop (the original WARP endpoint). A resend gets the same id and counts once.",
    ),
    (
        BULK_CROPS,
        "bulk_crops",
        BatchResponse,
        _BATCH_RESPONSES,
        "contributions",
        "Labelled icon crops and Ship Type/Tier text crops (OCR corrections), up to 50 per request.",
    ),
    (
        SCREEN_TYPES,
        "screen_types",
        BatchResponse,
        _BATCH_RESPONSES,
        "contributions",
        "Screenshots labelled with their screen type, up to 20 per request.",
    ),
    (
        ANCHORS,
        "anchors",
        BatchResponse,
        None,
        "contributions",
        "Layout anchor grids (where a build screen's slots sit), up to 20 per request.",
    ),
    (
        V1_CROPS,
        "v1_crops",
        V1BatchResponse,
        _V1_RESPONSES,
        "v1",
        "As /contribute/bulk-crops, answering each item's status and contribution id in request order.",
    ),
    (V1_SCREEN_TYPES, "v1_screen_types", V1BatchResponse, _V1_RESPONSES, "v1", None),
    (V1_ANCHORS, "v1_anchors", V1BatchResponse, None, "v1", None),
)


def _contribution_route(endpoint: ContributionEndpoint) -> Callable[..., Awaitable[JSONResponse]]:
    # The body's annotation is evaluated here (this module does not postpone annotations): FastAPI reads it to
    # validate and document the body of each route.
    async def route(body: endpoint.schema, runtime: RuntimeDep, origin: OriginDep) -> JSONResponse:
        return await endpoint.respond(body, runtime, origin)

    return route


for _endpoint, _name, _answer, _responses, _tag, _description in _CONTRIBUTION_ROUTES:
    router.add_api_route(
        _endpoint.path,
        _contribution_route(_endpoint),
        methods=["POST"],
        name=_name,
        response_model=_answer,
        responses=_responses,
        tags=[_tag],
        description=_description,
    )


# --- what clients poll ------------------------------------------------------------------------------------------


@router.get("/health", tags=["operations"])
async def health() -> dict[str, str]:
    """Liveness: the process answers. Dependencies are reported by /ready."""
    return {"status": "ok", "service": "ingest"}


@router.get("/ready", tags=["operations"])
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: RabbitMQ connected and Postgres answering."""
    checks = await dependency_status(runtime.publisher, runtime.engine)
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


async def _publish_command(runtime: Runtime, event: Event) -> None:
    try:
        await runtime.publisher.publish(event)
    except Exception as error:
        raise ServiceUnavailable("broker", repr(error)) from error


async def _requested(runtime: Runtime, command: Event) -> TrainResponse:
    """Publish an admin command; the answer names it, so the request can be followed in the logs."""
    await _publish_command(runtime, command)
    return TrainResponse(request_id=command.message_id)


@router.post("/admin/merge", response_model=MergeResponse, dependencies=[AdminDep], tags=["admin"])
async def admin_merge(runtime: RuntimeDep):
    """Ask for the knowledge map to be rebuilt and published; answers the counts it will publish."""
    merged, total = await runtime.read_models.store.knowledge_merge_counts()
    await _publish_command(runtime, KnowledgePublishRequested())
    return MergeResponse(merged=merged, total=total)


_COMMAND = {
    "response_model": TrainResponse,
    "status_code": 202,
    "dependencies": [AdminDep],
    "tags": ["admin"],
}


@router.post("/admin/train", **_COMMAND)
async def admin_train(runtime: RuntimeDep):
    """Ask voting to snapshot now and request a training, even below the threshold."""
    return await _requested(runtime, TrainingForceRequested())


@router.post("/admin/rollback/{version}", **_COMMAND)
async def admin_rollback(version: Annotated[str, Path(min_length=1, max_length=64)], runtime: RuntimeDep):
    """Make an earlier version current again: the publisher re-releases its weights with a fresh trained_at."""
    return await _requested(runtime, RollbackRequested(target_version=version))


Role = Literal["voting", "trainer", "predictor", "publisher"]


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
