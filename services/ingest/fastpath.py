"""The contribution POSTs without FastAPI's per-request machinery: a pure ASGI middleware.

Why: these routes are the whole load of ingest, and on a 2-core machine FastAPI's request handling (routing,
dependency resolution, ``json.loads`` then validation of the Python objects, response rendering) cost about as
much CPU as checking the PNG and publishing it. Here a well-formed JSON body is validated by pydantic straight
from the bytes and handed to the same ``ContributionEndpoint.accept`` the FastAPI routes call; the answer is the
same bytes FastAPI's ``JSONResponse`` would send. ``benchmarks/ingest_load.py`` measures the difference.

It also bounds what any request may cost before it is read (``_BodyGate``, for every HTTP request, FastAPI's
routes included): the bytes of requests a worker holds stay under ``WARP_MAX_BYTES_IN_FLIGHT`` (503 with
``Retry-After``, by the declared Content-Length before a byte is read, or as the body arrives), and a body
must arrive within ``WARP_BODY_READ_TIMEOUT_SECONDS`` (408: a slow-loris body holds nothing for long). For a
contribution POST, whatever its content type: an origin whose reject budget is spent is answered 429 unread
(after a delay, see ``_budget_spent``); a
body longer than the route's ``max_body_bytes`` is answered 413 (with the limit) before it is buffered, by its
Content-Length when declared; 413, 408 and 422 answers are charged to the origin's reject budget.

What it does not take goes to FastAPI unchanged, so the documented behaviour has one source: any other path or
method, a body that is not ``application/json``, and a body that fails the schema (FastAPI re-reads it from a
replay and answers its usual 422 naming the field). Unexpected errors propagate to Starlette's
``ServerErrorMiddleware`` (a logged 500), as they would from a route.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from fastapi import HTTPException
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.ingest import errors, metrics
from services.ingest.admission import BudgetSpent, BytesInFlight, Overloaded
from services.ingest.contributions import CONTRIBUTION_ENDPOINTS, ContributionEndpoint
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


class BodyRefused(HTTPException):
    """A body refused while it is read. An ``HTTPException``, so that FastAPI's routes, which turn any other
    error of a body read into a 400, answer it as it is (``{"detail"}``, its status and headers)."""

    def __init__(
        self, status: int, detail: str, content: dict, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, detail, headers)
        self.content = content


def _too_large(endpoint: ContributionEndpoint) -> BodyRefused:
    detail = f"request body too large: the limit of {endpoint.path} is {endpoint.max_body_bytes} bytes"
    return BodyRefused(413, detail, {"detail": detail, "limit": endpoint.max_body_bytes})


def _declared_length(scope: Scope) -> int | None:
    declared = _header(scope, b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


class _BodyGate:
    """One request's body against the worker's bounds: its bytes are held in ``BytesInFlight`` as they arrive,
    until ``release``, and the whole body must have arrived ``timeout`` seconds after the request began.

    A declared length is checked against the room left but not reserved: a slow body that declares 100 MiB and
    trickles holds what it sent, not what it promised, so slow clients cannot fill the worker's room with
    promises (the read timeout ends them)."""

    def __init__(self, runtime: Runtime, declared: int | None) -> None:
        self._in_flight: BytesInFlight = runtime.in_flight
        self._monotonic = runtime.monotonic
        settings = runtime.settings
        # A long body on a slow uplink is honest: it is given time for its declared length at the slowest rate
        # allowed; a slow body holds only what it sent meanwhile, and the proxy bounds connections per client.
        self._timeout = settings.body_read_timeout_seconds + round(
            (declared or 0) / settings.body_min_bytes_per_second, 1
        )
        self._deadline = self._monotonic() + self._timeout
        self._held = 0
        self._complete = False
        if declared:
            self._refused_when_busy(self._in_flight.ensure_room, declared)

    @staticmethod
    def _refused_when_busy(step: Callable[[int], None], size: int) -> None:
        try:
            step(size)
        except Overloaded as busy:
            metrics.UNAVAILABLE.labels(busy.resource).inc()
            content = {"detail": str(busy), "resource": busy.resource}
            raise BodyRefused(503, str(busy), content, {"Retry-After": str(busy.retry_after)}) from None

    def _timed_out(self) -> BodyRefused:
        detail = f"request body not received within {self._timeout:g} seconds"
        return BodyRefused(408, detail, {"detail": detail, "limit_seconds": self._timeout})

    def receive(self, receive: Receive) -> Receive:
        async def gated() -> Message:
            if self._complete:
                return await receive()
            try:
                async with asyncio.timeout(max(self._deadline - self._monotonic(), 0)):
                    message = await receive()
            except TimeoutError:
                raise self._timed_out() from None
            if message["type"] != "http.request":
                return message
            if self._monotonic() > self._deadline:
                raise self._timed_out()
            size = len(message.get("body", b""))
            self._refused_when_busy(self._in_flight.take, size)
            self._held += size
            self._complete = not message.get("more_body", False)
            return message

        return gated

    def release(self) -> None:
        self._in_flight.give_back(self._held)
        self._held = 0


async def _read_body(receive: Receive, endpoint: ContributionEndpoint) -> bytes | None:
    """The whole request body, or None when the client disconnected first; ``BodyRefused`` (413) as soon as
    it passes the route's limit (a chunked body has no Content-Length to refuse it by)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > endpoint.max_body_bytes:
            raise _too_large(endpoint)
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


