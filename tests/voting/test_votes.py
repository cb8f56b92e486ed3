"""Storing votes: exactly-once effect on at-least-once delivery, vote replacement, every item kind."""

import asyncio

from sqlalchemy import text

from shared.blobstore import sha256_hex
from shared.events import (
    AnchorGridContributed,
    KnowledgeContributed,
    OcrCorrectionContributed,
    ScreenTypeContributed,
)
from tests.utils.broker import queue_depth, wait_for_messages
from tests.utils.images import make_png
from tests.voting.conftest import consuming, crop_vote


async def rows(engine, sql: str) -> list:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(text(sql))]


async def test_a_batch_stores_contributions_images_and_votes(service, engine):
    await service.handle(
        [crop_vote("a", 1, "Phaser"), crop_vote("b", 1, "Phaser"), crop_vote("a", 2, "Torpedo")]
    )
    assert await rows(engine, "SELECT count(*) FROM contributions") == [(3,)]
    assert await rows(engine, "SELECT count(*) FROM blobs") == [(2,)]  # the shared crop is stored once
    assert await rows(engine, "SELECT install_id, label FROM votes ORDER BY install_id, label") == [
        ("a", "Phaser"),
        ("a", "Torpedo"),
        ("b", "Phaser"),
    ]


async def test_redelivered_and_duplicated_events_count_once(service, engine):
    vote = crop_vote("a", 1, "Phaser")
    await service.handle([vote, vote])
    await service.handle([vote])
    assert await rows(engine, "SELECT count(*) FROM votes") == [(1,)]
    assert await rows(engine, "SELECT count(*) FROM contributions") == [(1,)]


async def test_a_later_vote_of_the_same_install_replaces_its_earlier_one(service, engine):
    await service.handle([crop_vote("a", 1, "Phaser", at=1)])
    await service.handle([crop_vote("a", 1, "Torpedo", at=2)])
    assert await rows(engine, "SELECT label FROM votes") == [("Torpedo",)]
    # a stale redelivery of the older vote does not undo the newer one
    await service.handle([crop_vote("a", 1, "Phaser", at=1)])
    assert await rows(engine, "SELECT label FROM votes") == [("Torpedo",)]
    # back to the first label: the same contribution id as the first time, but newer, so it wins
    await service.handle([crop_vote("a", 1, "Phaser", at=3, message_id="a-1-Phaser-1")])
    assert await rows(engine, "SELECT label FROM votes") == [("Phaser",)]


async def test_within_one_batch_the_latest_vote_of_an_install_wins(service, engine):
    await service.handle([crop_vote("a", 1, "Late", at=9), crop_vote("a", 1, "Early", at=1)])
    assert await rows(engine, "SELECT label FROM votes") == [("Late",)]


async def test_every_contribution_kind_becomes_a_vote_on_its_item(service, engine):
    png = make_png(120, 20, 3)
    sha = sha256_hex(png)
    slot = {"x0_rel": 0.1, "y_rel": 0.2, "w_rel": 0.05, "h_rel": 0.05}
    await service.handle(
        [
            OcrCorrectionContributed(
                install_id="a",
                crop_sha256=sha,
                png=png,
                slot="Ship Type",
                raw_text="Heavy Crulser",
                corrected_text="Heavy Cruiser",
            ),
            KnowledgeContributed(
                install_id="a", phash="0123456789abcdef", crop_sha256=sha, png=png, item_name="Phaser"
            ),
            ScreenTypeContributed(install_id="a", image_sha256=sha, png=png, screen_type="TRAITS"),
            AnchorGridContributed(
                install_id="a",
                build_type="SPACE",
                aspect=1.7777,
                resolution="1920x1080",
                slots={"A": slot, "B": slot, "C": slot},
            ),
        ]
    )
    assert await rows(engine, "SELECT item_kind, item_key, label FROM votes ORDER BY item_kind") == [
        ("anchor", "SPACE\x1f1.78", None),
        ("knowledge", "0123456789abcdef", "Phaser"),
        ("ocr", "Ship Type\x1fHeavy Crulser", "Heavy Cruiser"),
        ("screen", sha, "TRAITS"),
    ]


async def test_through_the_queue_a_redelivered_message_counts_once(
    voting_settings, topology, publisher, service, engine
):
    votes = [crop_vote(f"install-{i}", i % 5, "Phaser") for i in range(40)]
    async with consuming(voting_settings, topology, publisher, service.handle) as consumers:
        for vote in votes + votes[:10]:
            await publisher.publish(vote)
        async with asyncio.timeout(20):
            while sum(c.processed for c in consumers) < 50:
                await asyncio.sleep(0.05)
    assert await rows(engine, "SELECT count(*) FROM votes") == [(40,)]


async def test_a_malformed_event_is_dead_lettered_with_its_reason_and_the_rest_is_stored(
    voting_settings, topology, publisher, service, engine, amqp_channel
):
    good = crop_vote("a", 1, "Phaser")
    broken = good.to_json().replace(good.crop_sha256.encode(), b"not-a-sha")
    async with consuming(voting_settings, topology, publisher, service.handle):
        await publisher.publish_raw(topology.events_exchange, good.event_type, broken, message_id="broken-1")
        await publisher.publish(good)
        [dead] = await wait_for_messages(amqp_channel, topology.dead_letter_queue("voting"), 1)
        async with asyncio.timeout(10):
            while await rows(engine, "SELECT count(*) FROM votes") != [(1,)]:
                await asyncio.sleep(0.05)
    assert dead.message_id == "broken-1"
    assert "crop_sha256" in dead.headers["x-warp-dead-letter-reason"]
    assert await queue_depth(amqp_channel, topology.queue("voting")) == 0
