"""The contribution endpoints' answers, in memory: ingest built by ``bootstrap`` on the fakes of
``tests/ingest/fakes.py`` (the real broker and quota store: ``test_contributions_integration.py``)."""

import hashlib
import io
import json
from collections import Counter

import pytest
from PIL import Image

from services.ingest.contributions import ANCHORS, BULK_CROPS, CONTRIBUTE, SCREEN_TYPES
from services.ingest.dependencies import get_runtime
from shared.imagekeys import keys_of_png
from tests.ingest.bodies import ENDPOINT_BODIES, INSTALL, bulk_body, grid, icon_item, knowledge_body
from tests.ingest.conftest import CLIENT_ADDRESS, b64, memory_ingest
from tests.utils.images import make_png

FAST, FASTAPI = "application/json", "application/vnd.warp+json"  # the fast path takes only the first


def assert_nothing_taken(memory) -> None:
    assert memory.publisher.published == []
    assert +memory.limiter.counts == Counter()


async def test_contribute_accepts_publishes_and_answers_the_message_id(memory):
    response = await memory.client.post("/contribute", json=knowledge_body() | {"unknown_field": 1})
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True
    [event] = memory.publisher.published
    assert event.message_id == answer["contribution_id"]
    assert event.event_type == "contribution.knowledge" and event.occurred_at == memory.clock.now
    png = make_png(64, 64, 0)
    assert event.png == png
    assert event.crop_sha256 == hashlib.sha256(png).hexdigest()
    assert (event.phash, event.item_name, event.wrong_name) == (
        "0123456789abcdef",
        "Phaser Array",
        "Phaser Beam",
    )
    assert event.install_id == INSTALL
    origin = memory.runtime.origin(CLIENT_ADDRESS, [])
    assert (memory.limiter.count("install", INSTALL), memory.limiter.count("ip", origin)) == (1, 1)


async def test_a_resend_gets_the_same_id_and_the_same_message_id(memory):
    first = await memory.client.post("/contribute", json=knowledge_body())
    again = await memory.client.post("/contribute", json=knowledge_body())
    other = await memory.client.post("/contribute", json=knowledge_body(item_name="Torpedo"))
    assert first.status_code == again.status_code == other.status_code == 200
    assert (
        first.json()["contribution_id"] == again.json()["contribution_id"] != other.json()["contribution_id"]
    )
    assert [e.message_id for e in memory.publisher.published].count(first.json()["contribution_id"]) == 2


async def test_contribute_cleans_fields_as_the_old_backend(memory):
    response = await memory.client.post(
        "/contribute", json=knowledge_body(install_id="in stall/01!", item_name="  Phaser\x07 Array ")
    )
    assert response.status_code == 200
    [event] = memory.publisher.published
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
async def test_contribute_schema_errors_are_422_naming_the_field(memory, overrides, field):
    response = await memory.client.post("/contribute", json=knowledge_body(**overrides))
    assert response.status_code == 422
    assert field in {error["loc"][-1] for error in response.json()["detail"]}
    assert_nothing_taken(memory)


async def test_a_missing_field_is_422(memory):
    body = knowledge_body()
    del body["phash"]
    response = await memory.client.post("/contribute", json=body)
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
async def test_a_bad_image_is_400_with_the_reason_and_spends_nothing(memory, image, reason):
    response = await memory.client.post("/contribute", json=knowledge_body(crop_png_b64=image))
    assert response.status_code == 400
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "crop_png_b64"]
    assert reason in problem["msg"]
    assert_nothing_taken(memory)


async def test_a_near_uniform_crop_is_400(memory):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 40, 40)).save(buffer, format="PNG", compress_level=0)
    response = await memory.client.post(
        "/contribute", json=knowledge_body(crop_png_b64=b64(buffer.getvalue()))
    )
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "near_uniform"


async def test_bulk_crops_accepts_good_items_and_explains_the_rest(memory):
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
    response = await memory.client.post("/contribute/bulk-crops", json=bulk_body(items))
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
    icon, ocr = memory.publisher.published
    assert [icon.event_type, ocr.event_type] == ["contribution.icon_crop", "contribution.ocr_correction"]
    assert (icon.slot, icon.label, icon.model_guess) == ("Fore Weapon", "Phaser Array", "Phaser")
    assert (ocr.slot, ocr.raw_text, ocr.corrected_text) == ("Ship Type", "Heavy Crulser", "Heavy Cruiser")
    assert ocr.crop_sha256 == hashlib.sha256(make_png(120, 20, 2)).hexdigest()
    assert memory.limiter.count("install", INSTALL) == 2  # rejected items spend nothing


async def test_bulk_crops_with_every_item_rejected_is_400_and_publishes_nothing(memory):
    response = await memory.client.post(
        "/contribute/bulk-crops", json=bulk_body([icon_item(1, name="__inactive__")])
    )
    assert response.status_code == 400
    assert response.json() == {
        "ok": False,
        "accepted": 0,
        "rejected": 1,
        "rejected_reasons": ["item 0: name '__inactive__' is a virtual label"],
    }
    assert_nothing_taken(memory)


