"""What a request needs, resolved per request: the process's ``Runtime``, the client address, the admin check.

Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, which
cost more than a third of the CPU of a contribution request under load.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.admission import BytesInFlight, RejectBudget
from services.ingest.domain import client_ip
from services.ingest.handlers import ContributionService
from services.ingest.imagepool import ImagePool
from services.ingest.readmodels import ReadModels
from services.ingest.settings import IngestSettings
from shared.broker import EventPublisher
from shared.topology import Topology


@dataclass
class Runtime:
    """Everything the routes need, built once per process by ``services.ingest.bootstrap``."""

    settings: IngestSettings
    topology: Topology
    publisher: EventPublisher
    service: ContributionService
    read_models: ReadModels
    engine: AsyncEngine
    images: ImagePool
    rejects: RejectBudget
    in_flight: BytesInFlight
    monotonic: Callable[[], float]

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        return client_ip(peer, forwarded_for, self.settings.trusted_proxies)


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_client_ip(request: Request, runtime: RuntimeDep) -> str:
    return runtime.client_ip(
        request.client.host if request.client else None, request.headers.get("x-forwarded-for")
    )


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
