"""The queue workers' small HTTP surface on their ops port (internal; never published to clients): ``/health``
(compose health checks), ``/metrics`` (Prometheus) and a service's own operator routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shared.broker import EventPublisher

Details = Callable[[], dict[str, object]]


async def dependency_status(publisher: EventPublisher, engine: AsyncEngine) -> dict[str, str]:
    status = {"broker": "ok" if publisher.connected else "unreachable"}
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        status["database"] = "ok"
    except Exception:
        status["database"] = "unreachable"
    return status


async def serve_health(
    port: int,
    publisher: EventPublisher,
    engine: AsyncEngine,
    details: Details = lambda: {},
    routes: Sequence[BaseRoute] = (),
) -> None:
    """Serve ``GET /health`` (200 when broker and database answer, else 503), ``GET /metrics`` and a service's
    own operator ``routes`` until cancelled."""

    async def health(request: Request) -> JSONResponse:
        status = await dependency_status(publisher, engine)
        healthy = all(value == "ok" for value in status.values())
        body = {"status": "ok" if healthy else "degraded", **status, **details()}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[Route("/health", health), Route("/metrics", metrics), *routes])
    # lifespan off: nothing to start, and a cancelled lifespan task would log a traceback at every shutdown
    config = uvicorn.Config(app, host="0.0.0.0", port=port, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # the worker's own signal handling stops everything
    with contextlib.suppress(asyncio.CancelledError):
        await server.serve()
