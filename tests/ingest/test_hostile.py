"""Hostile text in every text field of every contribution endpoint (issue 15): never a 5xx, and every event
ingest publishes holds only what downstream can store: no control character (NUL included), no lone surrogate,
NFC and stripped, names printable throughout. Then the finding itself against the real broker and database."""

import asyncio
import json
import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from shared.events import (
    AnchorGridContributed,
    Event,
    IconCropContributed,
    OcrCorrectionContributed,
    decode_event,
)
from tests.ingest.bodies import INSTALL, bulk_body, grid, icon_item, knowledge_body, screen_types_body
from tests.ingest.conftest import crop
from tests.utils.broker import queue_depth, wait_for_messages

HOSTILE = (
    *"\x00\x01\x1b\t\n\r\x7f\x85\x9f",  # controls, C0 and C1
    *"\u200b\u200c\u200d\u2060\ufeff\U000e0001",  # zero-width and other format characters
    *"\u202a\u202e\u2066\u2069\u061c\u200e",  # bidi controls
    "\ud800",  # lone surrogates, sent escaped (json.dumps writes \ud800)
    "\udfff",
    *"\u2028\u2029 \u00a0\u3000",  # separators and spaces
    *"\u0301\u0958\ufb2c\u212b",  # a combining mark; characters NFC changes
    *"\ue000\ufffe\U0001f596",  # private use, a noncharacter, an astral character
)
junk = st.text(alphabet=st.sampled_from(HOSTILE) | st.characters(), max_size=6)


def hostile(good: str) -> st.SearchStrategy[str]:
    """``good``, or ``good`` with hostile characters around it and inside it."""
    spoiled = st.tuples(junk, st.integers(0, len(good)), junk, junk).map(
        lambda parts: parts[0] + good[: parts[1]] + parts[2] + good[parts[1] :] + parts[3]
    )
    return st.one_of(st.just(good), spoiled)


