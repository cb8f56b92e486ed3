"""The contribution endpoints against the real broker and database."""

import asyncio
import hashlib
import io
import json
from collections import Counter

import pytest
from PIL import Image
from sqlalchemy import text

from services.ingest.routes import ANCHORS, BULK_CROPS, CONTRIBUTE, SCREEN_TYPES, ContributionEndpoint
from shared.events import decode_event
from tests.ingest.conftest import b64, crop, running_ingest
from tests.utils.broker import queue_depth, wait_for_messages
from tests.utils.images import make_png

INSTALL = "install-0001"


def knowledge_body(seed: int = 0, **overrides) -> dict:
    body = {
        "install_id": INSTALL,
        "phash": "0123456789abcdef",
        "crop_png_b64": crop(seed),
        "item_name": "Phaser Array",
        "wrong_name": "Phaser Beam",
        "confirmed": True,
        "warp_version": "2.4.1",
        "timestamp": "2026-11-22T10:00:00",
    }
    return body | overrides


def bulk_body(items: list[dict], install_id: str = INSTALL) -> dict:
    return {"install_id": install_id, "items": items}


def icon_item(seed: int = 0, **overrides) -> dict:
    return {
        "slot": "Fore Weapon",
        "name": "Phaser Array",
        "crop_png_b64": crop(seed),
        "ml_name": "Phaser",
    } | overrides


async def counters(engine) -> dict:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT scope, subject, count FROM rate_limit_counters"))
        return {(row.scope, row.subject): row.count for row in rows}


async def assert_nothing_published(amqp_channel, topology):
    await asyncio.sleep(0.2)
    assert await queue_depth(amqp_channel, topology.queue("voting")) == 0


async def test_contribute_accepts_publishes_and_answers_the_message_id(ingest, amqp_channel, topology):
    body = knowledge_body()
    response = await ingest.client.post("/contribute", json=body | {"unknown_field": 1})
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    event = decode_event(message.body)
    assert message.message_id == event.message_id == answer["contribution_id"]
    png = make_png(64, 64, 0)
    assert event.png == png
    assert event.crop_sha256 == hashlib.sha256(png).hexdigest()
    assert (event.phash, event.item_name, event.wrong_name) == (
        "0123456789abcdef",
        "Phaser Array",
        "Phaser Beam",
    )
    assert event.install_id == INSTALL


async def test_a_resend_gets_the_same_id_and_the_same_message_id(ingest, amqp_channel, topology):
    first = await ingest.client.post("/contribute", json=knowledge_body())
    again = await ingest.client.post("/contribute", json=knowledge_body())
    other = await ingest.client.post("/contribute", json=knowledge_body(item_name="Torpedo"))
    assert first.status_code == again.status_code == other.status_code == 200
    assert (
        first.json()["contribution_id"] == again.json()["contribution_id"] != other.json()["contribution_id"]
    )
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), 3)
    assert [m.message_id for m in messages].count(first.json()["contribution_id"]) == 2


async def test_contribute_cleans_fields_as_the_old_backend(ingest, amqp_channel, topology):
    response = await ingest.client.post(
        "/contribute", json=knowledge_body(install_id="in stall/01!", item_name="  Phaser\x07 Array ")
    )
    assert response.status_code == 200
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    event = decode_event(message.body)
    assert (event.install_id, event.item_name) == ("install01", "Phaser Array")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"phash": "0123456789ABCDEF"}, "phash"),
        ({"phash": "0123"}, "phash"),
        ({"install_id": "!!!"}, "install_id"),
        ({"install_id": "x" * 65}, "install_id"),
        ({"item_name": "\x00\x01 "}, "item_name"),
        ({"item_name": "x" * 301}, "item_name"),
        ({"crop_png_b64": "iVBORw0KGgo="}, "crop_png_b64"),
        ({"crop_png_b64": "A" * 200_001}, "crop_png_b64"),
        ({"warp_version": "1" * 21}, "warp_version"),
        ({"timestamp": "t" * 31}, "timestamp"),
        ({"confirmed": "perhaps"}, "confirmed"),
    ],
)
async def test_contribute_schema_errors_are_422_naming_the_field(
    ingest, amqp_channel, topology, engine, overrides, field
):
    response = await ingest.client.post("/contribute", json=knowledge_body(**overrides))
    assert response.status_code == 422
    assert field in {error["loc"][-1] for error in response.json()["detail"]}
    await assert_nothing_published(amqp_channel, topology)
    assert await counters(engine) == {}