def _charging_422(send: Send, runtime: Runtime, ip: str) -> Send:
    """``send``, charging the origin's reject budget when FastAPI answers the body 422."""

    async def charging(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 422:
            runtime.rejects.charge(ip)
        await send(message)

    return charging


class ContributionFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.endpoints = {endpoint.path: endpoint for endpoint in CONTRIBUTION_ENDPOINTS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self.endpoints.get(_route_path(scope)) if scope["method"] == "POST" else None
        runtime: Runtime = scope["app"].state.runtime
        declared = _declared_length(scope)
        ip = ""
        if endpoint is not None:
            ip = self._client_ip(scope, runtime)
            if await self._budget_spent(send, runtime, ip):
                return
            if declared is not None and declared > endpoint.max_body_bytes:
                await self._refuse(send, _too_large(endpoint), endpoint, runtime, ip)
                return
        try:
            gate = _BodyGate(runtime, declared)
        except BodyRefused as refused:
            await _send_json(send, refused.status_code, refused.content, refused.headers)
            return
        try:
            if endpoint is None:
                await self.app(scope, gate.receive(receive), send)
            else:
                await self._contribution(endpoint, runtime, ip, scope, gate.receive(receive), send)
        finally:
            gate.release()

    @staticmethod
    async def _budget_spent(send: Send, runtime: Runtime, ip: str) -> bool:
        """Answer 429 when the origin's reject budget is spent, held back ``WARP_SPENT_ANSWER_DELAY_SECONDS``:
        a client that sends again as soon as it is answered then costs one cheap answer a second per
        connection instead of as many as it can make."""
        try:
            runtime.rejects.ensure_left(ip)
        except BudgetSpent as spent:
            await asyncio.sleep(runtime.settings.spent_answer_delay_seconds)
            await _send_json(send, *errors.budget_spent(spent))
            return True
        return False

    @staticmethod
    def _client_ip(scope: Scope, runtime: Runtime) -> str:
        """The client's origin key (``Runtime.origin``), from every ``X-Forwarded-For`` line in order."""
        peer = scope["client"][0] if scope.get("client") else None
        forwarded = (
            [value.decode("latin-1") for key, value in scope["headers"] if key == b"x-forwarded-for"]
            if runtime.settings.trusted_proxies
            else []
        )
        return runtime.origin(peer, forwarded)

    @staticmethod
    async def _refuse(
        send: Send, refused: BodyRefused, endpoint: ContributionEndpoint, runtime: Runtime, ip: str
    ) -> None:
        if refused.status_code in (408, 413):
            metrics.REJECTED.labels(
                endpoint.kind, "body_too_large" if refused.status_code == 413 else "body_timeout"
            ).inc()
            runtime.rejects.charge(ip)
        await _send_json(send, refused.status_code, refused.content, refused.headers)

    async def _contribution(
        self,
        endpoint: ContributionEndpoint,
        runtime: Runtime,
        ip: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        try:
            body = await _read_body(receive, endpoint)
        except BodyRefused as refused:
            await self._refuse(send, refused, endpoint, runtime, ip)
            return
        if body is None:
            return  # the client is gone: nothing was taken, nothing to answer
        if not _is_plain_json(_header(scope, b"content-type")):
            await self.app(scope, _replaying(body, receive), _charging_422(send, runtime, ip))
            return
        try:
            request = endpoint.schema.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replaying(body, receive), _charging_422(send, runtime, ip))
            return
        try:
            status, content = await endpoint.accept(request, runtime, ip)
        except errors.CONTRIBUTION_PROBLEMS as problem:
            answer = errors.contribution_problem(problem, endpoint.image_field, runtime.service.clock())
            await _send_json(send, *answer)
            return
        await _send_json(send, status, content)
