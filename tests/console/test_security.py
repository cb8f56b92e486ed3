"""Nothing of the console without a session of the current admin key, and no action without its CSRF token."""

import re
import uuid

import pytest
from sqlalchemy import text

from services.ingest.console.session import COOKIE, SessionKeys
from tests.console.conftest import log_in
from tests.ingest.conftest import ADMIN_KEY, memory_ingest, running_ingest

PAGES = [
    "/console",
    "/console/review",
    "/console/item?kind=icon&key=abc",
    "/console/installs",
    "/console/installs/install-alpha",
    "/console/releases",
    f"/console/runs/{uuid.UUID(int=1)}",
    f"/console/runs/{uuid.UUID(int=1)}/curve.png",
    "/console/gold",
    "/console/gold.csv",
    "/console/audit",
    f"/console/crops/{'ab' * 32}.png",
]
ACTIONS = {
    "/console/review/decide": {"item_kind": "icon", "item_key": "abc", "decision": "reject"},
    "/console/installs/ban": {"install_id": "install-alpha", "shadow_banned": "true"},
    "/console/releases/mode": {"mode": "held"},
    "/console/releases/approve": {"run_id": str(uuid.UUID(int=1))},
    "/console/releases/rollback": {"version": "v1"},
    "/console/logout": {},
}


async def test_the_console_is_off_without_an_admin_key():
    async with memory_ingest(admin_key=None) as ingest:
        for path in [*PAGES, "/console/login", "/console/static/htmx.min.js"]:
            assert (await ingest.client.get(path)).status_code == 404, path
        for path in [*ACTIONS, "/console/login"]:
            assert (await ingest.client.post(path, data={"admin_key": ADMIN_KEY})).status_code == 404, path


async def test_without_a_session_every_page_sends_to_the_login_and_every_action_is_refused():
    async with memory_ingest() as ingest:
        for path in PAGES:
            answer = await ingest.client.get(path)
            assert (answer.status_code, answer.headers.get("location")) == (303, "/console/login"), path
        for path, form in ACTIONS.items():
            assert (await ingest.client.post(path, data=form)).status_code == 401, path
        login = await ingest.client.get("/console/login")
        assert login.status_code == 200 and '<label for="admin_key">' in login.text


async def test_a_wrong_key_gets_no_session():
    async with memory_ingest() as ingest:
        answer = await ingest.client.post("/console/login", data={"admin_key": ADMIN_KEY + "x"})
        assert answer.status_code == 403 and COOKIE not in answer.cookies
        assert (await ingest.client.get("/console")).status_code == 303


async def test_the_session_cookie_is_signed_httponly_strict_and_expires():
    async with memory_ingest(console_session_minutes=30) as ingest:
        answer = await ingest.client.post("/console/login", data={"admin_key": ADMIN_KEY})
        header = answer.headers["set-cookie"]
        assert re.search(r"; HttpOnly", header, re.I) and re.search(r"; SameSite=strict", header, re.I)
        assert "Max-Age=1800" in header and "expires=" in header.lower() and "Path=/console" in header
        cookie = answer.cookies[COOKIE]
        assert ADMIN_KEY not in cookie
        assert SessionKeys(ADMIN_KEY).session(cookie, ingest.clock()) is not None
        ingest.clock.advance(seconds=30 * 60)
        assert (await ingest.client.get("/console")).status_code == 303  # expired


@pytest.mark.parametrize("secure", [False, True])
async def test_the_cookie_is_secure_when_configured(secure):
    async with memory_ingest(console_secure_cookie=secure) as ingest:
        answer = await ingest.client.post("/console/login", data={"admin_key": ADMIN_KEY})
        assert ("; secure" in answer.headers["set-cookie"].lower()) is secure


async def test_a_cookie_issued_under_a_rotated_admin_key_is_refused(ingest_settings):
    async with running_ingest(**ingest_settings) as before:
        await log_in(before.client)
        cookie = before.client.cookies[COOKIE]
    async with running_ingest(**ingest_settings | {"admin_key": ADMIN_KEY + "-rotated"}) as after:
        after.client.cookies.set(COOKIE, cookie, path="/console")
        assert (await after.client.get("/console/review")).status_code == 303
        assert (await after.client.post("/console/releases/mode", data={"mode": "held"})).status_code == 401


async def test_an_action_without_its_sessions_csrf_token_is_refused_and_changes_nothing(console, engine):
    csrf = await log_in(console.client)
    for path, form in ACTIONS.items():
        for token in (None, "0" * 64, csrf[:-1]):
            data = form if token is None else form | {"csrf_token": token}
            answer = await console.client.post(path, data=data)
            assert answer.status_code == 403, (path, token, answer.text)
    assert (await console.client.get("/console/review")).status_code == 200  # still logged in
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM console_audit")) == 0


async def test_every_form_input_is_labelled(console):
    await log_in(console.client)
    for path in ["/console/review", "/console/installs", "/console/releases"]:
        html = (await console.client.get(path)).text
        for tag in re.findall(r"<(?:input|select)\b[^>]*>", html):
            if 'type="hidden"' in tag:
                continue
            assert f'for="{_id(tag)}"' in html, (path, tag)


def _id(tag: str) -> str:
    match = re.search(r'id="([^"]+)"', tag)
    assert match, f"an input without an id cannot have a label: {tag}"
    return match.group(1)
