"""The contribution POSTs without FastAPI's per-request machinery: a pure ASGI middleware.

Why: these routes are the whole load of ingest, and on a 2-core machine FastAPI's request handling (routing,
dependency resolution, ``json.loads`` then validation of the Python objects, response rendering) cost about as
much CPU as checking the PNG and publishing it. Here a well-formed JSON body is validated by pydantic straight
from the bytes and handed to the same ``ContributionEndpoint.accept`` the FastAPI routes call; the answer is the
same bytes FastAPI's ``JSONResponse`` would send. ``benchmarks/ingest_load.py`` measures the difference.

It also bounds the body of every contribution POST, whatever its content type: a body longer than the route's
``max_body_bytes`` is answered 413 (with the limit) before it is buffered, by its Content-Length when declared.

What it does not take goes to FastAPI unchanged, so the documented behaviour has one source: any other path or
method, a body that is not ``application/json``, and a body that fails the schema (FastAPI re-reads it from a
replay and answers its usual 422 naming the field). Unexpected errors propagate to Starlette's
``ServerErrorMiddleware`` (a logged 500), as they would from a route.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest import errors, metrics
from services.ingest.contributions import CONTRIBUTION_ENDPOINTS
from services.ingest.dependencies import Runtime

_JSON_HEADER = (b"content-type", b"application/json")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _route_path(scope: Scope) -> str:
    """The path the routes match: without the ``root_path`` prefix when served under one (as Starlette does)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def _is_plain_json(content_type: bytes | None) -> bool:
    """``application/json``, with parameters or not. (FastAPI also parses ``+json`` types, and answers 422 to a
    body without a content type; those rare requests take the FastAPI route.)"""
    if content_type is None:
        return False
    return content_type.partition(b";")[0].strip().lower() == b"application/json"


class BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None when the client disconnected first; ``BodyTooLarge`` as soon as it
    passes ``limit`` (a chunked body has no Content-Length to refuse it by)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out the already-read body once, then defers to the real one."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, content: dict, headers: dict[str, str] | None = None) -> None:
    """What ``starlette.responses.JSONResponse(content, status, headers)`` sends."""
    body = json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()
    raw_headers = [(b"content-length", str(len(body)).encode()), _JSON_HEADER]
    raw_headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class ContributionFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.endpoints = {endpoint.path: endpoint for endpoint in CONTRIBUTION_ENDPOINTS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self.endpoints.get(_route_path(scope))
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        try:
            if declared is not None and int(declared) > endpoint.max_body_bytes:
                raise BodyTooLarge
            body = await _read_body(receive, endpoint.max_body_bytes)
        except BodyTooLarge:
            metrics.REJECTED.labels(endpoint.kind, "body_too_large").inc()
            detail = (
                f"request body too large: the limit of {endpoint.path} is {endpoint.max_body_bytes} bytes"
            )
            await _send_json(send, 413, {"detail": detail, "limit": endpoint.max_body_bytes})
            return
        if body is None:
            return  # the client is gone: nothing was taken, nothing to answer
        if not _is_plain_json(_header(scope, b"content-type")):
            await self.app(scope, _replaying(body, receive), send)
            return
        try:
            request = endpoint.schema.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replaying(body, receive), send)
            return
        runtime: Runtime = scope["app"].state.runtime
        peer = scope["client"][0] if scope.get("client") else None
        forwarded = _header(scope, b"x-forwarded-for") if runtime.settings.trusted_proxies else None
        ip = runtime.client_ip(peer, forwarded.decode("latin-1") if forwarded else None)
        try:
            status, content = await endpoint.accept(request, runtime, ip)
        except errors.CONTRIBUTION_PROBLEMS as problem:
            answer = errors.contribution_problem(problem, endpoint.image_field, runtime.service.clock())
            await _send_json(send, *answer)
            return
        await _send_json(send, status, content)
