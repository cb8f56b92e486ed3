"""Voting's operator routes on its ops port (beside ``/health`` and ``/metrics``; internal, never published to
clients): why an item is accepted or withheld, how much an install is trusted and why, and a full recompute."""

from __future__ import annotations

import json
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.voting.domain.tally import ITEM_KINDS


class Explainer(Protocol):
    async def item(self, kind: str, key: str) -> dict[str, Any] | None: ...

    async def install(self, install_id: str) -> dict[str, Any] | None: ...


class Recomputer(Protocol):
    async def recompute(self) -> Any: ...


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status_code=status, media_type="application/json")


def ops_routes(explainer: Explainer, refresher: Recomputer) -> list[BaseRoute]:
    async def item(request: Request) -> Response:
        kind, key = request.path_params["kind"], request.path_params["key"]
        if kind not in ITEM_KINDS:
            return JSONResponse({"detail": f"item kind must be one of {list(ITEM_KINDS)}"}, status_code=404)
        found = await explainer.item(kind, key)
        return _json(found) if found else JSONResponse({"detail": "no such item"}, status_code=404)

    async def install(request: Request) -> Response:
        found = await explainer.install(request.path_params["install_id"])
        return _json(found) if found else JSONResponse({"detail": "no such install"}, status_code=404)

    async def recompute(request: Request) -> Response:
        outcome = await refresher.recompute()
        return _json(outcome.stats)

    return [
        Route("/admin/items/{kind}/{key:path}", item),
        Route("/admin/installs/{install_id}", install),
        Route("/admin/recompute", recompute, methods=["POST"]),
    ]
