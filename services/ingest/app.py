"""Entry of an ingest HTTP worker: ``uvicorn --factory services.ingest.app:create_app`` (``serve.py`` runs it)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.ingest import errors
from services.ingest.bootstrap import bootstrap
from services.ingest.console.routes import router as console_router
from services.ingest.fastpath import ContributionFastPath
from services.ingest.handlers import ServiceUnavailable
from services.ingest.readmodels import ReadModelUnavailable
from services.ingest.routes import router
from services.ingest.settings import IngestSettings
from shared.logs import configure_logging
from shared.settings import load_settings


def create_app(settings: IngestSettings | None = None, **overrides: object) -> FastAPI:
    """The ASGI app; ``overrides`` go to ``bootstrap`` (in-memory fakes in tests)."""
    settings = settings or load_settings(IngestSettings)
    configure_logging(settings, "ingest")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # On leaving, uvicorn has finished in-flight requests (and so their publishes).
        async with bootstrap(settings, **overrides) as runtime:
            app.state.runtime = runtime
            # Everything allocated so far lives as long as the process: keep it out of every GC pass.
            gc.collect()
            gc.freeze()
            yield

    app = FastAPI(
        title="warp-loop ingest",
        version="1",
        description="Accepts WARP client contributions (wire-compatible with the old backend, plus /v1) and "
        "serves the model version, knowledge map and label vocabulary clients poll.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(console_router)

    app.add_middleware(ContributionFastPath)

    def answer(status: int, content: dict, headers: dict[str, str]) -> JSONResponse:
        return JSONResponse(content, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, problem: RequestValidationError) -> JSONResponse:
        return answer(*errors.invalid_request(problem))

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, problem: ServiceUnavailable) -> JSONResponse:
        return answer(*errors.unavailable(problem))

    @app.exception_handler(ReadModelUnavailable)
    async def read_unavailable(request: Request, problem: ReadModelUnavailable) -> JSONResponse:
        return answer(*errors.read_unavailable(problem))

    return app