async def test_bulk_crops_reports_at_most_ten_reasons(memory):
    items = [icon_item(i, name=f"__x{i}") for i in range(12)]
    answer = (await memory.client.post("/contribute/bulk-crops", json=bulk_body(items))).json()
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
async def test_bulk_crops_schema_errors_are_422(memory, body):
    assert (await memory.client.post("/contribute/bulk-crops", json=body)).status_code == 422
    assert_nothing_taken(memory)


async def test_screen_types_are_accepted_with_their_label(memory):
    body = {
        "install_id": INSTALL,
        "screen_type": "SPACE_EQ",
        "items": [{"png_b64": b64(make_png(320, 180, 1))}, {"png_b64": "nope"}],
    }
    response = await memory.client.post("/upload/screen-types", json=body)
    assert response.status_code == 200
    assert response.json()["accepted"] == 1 and response.json()["rejected"] == 1
    [event] = memory.publisher.published
    assert (event.event_type, event.screen_type) == ("contribution.screen_type", "SPACE_EQ")
    assert event.image_sha256 == hashlib.sha256(make_png(320, 180, 1)).hexdigest()
    body["items"] = [{"png_b64": "nope"}]
    assert (await memory.client.post("/upload/screen-types", json=body)).status_code == 400
    body["screen_type"] = "SPACE EQ"
    assert (await memory.client.post("/upload/screen-types", json=body)).status_code == 422


async def test_anchor_grids_are_accepted_and_validated(memory):
    response = await memory.client.post(
        "/upload/anchors", json={"install_id": INSTALL, "grids": [grid(), grid(aspect=None)]}
    )
    assert response.status_code == 200 and response.json()["accepted"] == 2
    assert {e.event_type for e in memory.publisher.published} == {"contribution.anchor_grid"}
    assert len({e.message_id for e in memory.publisher.published}) == 2
    two_slots = grid(slots={"a": grid()["slots"]["Deflector"], "b": grid()["slots"]["Deflector"]})
    assert (
        await memory.client.post("/upload/anchors", json={"install_id": INSTALL, "grids": [two_slots]})
    ).status_code == 422
    assert (
        await memory.client.post("/upload/anchors", json={"install_id": INSTALL, "grids": []})
    ).status_code == 422


async def test_v1_answers_a_result_and_id_per_item_in_order(memory):
    items = [icon_item(1), icon_item(2, name="__empty__"), icon_item(3)]
    response = await memory.client.post("/v1/contributions/crops", json=bulk_body(items))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    published = {e.message_id for e in memory.publisher.published}
    assert published == {results[0]["contribution_id"], results[2]["contribution_id"]}
    assert "virtual label" in results[1]["reason"]


async def test_over_quota_is_429_until_utc_midnight_and_rejects_spend_none():
    async with memory_ingest(install_daily_limit=3) as memory:
        memory.clock.now = memory.clock.now.replace(hour=23, minute=59, second=0)
        post = memory.client.post
        assert (
            await post("/contribute/bulk-crops", json=bulk_body([icon_item(1), icon_item(2)]))
        ).status_code == 200
        assert (
            await post("/contribute/bulk-crops", json=bulk_body([icon_item(3, name="__x")]))
        ).status_code == 400
        too_many = await post("/contribute/bulk-crops", json=bulk_body([icon_item(4), icon_item(5)]))
        assert too_many.status_code == 429
        assert too_many.json() == {
            "detail": "daily limit of 3 contributions per install reached",
            "scope": "install",
            "limit": 3,
        }
        assert too_many.headers["Retry-After"] == "61"
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(6)]))).status_code == 200
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(7)]))).status_code == 429
        other_install = bulk_body([icon_item(8)], install_id="install-0002")
        assert (await post("/contribute/bulk-crops", json=other_install)).status_code == 200
        memory.clock.advance(minutes=1)  # a new UTC day, a new quota
        assert (await post("/contribute/bulk-crops", json=bulk_body([icon_item(9)]))).status_code == 200
    assert len(memory.publisher.published) == 5


async def test_broker_outage_is_503_with_retry_after_and_quota_given_back(memory):
    await memory.publisher.close()
    response = await memory.client.post("/contribute", json=knowledge_body())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "broker unavailable" in response.json()["detail"]
    assert memory.limiter.count("install", INSTALL) == 0


async def test_database_outage_is_503_and_publishes_nothing(memory):
    memory.limiter.down = True
    response = await memory.client.post("/contribute", json=knowledge_body())
    assert response.status_code == 503
    assert "database unavailable" in response.json()["detail"]
    assert memory.publisher.published == []


async def test_metrics_count_accepted_and_rejected_by_reason(memory):
    await memory.client.post(
        "/contribute/bulk-crops", json=bulk_body([icon_item(1), icon_item(2, name="__empty__")])
    )
    body = (await memory.client.get("/metrics")).text
    assert 'warp_ingest_accepted_total{kind="icon_crop"}' in body
    assert 'warp_ingest_rejected_total{kind="bulk_crops",reason="virtual_label"}' in body
    assert "warp_ingest_publish_seconds_bucket" in body


