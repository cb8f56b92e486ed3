"""Composition root of the ingest service: ``uvicorn --factory services.ingest.app:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest import errors
from services.ingest.fastpath import ContributionFastPath
from services.ingest.handlers import ContributionService, ServiceUnavailable
from services.ingest.ratelimit import PostgresRateLimiter, Quota
from services.ingest.readmodels import ReadModels, ReadModelUnavailable
from services.ingest.routes import router
from services.ingest.settings import IngestSettings
from shared.broker import EventPublisher
from shared.db import create_engine
from shared.logs import configure_logging
from shared.settings import load_settings
from shared.topology import Topology

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything the routes need, built once per process in the lifespan."""

    settings: IngestSettings
    topology: Topology
    publisher: EventPublisher
    service: ContributionService
    read_models: ReadModels
    engine: AsyncEngine


def _asyncpg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _keep_connection_state(connection: asyncpg.Connection) -> None:
    """The quota statements leave no session state behind, so skip asyncpg's reset round trip per release."""


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or load_settings(IngestSettings)
    configure_logging(settings, "ingest")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        topology = settings.topology()
        publisher = EventPublisher(
            settings.broker_url, topology, confirm_timeout=settings.publish_timeout_seconds
        )
        connecting = asyncio.create_task(publisher.connect_with_retry())
        engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
        pool = await asyncpg.create_pool(
            _asyncpg_dsn(settings.database_url),
            min_size=0,
            max_size=settings.database_pool_size,
            reset=_keep_connection_state,
            # Quota counters are soft state: losing the last few hundred milliseconds of increments in a
            # Postgres crash is acceptable, waiting for a WAL flush on every request is not.
            server_settings={"synchronous_commit": "off"},
        )
        limiter = PostgresRateLimiter(pool, Quota(settings.install_daily_limit, settings.ip_daily_limit))
        app.state.runtime = Runtime(
            settings=settings,
            topology=topology,
            publisher=publisher,
            service=ContributionService(publisher, limiter),
            read_models=ReadModels(engine, settings.read_cache_seconds),
            engine=engine,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(connecting), timeout=5)
        # Everything allocated so far lives as long as the process: keep it out of every GC pass.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # uvicorn has finished in-flight requests (and so their publishes) before this runs.
            connecting.cancel()
            await publisher.close()
            await pool.close()
            await engine.dispose()

    app = FastAPI(
        title="warp-loop ingest",
        version="1",
        description="Accepts WARP client contributions (wire-compatible with the old backend, plus /v1) and "
        "serves the model version, knowledge map and label vocabulary clients poll.",
        lifespan=lifespan,
    )
    app.include_router(router)

    app.add_middleware(ContributionFastPath)

    def answer(status: int, content: dict, headers: dict[str, str]) -> JSONResponse:
        return JSONResponse(content, status_code=status, headers=headers)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, problem: ServiceUnavailable) -> JSONResponse:
        return answer(*errors.unavailable(problem))

    @app.exception_handler(ReadModelUnavailable)
    async def read_unavailable(request: Request, problem: ReadModelUnavailable) -> JSONResponse:
        return answer(*errors.read_unavailable(problem))

    return app