async def test_a_missing_field_is_422(ingest):
    body = knowledge_body()
    del body["phash"]
    response = await ingest.client.post("/contribute", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "phash"]


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("*" * 200, "base64"),
        (b64(b"GIF89a" + bytes(range(256)) * 2), "signature"),
        (b64(make_png(seed=1)[:-60]), "truncated or corrupt"),
        (b64(make_png(seed=1)[:120]), "truncated or corrupt"),
    ],
)
async def test_a_bad_image_is_400_with_the_reason_and_spends_nothing(
    ingest, amqp_channel, topology, engine, image, reason
):
    response = await ingest.client.post("/contribute", json=knowledge_body(crop_png_b64=image))
    assert response.status_code == 400
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "crop_png_b64"]
    assert reason in problem["msg"]
    await assert_nothing_published(amqp_channel, topology)
    assert await counters(engine) == {}


async def test_a_near_uniform_crop_is_400(ingest):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 40, 40)).save(buffer, format="PNG", compress_level=0)
    response = await ingest.client.post(
        "/contribute", json=knowledge_body(crop_png_b64=b64(buffer.getvalue()))
    )
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "near_uniform"


async def test_bulk_crops_accepts_good_items_and_explains_the_rest(ingest, amqp_channel, topology):
    items = [
        icon_item(1),
        icon_item(
            2,
            slot="Ship Type",
            name="Heavy Cruiser",
            ml_name="Heavy Crulser",
            crop_png_b64=b64(make_png(120, 20, 2)),
        ),
        icon_item(3, name="__empty__"),
        icon_item(4, name="Bad\u200bName"),
        icon_item(5, slot="Ship Name"),
        icon_item(6, crop_png_b64=b64(make_png(12, 12, 6))),
        icon_item(7, slot="Ship Tier", crop_png_b64=b64(make_png(40, 30, 7))),
    ]
    response = await ingest.client.post("/contribute/bulk-crops", json=bulk_body(items))
    assert response.status_code == 200
    answer = response.json()
    assert (answer["ok"], answer["accepted"], answer["rejected"]) == (True, 2, 5)
    reasons = " | ".join(answer["rejected_reasons"])
    for words in (
        "item 2: name '__empty__' is a virtual label",
        "item 3: name contains non-printable",
        "item 4: slot 'Ship Name'",
        "item 5: image is 12x12 pixels; at least 16x16",
        "item 6: image is 40x30 pixels; at least 50x10",
    ):
        assert words in reasons
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), 2)
    events = sorted((decode_event(m.body) for m in messages), key=lambda e: e.event_type)
    assert [e.event_type for e in events] == ["contribution.icon_crop", "contribution.ocr_correction"]
    assert (events[0].slot, events[0].label, events[0].model_guess) == (
        "Fore Weapon",
        "Phaser Array",
        "Phaser",
    )
    assert (events[1].raw_text, events[1].corrected_text) == ("Heavy Crulser", "Heavy Cruiser")


async def test_bulk_crops_with_every_item_rejected_is_400_and_publishes_nothing(
    ingest, amqp_channel, topology, engine
):
    response = await ingest.client.post(
        "/contribute/bulk-crops", json=bulk_body([icon_item(1, name="__inactive__")])
    )
    assert response.status_code == 400
    assert response.json() == {
        "ok": False,
        "accepted": 0,
        "rejected": 1,
        "rejected_reasons": ["item 0: name '__inactive__' is a virtual label"],
    }
    await assert_nothing_published(amqp_channel, topology)
    assert await counters(engine) == {}