async def test_logs_never_contain_image_bytes(memory, caplog):
    body = knowledge_body(crop_png_b64=b64(make_png(seed=9)[:-50]))
    assert (await memory.client.post("/contribute", json=body)).status_code == 400
    await memory.publisher.close()
    assert (await memory.client.post("/contribute", json=knowledge_body())).status_code == 503
    assert caplog.records, "the publish failure is logged"
    logged = "\n".join(
        record.getMessage() + json.dumps(record.__dict__, default=str) for record in caplog.records
    )
    assert knowledge_body()["crop_png_b64"][:60] not in logged
    assert body["crop_png_b64"][:60] not in logged


@pytest.mark.parametrize("path", sorted(ENDPOINT_BODIES))
async def test_every_contribution_endpoint_answers_200_429_and_503(path):
    make = ENDPOINT_BODIES[path]
    async with memory_ingest(install_daily_limit=1) as memory:
        assert (await memory.client.post(path, json=make(1))).status_code == 200
        over = await memory.client.post(path, json=make(2))
        assert over.status_code == 429 and over.json()["scope"] == "install"
        await memory.publisher.close()
        down = await memory.client.post(path, json=make(3) | {"install_id": "install-0009"})
        assert down.status_code == 503 and down.headers["Retry-After"] == "5"
        assert memory.limiter.count("install", "install-0009") == 0
    assert len(memory.publisher.published) == 1


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
async def test_the_fast_path_answers_as_the_fastapi_route(memory, path, body):
    """Well-formed JSON bodies are served by services.ingest.fastpath, the rest by the FastAPI route: same
    answer either way (status, headers that matter, body, and the same events published)."""
    resolved_by_fastapi = []

    async def counted_runtime():
        resolved_by_fastapi.append(path)
        return memory.runtime

    memory.app.dependency_overrides[get_runtime] = counted_runtime  # only FastAPI routes resolve it
    content = json.dumps(body).encode()
    answers, routed, published = [], [], []
    for content_type in (FAST, FASTAPI):
        response = await memory.client.post(path, content=content, headers={"content-type": content_type})
        answers.append((response.status_code, response.headers["content-type"], response.json()))
        routed.append(bool(resolved_by_fastapi))
        published.append([event.message_id for event in memory.publisher.published])
        memory.publisher.published.clear()
    assert answers[0] == answers[1]
    if answers[0][0] != 422:  # schema errors never reach either handler
        assert routed == [False, True], (
            "the first request must take the fast path, the second the FastAPI route"
        )
    assert published[0] == published[1]
    if answers[0][0] != 200:
        assert published == [[], []]
        return
    accepted = len(body["items"]) - answers[0][2]["rejected"] if "items" in body else 1
    assert len(set(published[0])) == accepted


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_over_the_route_limit_is_413_naming_the_limit(memory, chunked):
    """A body longer than any the schema accepts is refused before it is buffered, by its declared length or,
    when chunked, as soon as it passes the limit; any content type."""
    content = json.dumps(knowledge_body(crop_png_b64="A" * 400_000)).encode()

    async def chunks():
        for start in range(0, len(content), 16_384):
            yield content[start : start + 16_384]

    response = await memory.client.post(
        "/contribute",
        content=chunks() if chunked else content,
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 413
    assert response.json()["limit"] == CONTRIBUTE.max_body_bytes
    assert f"/contribute is {CONTRIBUTE.max_body_bytes} bytes" in response.json()["detail"]
    assert_nothing_taken(memory)
    # the largest body the schema allows is under the limit: it is read, and answered by the schema check
    largest = json.dumps(knowledge_body(crop_png_b64="A" * 200_000, item_name="\u00e9" * 300)).encode()
    assert len(largest) < CONTRIBUTE.max_body_bytes
    response = await memory.client.post(
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
        size = len(json.dumps(body))  # ensure_ascii: one character a byte
        assert size * 1.25 <= endpoint.max_body_bytes, (endpoint.path, size)


async def test_an_icon_crop_is_identified_by_its_pixels_so_a_re_encoded_crop_is_the_same_item(memory):
    original = make_png(64, 64, 3)
    with Image.open(io.BytesIO(original)) as image:
        buffer = io.BytesIO()
        image.convert("RGBA").save(buffer, "PNG", compress_level=9)
    re_encoded = buffer.getvalue()
    assert re_encoded != original
    items = [icon_item(crop_png_b64=b64(original)), icon_item(crop_png_b64=b64(re_encoded))]
    assert (await memory.client.post("/contribute/bulk-crops", json=bulk_body(items))).status_code == 200
    first, second = memory.publisher.published
    assert first.crop_sha256 != second.crop_sha256
    assert first.pixels_sha256 == second.pixels_sha256 == keys_of_png(original).pixels_sha256
    assert first.phash == second.phash and len(first.phash) == 16