def texts_of(value) -> list[str]:
    """Every string in an event's fields, dict keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for key, item in value.items() for t in (*texts_of(key), *texts_of(item))]
    if isinstance(value, list | tuple):
        return [t for item in value for t in texts_of(item)]
    return []


def names_of(event: Event) -> list[str]:
    if isinstance(event, IconCropContributed):
        return [event.slot, event.label, event.model_guess]
    if isinstance(event, OcrCorrectionContributed):
        return [event.slot, event.corrected_text, event.raw_text]
    if isinstance(event, AnchorGridContributed):
        return [event.build_type, event.resolution, *event.slots]
    return []


def assert_storable(event: Event) -> None:
    for value in texts_of(event.model_dump(exclude={"png"})):
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in value), ascii(value)
        assert value == unicodedata.normalize("NFC", value) == value.strip(), ascii(value)
    assert all(name.isprintable() for name in names_of(event)), event
    event.model_dump_json().encode()  # valid UTF-8 throughout


contribute = st.builds(
    lambda install_id, item_name, wrong_name, warp_version, timestamp: knowledge_body(
        install_id=install_id,
        item_name=item_name,
        wrong_name=wrong_name,
        warp_version=warp_version,
        timestamp=timestamp,
    ),
    hostile("install-0001"),
    hostile("Phaser Array"),
    hostile("Phaser Beam"),
    hostile("2.4.1"),
    hostile("2026-11-22T10:00:00"),
)
crop_items = st.builds(
    lambda slot, name, ml_name: icon_item(slot=slot, name=name, ml_name=ml_name, crop_png_b64=CROP),
    st.sampled_from(["Fore Weapon", "Ship Type", "Ship Tier"]).flatmap(hostile),
    hostile("Heavy Cruiser"),
    hostile("Heavy Crulser"),
)
crops = st.builds(bulk_body, st.lists(crop_items, min_size=1, max_size=3), hostile(INSTALL))
screens = st.builds(
    lambda install_id, screen_type: screen_types_body(0, screen_type) | {"install_id": install_id},
    hostile(INSTALL),
    hostile("TRAITS"),
)
anchor_grids = st.builds(
    lambda build_type, resolution, names: grid(
        build_type=build_type, resolution=resolution, slots=dict.fromkeys(names, grid()["slots"]["Deflector"])
    ),
    hostile("SPACE_EQ"),
    hostile("1920x1080"),
    st.lists(
        st.sampled_from(["Fore Weapon", "Aft Weapon", "Deflector", "Engines"]).flatmap(hostile),
        min_size=3,
        max_size=5,
    ),
)
anchors = st.builds(
    lambda install_id, grids: {"install_id": install_id, "grids": grids},
    hostile(INSTALL),
    st.lists(anchor_grids, min_size=1, max_size=3),
)
CROP = crop(5)
GOOD = {
    "/contribute": knowledge_body(),
    "/contribute/bulk-crops": bulk_body([icon_item(1)]),
    "/upload/screen-types": screen_types_body(1),
    "/upload/anchors": {"install_id": INSTALL, "grids": [grid()]},
}
ENDPOINTS = [
    ("/contribute", contribute, GOOD["/contribute"]),
    ("/contribute/bulk-crops", crops, GOOD["/contribute/bulk-crops"]),
    ("/v1/contributions/crops", crops, GOOD["/contribute/bulk-crops"]),
    ("/upload/screen-types", screens, GOOD["/upload/screen-types"]),
    ("/v1/contributions/screen-types", screens, GOOD["/upload/screen-types"]),
    ("/upload/anchors", anchors, GOOD["/upload/anchors"]),
    ("/v1/contributions/anchors", anchors, GOOD["/upload/anchors"]),
]


# Hundreds of requests take seconds: more than the unit tier (under 30 s for the whole suite) can spend.
@pytest.mark.integration
@pytest.mark.parametrize(("path", "bodies", "good"), ENDPOINTS, ids=[path for path, *_ in ENDPOINTS])
async def test_hostile_text_is_never_a_5xx_and_never_published(memory, path, bodies, good):
    loop = asyncio.get_running_loop()
    answers = []

    def post(body: dict):
        memory.clock.advance(days=1)  # a fresh quota day and reject budget for every example
        request = memory.client.post(
            path, content=json.dumps(body), headers={"content-type": "application/json"}
        )
        return asyncio.run_coroutine_threadsafe(request, loop).result(timeout=30)

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=bodies)
    @example(body=good)
    def property_holds(body):
        response = post(body)
        assert response.status_code in (200, 400, 422), (response.status_code, response.text)
        if response.status_code == 422:
            assert all("input" not in problem for problem in response.json()["detail"])
        answers.append(response.status_code)

    await asyncio.to_thread(property_holds)
    assert 200 in answers and {400, 422} & set(answers)
    assert memory.publisher.published
    for event in memory.publisher.published:
        assert_storable(event)


async def test_a_bulk_crop_whose_slot_holds_nul_is_refused_and_the_rest_stored(
    ingest, amqp_channel, topology, engine
):
    """The finding: such a crop was answered 200 and then dead-lettered by voting, which Postgres refused."""
    items = [icon_item(1), icon_item(2, slot="Fore\x00Weapon")]
    response = await ingest.client.post("/contribute/bulk-crops", json=bulk_body(items))
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["rejected_reasons"] == [
        "item 1: slot contains non-printable character U+0000 (a control character) at position 4",
    ]
    assert await queue_depth(amqp_channel, topology.queue("voting")) == 1
    [message] = await wait_for_messages(amqp_channel, topology.queue("voting"), 1)
    event = decode_event(message.body)
    assert (event.slot, event.label, event.model_guess) == ("Fore Weapon", "Phaser Array", "Phaser")
    async with engine.connect() as connection:  # what voting stores: text and jsonb
        stored = await connection.scalar(
            text("SELECT CAST(:payload AS jsonb) ->> 'slot'"),
            {"payload": event.model_dump_json(exclude={"png"})},
        )
    assert stored == "Fore Weapon"