async def test_bulk_crops_reports_at_most_ten_reasons(ingest):
    items = [icon_item(i, name=f"__x{i}") for i in range(12)]
    answer = (await ingest.client.post("/contribute/bulk-crops", json=bulk_body(items))).json()
    assert answer["rejected"] == 12 and len(answer["rejected_reasons"]) == 10


@pytest.mark.parametrize(
    "body",
    [
        bulk_body([icon_item()], install_id="short"),
        bulk_body([]),
        bulk_body([icon_item(i) for i in range(51)]),
        bulk_body([icon_item(slot="")]),
        bulk_body([icon_item(name="n" * 121)]),
        bulk_body([icon_item(ml_name="m" * 121)]),
    ],
)
async def test_bulk_crops_schema_errors_are_422(ingest, body):
    assert (await ingest.client.post("/contribute/bulk-crops", json=body)).status_code == 422


async def test_screen_types_are_accepted_with_their_label(ingest, amqp_channel, topology):
    body = {
        "install_id": INSTALL,
        "screen_type": "SPACE_EQ",
        "items": [{"png_b64": b64(make_png(320, 180, 1))}, {"png_b64": "nope"}],
    }
    response = await ingest.client.post("/upload/screen-types", json=body)
    assert response.status_code == 200
    assert response.json()["accepted"] == 1 and response.json()["rejected"] == 1
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    event = decode_event(message.body)
    assert (event.event_type, event.screen_type) == ("contribution.screen_type", "SPACE_EQ")
    body["items"] = [{"png_b64": "nope"}]
    assert (await ingest.client.post("/upload/screen-types", json=body)).status_code == 400
    body["screen_type"] = "SPACE EQ"
    assert (await ingest.client.post("/upload/screen-types", json=body)).status_code == 422


def grid(**overrides) -> dict:
    slot = {"x0_rel": 0.1, "y_rel": 0.2, "w_rel": 0.05, "h_rel": 0.05, "step_rel": 0.06, "count": 4}
    return {
        "build_type": "SPACE_EQ",
        "aspect": 1.777,
        "resolution": "1920x1080",
        "slots": {"Fore Weapon": slot, "Aft Weapon": slot, "Deflector": slot},
    } | overrides


async def test_anchor_grids_are_accepted_and_validated(ingest, amqp_channel, topology):
    response = await ingest.client.post(
        "/upload/anchors", json={"install_id": INSTALL, "grids": [grid(), grid(aspect=None)]}
    )
    assert response.status_code == 200 and response.json()["accepted"] == 2
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), 2)
    assert {decode_event(m.body).event_type for m in messages} == {"contribution.anchor_grid"}
    two_slots = grid(slots={"a": grid()["slots"]["Deflector"], "b": grid()["slots"]["Deflector"]})
    assert (
        await ingest.client.post("/upload/anchors", json={"install_id": INSTALL, "grids": [two_slots]})
    ).status_code == 422
    assert (
        await ingest.client.post("/upload/anchors", json={"install_id": INSTALL, "grids": []})
    ).status_code == 422


async def test_v1_answers_a_result_and_id_per_item_in_order(ingest, amqp_channel, topology):
    items = [icon_item(1), icon_item(2, name="__empty__"), icon_item(3)]
    response = await ingest.client.post("/v1/contributions/crops", json=bulk_body(items))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), 2)
    assert {m.message_id for m in messages} == {results[0]["contribution_id"], results[2]["contribution_id"]}
    assert "virtual label" in results[1]["reason"]


async def test_every_2xx_contribution_is_in_the_queue(ingest, amqp_channel, topology):
    async def post(i):
        return await ingest.client.post(
            "/contribute/bulk-crops", json=bulk_body([icon_item(i * 3 + k) for k in range(3)])
        )

    responses = await asyncio.gather(*(post(i) for i in range(20)))
    accepted = sum(r.json()["accepted"] for r in responses if r.status_code == 200)
    assert accepted == 60
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), accepted)
    assert len({m.message_id for m in messages}) == 60


