"""Hostile text through the whole write path, on the real servers: ingest (HTTP) -> RabbitMQ -> voting ->
PostgreSQL. Hypothesis puts hostile characters into every text field of every contribution endpoint; whatever
it sends, ingest never answers 5xx, and every contribution it answers 2xx becomes a stored contribution and a
counted vote, with nothing in voting's dead-letter queue (a 2xx that voting cannot store is a lost vote)."""

import asyncio
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.ingest.bodies import bulk_body, grid, icon_item, knowledge_body, screen_types_body
from tests.ingest.conftest import crop, running_ingest
from tests.voting.conftest import consuming

# What a troll types when the field is free text: NUL and other controls, lone surrogates (valid as JSON
# escapes, refused by UTF-8 and by Postgres), bidi overrides, zero-width joiners, a BOM, decomposed accents,
# surrounding space, and plain letters so that some of it is innocent.
HOSTILE = st.sampled_from(
    [
        "\x00",
        "\x01",
        "\x1b",
        "\x7f",
        "\x85",
        "\ud800",
        "\udfff",
        "\u202e",
        "\u2066",
        "\u200b",
        "\u200d",
        "\ufeff",
        "e\u0301",
        " ",
        "\t",
        "\n",
    ]
)
hostile_text = st.lists(
    st.one_of(HOSTILE, st.sampled_from("Phaser Array 2-_.")), min_size=1, max_size=12
).map("".join)

installs = itertools.count()


def _install() -> str:
    return f"hostile-{next(installs):05d}"


def _bodies(field: str, value: str, seed: int) -> dict[str, dict]:
    """One valid body per endpoint (a fresh install and image each, so every accepted item is its own vote),
    with ``value`` put in the named field where the endpoint has it."""
    install = _install()
    knowledge = knowledge_body(seed, install_id=install)
    item = icon_item(seed)
    anchors = grid(resolution=f"{seed}x1")
    if field in knowledge and field not in ("crop_png_b64", "confirmed"):
        knowledge[field] = value
    if field in item and field != "crop_png_b64":
        item[field] = value
    if field in ("build_type", "resolution"):
        anchors[field] = value
    if field == "anchor_slot":
        anchors["slots"] = {value: anchors["slots"]["Fore Weapon"]}
    screens = screen_types_body(seed) | {"install_id": install}
    if field == "screen_type":
        screens["screen_type"] = value
    if field == "install_id":
        install = value
        knowledge["install_id"] = value
        screens["install_id"] = value
    return {
        "/contribute": knowledge,
        "/contribute/bulk-crops": bulk_body([item], install_id=install),
        "/v1/contributions/crops": bulk_body(
            [item | {"crop_png_b64": crop(seed + 50_000)}], install_id=install
        ),
        "/upload/screen-types": screens,
        "/upload/anchors": {"install_id": install, "grids": [anchors]},
    }


FIELDS = [
    "install_id",
    "phash",
    "item_name",
    "wrong_name",
    "warp_version",
    "timestamp",
    "slot",
    "name",
    "ml_name",
    "screen_type",
    "build_type",
    "resolution",
    "anchor_slot",
]


@pytest.mark.timeout(240)
async def test_hostile_text_is_refused_or_stored_never_lost(
    voting_settings, topology, publisher, voting, engine, amqp_channel
):
    loop = asyncio.get_running_loop()
    answers: list[tuple[str, int, int]] = []  # (path, status, items accepted)
    seeds = itertools.count(1)

    async with running_ingest(
        broker_url=voting_settings.broker_url,
        database_url=voting_settings.database_url,
        broker_namespace=topology.namespace,
        delivery_limit=topology.delivery_limit,
        ip_daily_limit=1_000_000,
    ) as ingest:

        def post(path: str, body: dict):
            request = ingest.client.post(
                path, content=json.dumps(body), headers={"content-type": "application/json"}
            )
            return asyncio.run_coroutine_threadsafe(request, loop).result(timeout=30)

        @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(field=st.sampled_from(FIELDS), value=hostile_text)
        def every_field_of_every_endpoint(field, value):
            for path, body in _bodies(field, value, next(seeds)).items():
                response = post(path, body)
                assert response.status_code < 500, (path, field, repr(value), response.text)
                accepted = 0
                if response.status_code < 300:
                    accepted = response.json().get("accepted", 1)
                answers.append((path, response.status_code, accepted))

        await asyncio.to_thread(every_field_of_every_endpoint)

    accepted = sum(n for _, _, n in answers)
    refused = sum(1 for _, status, _ in answers if status >= 400)
    assert accepted > 0 and refused > 0, (accepted, refused)  # both sides of the rule were exercised

    async def stored() -> tuple[int, int]:
        async with engine.connect() as connection:
            contributions = await connection.scalar(text("SELECT count(*) FROM contributions"))
            votes = await connection.scalar(text("SELECT count(*) FROM votes"))
        return contributions, votes

    async with consuming(voting_settings, topology, publisher, voting.service.handle):
        async with asyncio.timeout(60):
            while await stored() != (accepted, accepted):
                await asyncio.sleep(0.2)

    dead_letters = await amqp_channel.declare_queue(topology.dead_letter_queue("voting"), passive=True)
    dead = dead_letters.declaration_result.message_count
    assert dead == 0, f"{dead} accepted contributions ended in voting's dead-letter queue"
    print(f"hostile bodies: {len(answers)} sent, {accepted} items accepted and stored, {refused} refused")
