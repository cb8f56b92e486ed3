"""Every console page and action on the real database and broker: what a page shows, what an action sends and
logs."""

import uuid

import pytest
from sqlalchemy import text

from shared.events import (
    InstallModerated,
    ItemModerated,
    ReleaseApprovalRequested,
    ReleaseModeRequested,
    RollbackRequested,
    decode_event,
)
from tests.console.conftest import log_in, seed_community
from tests.utils.broker import wait_for_messages

PAGES = [
    "/console",
    "/console/review",
    "/console/installs",
    "/console/releases",
    "/console/gold",
    "/console/audit",
]


async def audit_rows(engine) -> list:
    async with engine.connect() as connection:
        return (await connection.execute(text("SELECT * FROM console_audit ORDER BY id"))).all()


async def sent(amqp_channel, topology, role: str, count: int = 1) -> list:
    messages = await wait_for_messages(amqp_channel, topology.queue(role), count)
    return [decode_event(message.body) for message in messages]


async def test_every_page_answers_and_the_review_queue_holds_the_withheld_item_not_the_settled_one(
    console, engine
):
    community = await seed_community(engine)
    await log_in(console.client)
    for path in PAGES:
        answer = await console.client.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])
        assert "RabbitMQ did not answer" not in answer.text
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    review = (await console.client.get("/console/review")).text
    assert (
        community.withheld_key in review and community.accepted_key not in review
    )  # confident: not contested
    assert f"/console/crops/{community.crop_sha}.png" in review
    crop = await console.client.get(f"/console/crops/{community.crop_sha}.png")
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    installs = (await console.client.get("/console/installs")).text
    assert installs.index("install-charlie") < installs.index("install-alpha")  # the suspected cohort first
    detail = await console.client.get("/console/installs/install-charlie")
    assert detail.status_code == 200 and "Disruptor Array" in detail.text
    item = await console.client.get("/console/item", params={"kind": "icon", "key": community.withheld_key})
    assert item.status_code == 200 and "Phaser Array" in item.text


async def test_a_decision_is_sent_to_voting_and_logged_with_before_and_after(
    console, engine, amqp_channel, topology
):
    community = await seed_community(engine)
    csrf = await log_in(console.client)
    form = {"csrf_token": csrf, "item_kind": "icon", "item_key": community.withheld_key, "note": "clear crop"}
    answer = await console.client.post(
        "/console/review/decide", data=form | {"decision": "label", "label": "Phaser Array"}
    )
    assert answer.status_code == 303
    [event] = await sent(amqp_channel, topology, "voting")
    assert isinstance(event, ItemModerated)
    assert (event.item_key, event.label, event.note) == (community.withheld_key, "Phaser Array", "clear crop")
    [row] = await audit_rows(engine)
    assert (row.action, row.subject, row.session, row.message_id) == (
        "item_decided",
        f"icon:{community.withheld_key}",
        event.moderator,
        event.message_id,
    )
    assert row.before["status"] == "withheld" and row.after["label"] == "Phaser Array"
    review = (await console.client.get("/console/review")).text
    assert "Decided by" in review
    gold = (await console.client.get("/console/gold.csv")).text.splitlines()
    assert gold[0].split(",")[:3] == ["item_kind", "item_key", "label"]
    assert gold[1].startswith(f"icon,{community.withheld_key},Phaser Array,{event.moderator},clear crop,")
    [exported] = (await console.client.get("/console/gold.json")).json()
    assert (exported["item_key"], exported["label"], exported["state"]) == (
        community.withheld_key,
        "Phaser Array",
        "sent",
    )
    counts = (await console.client.get("/console/gold")).text
    assert "sent, not applied yet" in counts


async def test_a_reject_and_a_shadow_ban_are_sent_and_logged(console, engine, amqp_channel, topology):
    community = await seed_community(engine)
    csrf = await log_in(console.client)
    form = {"csrf_token": csrf, "item_kind": "icon", "item_key": community.withheld_key, "decision": "reject"}
    assert (await console.client.post("/console/review/decide", data=form)).status_code == 303
    ban = {"csrf_token": csrf, "install_id": "install-charlie", "shadow_banned": "true"}
    assert (await console.client.post("/console/installs/ban", data=ban)).status_code == 303
    reject, banned = await sent(amqp_channel, topology, "voting", 2)
    assert isinstance(reject, ItemModerated) and reject.label is None
    assert isinstance(banned, InstallModerated) and (banned.install_id, banned.shadow_banned) == (
        "install-charlie",
        True,
    )
    assert [r.action for r in await audit_rows(engine)] == ["item_decided", "install_moderated"]
    detail = (await console.client.get("/console/installs/install-charlie")).text
    assert "shadow-banned" in detail and "Unban" in detail


async def test_a_decision_with_a_bad_field_changes_nothing(console, engine, amqp_channel, topology):
    community = await seed_community(engine)
    csrf = await log_in(console.client)
    for form in (
        {"item_kind": "icon", "item_key": community.withheld_key, "decision": "label", "label": " "},
        {"item_kind": "nope", "item_key": community.withheld_key, "decision": "reject"},
        {"item_kind": "icon", "item_key": "no-such-item", "decision": "reject"},
    ):
        answer = await console.client.post("/console/review/decide", data=form | {"csrf_token": csrf})
        assert answer.status_code in (404, 422), answer.text
    assert await audit_rows(engine) == []


@pytest.mark.parametrize(
    ("path", "form", "event_type"),
    [
        ("/console/releases/mode", {"mode": "held"}, ReleaseModeRequested),
        ("/console/releases/rollback", {"version": "v20260501-100000-000000"}, RollbackRequested),
    ],
)
async def test_release_actions_are_sent_to_the_publisher(
    console, engine, amqp_channel, topology, path, form, event_type
):
    csrf = await log_in(console.client)
    assert (await console.client.post(path, data=form | {"csrf_token": csrf})).status_code == 303
    [event] = await sent(amqp_channel, topology, "publisher")
    assert isinstance(event, event_type)
    [row] = await audit_rows(engine)
    assert row.message_id == event.message_id


async def test_only_a_held_release_can_be_approved(console, engine):
    csrf = await log_in(console.client)
    answer = await console.client.post(
        "/console/releases/approve", data={"csrf_token": csrf, "run_id": str(uuid.uuid4())}
    )
    assert answer.status_code == 409 and await audit_rows(engine) == []
    assert ReleaseApprovalRequested  # sent only for a held release: see tests/console/test_browser.py