async def test_the_daily_install_quota_is_429_and_rejects_spend_none(
    ingest_settings, amqp_channel, topology, engine
):
    async with running_ingest(**ingest_settings | {"install_daily_limit": 3}) as ingest:
        assert (
            await ingest.client.post("/contribute/bulk-crops", json=bulk_body([icon_item(1), icon_item(2)]))
        ).status_code == 200
        rejected = await ingest.client.post(
            "/contribute/bulk-crops", json=bulk_body([icon_item(3, name="__x")])
        )
        assert rejected.status_code == 400
        too_many = await ingest.client.post(
            "/contribute/bulk-crops", json=bulk_body([icon_item(4), icon_item(5)])
        )
        assert too_many.status_code == 429
        assert too_many.json()["scope"] == "install" and too_many.json()["limit"] == 3
        assert 0 < int(too_many.headers["Retry-After"]) <= 86401
        assert (
            await ingest.client.post("/contribute/bulk-crops", json=bulk_body([icon_item(6)]))
        ).status_code == 200
        assert (
            await ingest.client.post("/contribute/bulk-crops", json=bulk_body([icon_item(7)]))
        ).status_code == 429
        other_install = bulk_body([icon_item(8)], install_id="install-0002")
        assert (await ingest.client.post("/contribute/bulk-crops", json=other_install)).status_code == 200
    await wait_for_messages(amqp_channel, topology.queue("voting"), 4)
    await assert_nothing_published(amqp_channel, topology)
    assert (await counters(engine))[("install", INSTALL)] == 3


async def test_the_daily_ip_quota_covers_every_install_behind_an_address(ingest_settings, engine):
    async with running_ingest(**ingest_settings | {"ip_daily_limit": 2}) as ingest:
        for n, expected in ((1, 200), (2, 200), (3, 429)):
            response = await ingest.client.post(
                "/contribute/bulk-crops", json=bulk_body([icon_item(n)], f"install-{n:04d}")
            )
            assert response.status_code == expected
        assert response.json()["scope"] == "ip"
    # the refused request took nothing from its install's quota either
    assert (await counters(engine)).get(("install", "install-0003"), 0) == 0


async def test_two_ingest_processes_share_the_quota_exactly(ingest_settings, engine):
    limit = 25
    settings = ingest_settings | {"install_daily_limit": limit}
    async with running_ingest(**settings) as first, running_ingest(**settings) as second:

        async def post(client, i):
            return (await client.post("/contribute/bulk-crops", json=bulk_body([icon_item(i)]))).status_code

        codes = await asyncio.gather(*(post((first, second)[i % 2].client, i) for i in range(60)))
    assert codes.count(200) == limit and codes.count(429) == 60 - limit
    assert (await counters(engine))[("install", INSTALL)] == limit


async def test_forwarded_for_is_believed_only_from_trusted_proxies(ingest_settings, engine):
    async with running_ingest(**ingest_settings | {"trusted_proxies": "203.0.113.0/24"}) as ingest:
        headers = {"X-Forwarded-For": "198.51.100.77"}
        assert (
            await ingest.client.post(
                "/contribute/bulk-crops", json=bulk_body([icon_item(1)]), headers=headers
            )
        ).status_code == 200
    async with running_ingest(**ingest_settings) as ingest:
        assert (
            await ingest.client.post(
                "/contribute/bulk-crops", json=bulk_body([icon_item(2)]), headers=headers
            )
        ).status_code == 200
    ips = {subject for scope, subject in await counters(engine) if scope == "ip"}
    assert ips == {"198.51.100.77", "203.0.113.7"}


async def test_broker_outage_is_503_with_retry_after_and_quota_given_back(
    ingest, amqp_channel, topology, engine
):
    await ingest.runtime.publisher.close()
    response = await ingest.client.post("/contribute", json=knowledge_body())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "broker unavailable" in response.json()["detail"]
    await assert_nothing_published(amqp_channel, topology)
    assert set((await counters(engine)).values()) <= {0}


async def test_database_outage_is_503_and_publishes_nothing(ingest_settings, amqp_channel, topology):
    async with running_ingest(
        **ingest_settings | {"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"}
    ) as ingest:
        response = await ingest.client.post("/contribute", json=knowledge_body())
    assert response.status_code == 503
    assert "database unavailable" in response.json()["detail"]
    await assert_nothing_published(amqp_channel, topology)


