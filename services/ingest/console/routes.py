"""The console's HTTP entrypoints: each page reads through ``PostgresConsoleReads``, each action sends the owner's
command event (as /admin does) and logs it in ``console_audit``. Nothing answers while no admin key is set
(404); without a session a page redirects to the login and an action is refused (401); an action without its
session's CSRF token is refused (403)."""

from __future__ import annotations

import contextlib
import pathlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from services.ingest.console import plots, views
from services.ingest.console.hourly import HourlyCounts
from services.ingest.console.progress import ProgressFollower
from services.ingest.console.queues import QueueDepths
from services.ingest.console.session import COOKIE, Session, SessionKeys
from services.ingest.dependencies import Runtime, RuntimeDep
from services.ingest.routes import _publish_command
from services.ingest.store import PostgresConsoleReads
from shared.events import (
    Event,
    InstallModerated,
    ItemModerated,
    ReleaseApprovalRequested,
    ReleaseModeRequested,
    RollbackRequested,
)
from shared.reads import UNFINISHED_RUN_STATUSES

HERE = pathlib.Path(__file__).parent
PAGE_SIZE = 20
ITEM_KINDS = ("icon", "knowledge", "screen", "ocr", "anchor")
# Vendored files, read once: the console loads nothing from elsewhere.
STATIC = {
    "htmx.min.js": ((HERE / "static" / "htmx.min.js").read_bytes(), "text/javascript"),
    "console.css": ((HERE / "static" / "console.css").read_bytes(), "text/css"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

templates = Jinja2Templates(directory=HERE / "templates")


@dataclass
class ConsoleState:
    """What the console keeps per ingest process: live training progress, settled hourly counts."""

    progress: ProgressFollower
    hourly: HourlyCounts
    queues: QueueDepths


@contextlib.asynccontextmanager
async def console_lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime = app.state.runtime
    reads = PostgresConsoleReads(runtime.engine)
    app.state.console = state = ConsoleState(
        ProgressFollower(runtime.settings.broker_url, runtime.topology.events_exchange),
        HourlyCounts(reads.contributions_by_hour, timedelta(days=views.DAYS_SHOWN)),
        QueueDepths(runtime.settings.broker_url, runtime.topology),
    )
    try:
        yield
    finally:
        await state.progress.stop()
        await state.queues.close()


router = APIRouter(prefix="/console", include_in_schema=False, lifespan=console_lifespan)


async def console_keys(runtime: RuntimeDep) -> SessionKeys:
    if runtime.settings.admin_key is None:
        raise HTTPException(404, "the console is off: set WARP_ADMIN_KEY to enable it")
    return SessionKeys(runtime.settings.admin_key.get_secret_value())


KeysDep = Annotated[SessionKeys, Depends(console_keys)]


@dataclass
class Console:
    """A request inside a session."""

    runtime: Runtime
    keys: SessionKeys
    session: Session
    reads: PostgresConsoleReads

    @property
    def csrf(self) -> str:
        return self.keys.csrf_token(self.session)


async def console_session(request: Request, runtime: RuntimeDep, keys: KeysDep) -> Console:
    session = keys.session(request.cookies.get(COOKIE), runtime.service.clock())
    if session is None:
        if request.method in ("GET", "HEAD"):
            raise HTTPException(303, "log in first", headers={"Location": "/console/login"})
        raise HTTPException(401, "no console session: log in at /console/login")
    return Console(runtime, keys, session, PostgresConsoleReads(runtime.engine))


ConsoleDep = Annotated[Console, Depends(console_session)]


async def checked_form(request: Request, console: ConsoleDep) -> Console:
    """An action's session, once its form carried the session's CSRF token."""
    form = await request.form()
    token = form.get("csrf_token")
    if not console.keys.csrf_ok(console.session, token if isinstance(token, str) else None):
        raise HTTPException(403, "the form's CSRF token is missing or not this session's: reload the page")
    return console


ActionDep = Annotated[Console, Depends(checked_form)]


def page(
    request: Request, console: Console | None, name: str, status: int = 200, **context: Any
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        name,
        {
            "csrf": console.csrf if console else None,
            "moderator": console.session.moderator if console else None,
        }
        | context,
        status_code=status,
        headers=SECURITY_HEADERS,
    )
    return response


def back(to: str) -> RedirectResponse:
    return RedirectResponse(to, status_code=303, headers=SECURITY_HEADERS)


async def act(
    console: Console, action: str, subject: str, before: dict[str, Any], after: dict[str, Any], event: Event
) -> None:
    """Log the action and send its event; the log row commits only once the broker confirmed the event."""
    async with console.reads.audited(
        console.session.moderator, action, subject, before, after, event.message_id
    ):
        await _publish_command(console.runtime, event)


# --- login ------------------------------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str, keys: KeysDep) -> Response:
    if name not in STATIC:
        raise HTTPException(404, f"no console file {name!r}")
    body, media_type = STATIC[name]
    return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=3600"})


@router.get("/login")
async def login_page(request: Request, keys: KeysDep) -> HTMLResponse:
    return page(request, None, "login.html")


@router.post("/login")
async def login(
    request: Request,
    runtime: RuntimeDep,
    keys: KeysDep,
    admin_key: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    if not keys.admits(admin_key):
        return page(request, None, "login.html", status=403, error="That is not the admin key.")
    settings = runtime.settings
    expires = runtime.service.clock() + timedelta(minutes=settings.console_session_minutes)
    _, cookie = keys.issue(expires)
    response = back("/console")
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=settings.console_session_minutes * 60,
        expires=expires,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=settings.console_secure_cookie,
    )
    return response


@router.post("/logout")
async def logout(console: ActionDep) -> Response:
    response = back("/console/login")
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return response


# --- pages ------------------------------------------------------------------------------------------------------


@router.get("")
async def overview(request: Request, console: ConsoleDep) -> HTMLResponse:
    now = console.runtime.service.clock()
    state: ConsoleState = request.app.state.console
    data = await console.reads.overview()
    counts = await state.hourly.get(now)
    (hour_labels, hourly), (day_labels, daily) = views.contribution_series(counts, now)
    run = data["run"]
    live = state.progress.start().latest()
    return page(
        request,
        console,
        "overview.html",
        hourly=plots.stacked_bars("Contributions per hour (UTC), by kind", hour_labels, hourly),
        daily=plots.stacked_bars("Contributions per day (UTC), by kind", day_labels, daily),
        consensus=views.consensus_table(data["consensus"]),
        release=data["release"],
        run=run,
        training=run is not None and run.status in UNFINISHED_RUN_STATUSES,
        live=live,
        live_plot=plots.epoch_lines("Held-out accuracy by epoch (live)", live[1]) if live else None,
        queues=await state.queues.read(),
    )


@router.get("/review")
async def review(
    request: Request,
    console: ConsoleDep,
    kind: Annotated[str | None, Query(pattern="^(icon|knowledge|screen|ocr|anchor)$")] = None,
    page_number: Annotated[int, Query(alias="page", ge=1, le=10_000)] = 1,
) -> HTMLResponse:
    items = await console.reads.review_queue(kind, PAGE_SIZE, (page_number - 1) * PAGE_SIZE)
    return page(
        request,
        console,
        "review.html",
        items=[_card(entry) for entry in items],
        kind=kind,
        kinds=ITEM_KINDS,
        page_number=page_number,
        more=len(items) == PAGE_SIZE,
    )


def _card(entry: dict[str, Any]) -> dict[str, Any]:
    return entry | {
        "summary": views.vote_summary(entry["votes"]),
        "guesses": views.model_guesses(entry["votes"]),
        "evidence": views.evidence_lines(entry["item"]),
    }


@router.get("/item")
async def item_page(
    request: Request,
    console: ConsoleDep,
    kind: Annotated[str, Query(pattern="^(icon|knowledge|screen|ocr|anchor)$")],
    key: Annotated[str, Query(min_length=1, max_length=2000)],
) -> HTMLResponse:
    entry = await console.reads.item(kind, key)
    if entry is None:
        raise HTTPException(404, f"no consensus for {kind} item {key!r}")
    history = await console.reads.audit(f"{kind}:{key}", limit=20)
    return page(request, console, "item.html", entry=_card(entry), history=history)


@router.post("/review/decide")
async def decide(
    console: ActionDep,
    item_kind: Annotated[str, Form(pattern="^(icon|knowledge|screen|ocr|anchor)$")],
    item_key: Annotated[str, Form(min_length=1, max_length=2000)],
    decision: Annotated[str, Form(pattern="^(label|reject)$")],
    label: Annotated[str, Form(max_length=300)] = "",
    note: Annotated[str, Form(max_length=500)] = "",
    back_to: Annotated[str, Form(pattern="^/console")] = "/console/review",
) -> Response:
    label = label.strip()
    if decision == "label" and not label:
        raise HTTPException(422, "label: give the label the item carries, or reject it")
    entry = await console.reads.item(item_kind, item_key)
    if entry is None:
        raise HTTPException(404, f"no consensus for {item_kind} item {item_key!r}")
    event = ItemModerated(
        item_kind=item_kind,
        item_key=item_key,
        label=label if decision == "label" else None,
        moderator=console.session.moderator,
        note=note.strip(),
    )
    before = {k: entry["item"].get(k) for k in ("status", "label", "support", "confidence")}
    after = {"item_kind": item_kind, "item_key": item_key, "label": event.label, "note": event.note}
    await act(console, "item_decided", f"{item_kind}:{item_key}", before, after, event)
    return back(back_to)


@router.get("/installs")
async def installs(
    request: Request,
    console: ConsoleDep,
    q: Annotated[str, Query(max_length=64, pattern="^[A-Za-z0-9_-]*$")] = "",
    page_number: Annotated[int, Query(alias="page", ge=1, le=10_000)] = 1,
) -> HTMLResponse:
    rows = await console.reads.installs(q or None, PAGE_SIZE, (page_number - 1) * PAGE_SIZE)
    for row in rows:
        row["banned"] = views.is_banned(row["ban"], row["requested"])
    return page(
        request,
        console,
        "installs.html",
        installs=rows,
        q=q,
        page_number=page_number,
        more=len(rows) == PAGE_SIZE,
    )


@router.get("/installs/{install_id}")
async def install_page(request: Request, console: ConsoleDep, install_id: str) -> HTMLResponse:
    detail = await console.reads.install(install_id)
    detail["banned"] = views.is_banned(detail["ban"], detail["requested"])
    history = await console.reads.audit(install_id, limit=20)
    return page(request, console, "install.html", install=detail, history=history)


@router.post("/installs/ban")
async def ban(
    console: ActionDep,
    install_id: Annotated[str, Form(min_length=1, max_length=64, pattern="^[A-Za-z0-9_-]+$")],
    shadow_banned: Annotated[bool, Form()],
    note: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    detail = await console.reads.install(install_id)
    event = InstallModerated(
        install_id=install_id,
        shadow_banned=shadow_banned,
        moderator=console.session.moderator,
        note=note.strip(),
    )
    before = {"shadow_banned": views.is_banned(detail["ban"], detail["requested"])}
    after = {"shadow_banned": shadow_banned, "note": event.note}
    await act(console, "install_moderated", install_id, before, after, event)
    return back(f"/console/installs/{install_id}")


@router.get("/releases")
async def releases(request: Request, console: ConsoleDep) -> HTMLResponse:
    data = await console.reads.releases()
    return page(
        request,
        console,
        "releases.html",
        **data,
        mode_name=data["mode"].mode if data["mode"] else "automatic",
    )


@router.get("/runs/{run_id}/{artifact}")
async def run_artifact(console: ConsoleDep, run_id: uuid.UUID, artifact: str) -> Response:
    paths = {"curve.png": "models/training_curve.png", "per_class.json": "models/per_class_accuracy.json"}
    if artifact not in paths:
        raise HTTPException(404, f"no run artifact {artifact!r}; known: {sorted(paths)}")
    data = await console.reads.run_file(run_id, paths[artifact])
    if data is None:
        raise HTTPException(404, f"training run {run_id} has no {paths[artifact]}")
    if artifact == "curve.png" and not data.startswith(PNG_SIGNATURE):
        raise HTTPException(404, "the run's curve is not a PNG")
    media_type = "image/png" if artifact.endswith(".png") else "application/json"
    return Response(data, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/runs/{run_id}")
async def run_page(request: Request, console: ConsoleDep, run_id: uuid.UUID) -> HTMLResponse:
    run = await console.reads.run(run_id)
    if run is None:
        raise HTTPException(404, f"no training run {run_id}")
    per_class = await console.reads.run_file(run_id, "models/per_class_accuracy.json")
    return page(request, console, "run.html", run=run, per_class=views.per_class_rows(per_class))


@router.post("/releases/mode")
async def release_mode(
    console: ActionDep, mode: Annotated[str, Form(pattern="^(automatic|held)$")]
) -> Response:
    before = await console.reads.releases()
    event = ReleaseModeRequested(mode=mode, requested_by=console.session.moderator)
    was = before["mode"].mode if before["mode"] else "automatic"
    await act(console, "release_mode", "release_mode", {"mode": was}, {"mode": mode}, event)
    return back("/console/releases")


@router.post("/releases/approve")
async def approve(console: ActionDep, run_id: Annotated[uuid.UUID, Form()]) -> Response:
    data = await console.reads.releases()
    held = next((r for r in data["releases"] if r.run_id == run_id and r.rollback_of is None), None)
    if held is None or held.status != "held":
        raise HTTPException(409, f"training run {run_id} has no held release to approve")
    event = ReleaseApprovalRequested(run_id=run_id, requested_by=console.session.moderator)
    await act(console, "release_approved", held.version, {"status": "held"}, {"run_id": run_id}, event)
    return back("/console/releases")


@router.post("/releases/rollback")
async def rollback(
    console: ActionDep, version: Annotated[str, Form(min_length=1, max_length=64)]
) -> Response:
    data = await console.reads.releases()
    current = data["current"].version if data["current"] else None
    event = RollbackRequested(target_version=version, requested_by=console.session.moderator)
    await act(console, "rollback", version, {"current": current}, {"target_version": version}, event)
    return back("/console/releases")


@router.get("/gold")
async def gold(request: Request, console: ConsoleDep) -> HTMLResponse:
    counts = await console.reads.gold_counts()
    return page(request, console, "gold.html", counts=counts, total=sum(row.n for row in counts))


@router.get("/gold.{form}")
async def gold_export(console: ConsoleDep, form: str) -> Response:
    if form not in ("csv", "json"):
        raise HTTPException(404, "the gold set exports as gold.csv or gold.json")
    headers = SECURITY_HEADERS | {"Content-Disposition": f'attachment; filename="warp-gold.{form}"'}
    media_type = "text/csv" if form == "csv" else "application/json"
    return Response(await console.reads.gold(form), media_type=media_type, headers=headers)


@router.get("/audit")
async def audit(request: Request, console: ConsoleDep) -> HTMLResponse:
    return page(request, console, "audit.html", rows=await console.reads.audit(limit=200))


@router.get("/crops/{sha256}.png")
async def crop(console: ConsoleDep, sha256: Annotated[str, Path(pattern="^[0-9a-f]{64}$")]) -> Response:
    """A contributed image (crops and screenshots are PNGs; nothing else in the blob store is served)."""
    data = await console.reads.blob(sha256)
    if data is None or not data.startswith(PNG_SIGNATURE):
        raise HTTPException(404, f"no image {sha256}")
    return Response(
        data, media_type="image/png", headers=SECURITY_HEADERS | {"Cache-Control": "private, max-age=3600"}
    )
