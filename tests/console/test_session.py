"""Console sessions and CSRF tokens as pure functions of the admin key and the time."""

from datetime import UTC, datetime, timedelta

from services.ingest.console.session import SessionKeys

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
KEY = "console-test-admin-key-0001"


def test_a_cookie_carries_its_session_until_it_expires():
    keys = SessionKeys(KEY)
    session, cookie = keys.issue(NOW + timedelta(hours=1))
    assert keys.session(cookie, NOW) == session
    assert keys.session(cookie, NOW + timedelta(minutes=59)) == session
    assert keys.session(cookie, NOW + timedelta(hours=1)) is None


def test_a_cookie_issued_under_a_rotated_admin_key_is_refused():
    _, cookie = SessionKeys(KEY).issue(NOW + timedelta(hours=1))
    assert SessionKeys(KEY + "-rotated").session(cookie, NOW) is None


def test_a_forged_or_tampered_cookie_is_refused():
    keys = SessionKeys(KEY)
    _, cookie = keys.issue(NOW + timedelta(hours=1))
    payload, _, signature = cookie.rpartition(".")
    assert keys.session(payload + "." + signature[::-1], NOW) is None
    assert keys.session("", NOW) is None and keys.session(None, NOW) is None
    assert keys.session("not-a-cookie", NOW) is None


def test_a_csrf_token_belongs_to_one_session_and_one_key():
    keys = SessionKeys(KEY)
    one, _ = keys.issue(NOW + timedelta(hours=1))
    other, _ = keys.issue(NOW + timedelta(hours=1))
    token = keys.csrf_token(one)
    assert keys.csrf_ok(one, token)
    assert not keys.csrf_ok(other, token)
    assert not keys.csrf_ok(one, None) and not keys.csrf_ok(one, "")
    assert not SessionKeys(KEY + "-rotated").csrf_ok(one, token)


def test_only_the_admin_key_logs_in():
    keys = SessionKeys(KEY)
    assert keys.admits(KEY) and not keys.admits(KEY[:-1]) and not keys.admits("")
