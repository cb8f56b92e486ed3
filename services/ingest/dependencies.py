"""What a request needs, resolved per request: the process's ``Runtime``, the client's origin, the admin check.

Dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, which
cost more than a third of the CPU of a contribution request under load.
"""

from __future__ import annotations

import functools
import hmac
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.admission import BytesInFlight, RejectBudget
from services.ingest.domain import client_address, origin_key, origin_network
from services.ingest.handlers import ContributionService
from services.ingest.imagepool import ImagePool
from services.ingest.readmodels import ReadModels
from services.ingest.settings import IngestSettings
from shared.broker import EventPublisher
from shared.topology import Topology

ORIGINS_REMEMBERED = 16_384


@dataclass
class Runtime:
    """Everything the routes need, built once per process by ``services.ingest.bootstrap``."""

    settings: IngestSettings
    topology: Topology
    publisher: EventPublisher
    service: ContributionService
    read_models: ReadModels
    engine: AsyncEngine
    images: dict[str, ImagePool]  # by lane: crops, screens
    rejects: RejectBudget
    in_flight: BytesInFlight
    monotonic: Callable[[], float]

    origin_secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        # Parsing addresses and keying the hash is a tenth of a contribution's CPU in ingest; a client sends
        # from the same address again and again. Bounded: varying headers can only evict, never grow it.
        self._known_origins = functools.lru_cache(maxsize=ORIGINS_REMEMBERED)(self._origin)
        self._voices: OrderedDict[str, str] = OrderedDict()  # origin key -> voice key, as recently resolved

    def origin(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        """The key the client's quotas are counted under (``domain.origin_key``), from the TCP peer and the
        ``X-Forwarded-For`` header lines in order; the address itself goes no further."""
        quota, voice = self._known_origins(peer, tuple(forwarded_for))
        self._voices[quota] = voice  # kept in the order of use, like the cache above
        self._voices.move_to_end(quota)
        if len(self._voices) > ORIGINS_REMEMBERED:
            self._voices.popitem(last=False)
        return quota

    def voice(self, origin: str) -> str | None:
        """The origin's voice in consensus (``domain.origin_key`` of the client's /24 or /64, by default) that
        ingest puts into each contribution event; None for an origin this worker has not seen lately."""
        return self._voices.get(origin)

    def _origin(self, peer: str | None, forwarded_for: tuple[str, ...]) -> tuple[str, str]:
        settings = self.settings
        address = client_address(peer, forwarded_for, settings.trusted_proxies, settings.trusted_proxy_hops)
        if address is None:
            key = origin_key(None, self.origin_secret)
            return key, key
        network = origin_network(address, settings.origin_ipv4_prefix, settings.origin_ipv6_prefix)
        key = origin_key(network, self.origin_secret)
        voice = origin_network(address, settings.voice_ipv4_prefix, settings.voice_ipv6_prefix)
        # a quota origin wider than the voice's network speaks for all of it (one key, one voice)
        return key, key if voice.prefixlen > network.prefixlen else origin_key(voice, self.origin_secret)


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_origin(request: Request, runtime: RuntimeDep) -> str:
    forwarded_for = request.headers.getlist("x-forwarded-for") if runtime.settings.trusted_proxies else []
    return runtime.origin(request.client.host if request.client else None, forwarded_for)


OriginDep = Annotated[str, Depends(get_origin)]


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