async def test_metrics_count_accepted_and_rejected_by_reason(ingest):
    await ingest.client.post(
        "/contribute/bulk-crops", json=bulk_body([icon_item(1), icon_item(2, name="__empty__")])
    )
    body = (await ingest.client.get("/metrics")).text
    assert 'warp_ingest_accepted_total{kind="icon_crop"}' in body
    assert 'warp_ingest_rejected_total{kind="bulk_crops",reason="virtual_label"}' in body
    assert "warp_ingest_publish_seconds_bucket" in body


async def test_logs_never_contain_image_bytes(ingest, caplog):
    body = knowledge_body(crop_png_b64=b64(make_png(seed=9)[:-50]))
    await ingest.client.post("/contribute", json=body)
    await ingest.runtime.publisher.close()
    await ingest.client.post("/contribute", json=knowledge_body())
    logged = "\n".join(
        record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records
    )
    assert knowledge_body()["crop_png_b64"][:60] not in logged
    assert body["crop_png_b64"][:60] not in logged


ENDPOINT_BODIES = {
    "/contribute": lambda i: knowledge_body(i, item_name=f"Item {i}"),
    "/contribute/bulk-crops": lambda i: bulk_body([icon_item(i)]),
    "/v1/contributions/crops": lambda i: bulk_body([icon_item(i)]),
    "/upload/screen-types": lambda i: {
        "install_id": INSTALL,
        "screen_type": "TRAITS",
        "items": [{"png_b64": b64(make_png(96, 96, i))}],
    },
    "/v1/contributions/screen-types": lambda i: {
        "install_id": INSTALL,
        "screen_type": "TRAITS",
        "items": [{"png_b64": b64(make_png(96, 96, i))}],
    },
    "/upload/anchors": lambda i: {"install_id": INSTALL, "grids": [grid(resolution=f"{i}")]},
    "/v1/contributions/anchors": lambda i: {"install_id": INSTALL, "grids": [grid(resolution=f"{i}")]},
}


@pytest.mark.parametrize("path", sorted(ENDPOINT_BODIES))
async def test_every_contribution_endpoint_answers_200_429_and_503(
    path, ingest_settings, amqp_channel, topology
):
    make = ENDPOINT_BODIES[path]
    async with running_ingest(**ingest_settings | {"install_daily_limit": 1}) as ingest:
        assert (await ingest.client.post(path, json=make(1))).status_code == 200
        over = await ingest.client.post(path, json=make(2))
        assert over.status_code == 429 and over.json()["scope"] == "install"
        async with running_ingest(**ingest_settings) as fresh_quota:
            await fresh_quota.runtime.publisher.close()
            down = await fresh_quota.client.post(path, json=make(3) | {"install_id": "install-0009"})
            assert down.status_code == 503 and down.headers["Retry-After"] == "5"
    await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    await assert_nothing_published(amqp_channel, topology)


FAST, FASTAPI = "application/json", "application/vnd.warp+json"  # the fast path takes only the first


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/contribute", knowledge_body(11)),
        ("/contribute", knowledge_body(12, crop_png_b64=b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 200))),
        ("/contribute/bulk-crops", bulk_body([icon_item(13), icon_item(14, name="__empty__")])),
        ("/contribute/bulk-crops", bulk_body([icon_item(15, name="__empty__")])),
        ("/v1/contributions/crops", bulk_body([icon_item(16), icon_item(17, slot="Ship Name")])),
        ("/contribute/bulk-crops", bulk_body([icon_item(18)], install_id="short")),
        ("/contribute/bulk-crops", {"install_id": INSTALL, "items": "not a list"}),
    ],
)
async def test_the_fast_path_answers_as_the_fastapi_route(
    ingest, amqp_channel, topology, monkeypatch, path, body
):
    """Well-formed JSON bodies are served by services.ingest.fastpath, the rest by the FastAPI route: same
    answer either way (status, headers that matter, body, and the same events published)."""
    served_by_route = []
    route_respond = ContributionEndpoint.respond

    async def respond(self, *args):
        served_by_route.append(self.path)
        return await route_respond(self, *args)

    monkeypatch.setattr(ContributionEndpoint, "respond", respond)
    content = json.dumps(body).encode()
    answers, routed = [], []
    for content_type in (FAST, FASTAPI):
        response = await ingest.client.post(path, content=content, headers={"content-type": content_type})
        answers.append((response.status_code, response.headers["content-type"], response.json()))
        routed.append(len(served_by_route))
    assert answers[0] == answers[1]
    if answers[0][0] != 422:  # schema errors never reach either handler
        assert routed == [0, 1], "the first request must take the fast path, the second the FastAPI route"
    if answers[0][0] != 200:
        await assert_nothing_published(amqp_channel, topology)
        return
    accepted = len(body["items"]) - answers[0][2]["rejected"] if "items" in body else 1
    messages = await wait_for_messages(amqp_channel, topology.queue("voting"), 2 * accepted)
    ids = Counter(m.message_id for m in messages)  # both answers published the same ids: counted once
    assert len(ids) == accepted and set(ids.values()) == {2}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_route_limit_is_413_naming_the_limit(
    ingest, amqp_channel, topology, engine, chunked
):
    """A body longer than any the schema accepts is refused before it is buffered, by its declared length or,
    when chunked, as soon as it passes the limit; any content type."""
    content = json.dumps(knowledge_body(crop_png_b64="A" * 400_000)).encode()

    async def chunks():
        for start in range(0, len(content), 16_384):
            yield content[start : start + 16_384]

    response = await ingest.client.post(
        "/contribute",
        content=chunks() if chunked else content,
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 413
    assert response.json()["limit"] == CONTRIBUTE.max_body_bytes
    assert f"/contribute is {CONTRIBUTE.max_body_bytes} bytes" in response.json()["detail"]
    await assert_nothing_published(amqp_channel, topology)
    assert await counters(engine) == {}
    # the largest body the schema allows is under the limit: it is read, and answered by the schema check
    largest = json.dumps(knowledge_body(crop_png_b64="A" * 200_000, item_name="\u00e9" * 300)).encode()
    assert len(largest) < CONTRIBUTE.max_body_bytes
    response = await ingest.client.post(
        "/contribute", content=largest, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["detail"][0]["type"] == "not_png"


def test_every_route_limit_admits_the_largest_body_its_schema_accepts():
    wide = "\U0001f596"  # JSON-escaped as a surrogate pair: twelve bytes
    largest = {
        CONTRIBUTE: knowledge_body(
            install_id="i" * 64,
            phash="0" * 16,
            crop_png_b64="A" * 200_000,
            item_name=wide * 300,
            wrong_name=wide * 300,
            warp_version=wide * 20,
            timestamp=wide * 30,
        ),
        BULK_CROPS: bulk_body(
            [{"slot": wide * 80, "name": wide * 120, "crop_png_b64": "A" * 200_000, "ml_name": wide * 120}]
            * 50,
            install_id="i" * 64,
        ),
        SCREEN_TYPES: {
            "install_id": "i" * 64,
            "screen_type": "s" * 40,
            "items": [{"png_b64": "A" * 4_000_000}] * 20,
        },
        ANCHORS: {
            "install_id": "i" * 64,
            "grids": [
                {
                    "build_type": wide * 40,
                    "aspect": 1.7777777777777777,
                    "resolution": wide * 16,
                    "slots": {
                        f"{wide * 76}{n:04d}": {
                            "x0_rel": 0.1234567890123456,
                            "y_rel": 0.1234567890123456,
                            "w_rel": 0.1234567890123456,
                            "h_rel": 0.1234567890123456,
                            "step_rel": 0.1234567890123456,
                            "count": 1000,
                        }
                        for n in range(200)
                    },
                }
            ]
            * 20,
        },
    }
    for endpoint, body in largest.items():
        size = len(json.dumps(body).encode())
        assert size * 1.25 <= endpoint.max_body_bytes, (endpoint.path, size)
