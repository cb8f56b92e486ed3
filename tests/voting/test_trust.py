"""Consensus by earned trust on the real database: each rule of issue 13 with the store, the refresher and the
operator routes."""

import io

import httpx
import pytest
import pytest_asyncio
from PIL import Image
from sqlalchemy import text
from starlette.applications import Starlette

from services.voting.routes import ops_routes
from services.voting.store import PostgresExplainer, PostgresRefresh
from shared.blobstore import sha256_hex
from shared.events import InstallModerated, ItemModerated
from shared.imagekeys import keys_of_png
from tests.utils.images import make_png
from tests.voting.conftest import crop_vote, seed_known

LABELS = [f"Item {i}" for i in range(100)]


@pytest_asyncio.fixture(autouse=True)
async def known(engine):
    await seed_known(engine, "icon", LABELS)


@pytest.fixture
def voting(voting_with):
    return voting_with(trust_seconds=1e-6)  # trust re-estimated at every refresh


def origin(name: str) -> str:
    return sha256_hex(name.encode())[:32]


def vote(install: str, crop: int, label: str, *, at: int = 0, net: str | None = None, **fields):
    return crop_vote(install, crop, label, at=at, origin=origin(net or install), **fields)


def key(crop: int) -> str:
    return keys_of_png(make_png(64, 64, crop)).pixels_sha256


async def rows(engine, sql: str, **params) -> list:
    async with engine.connect() as connection:
        return list(await connection.execute(text(sql), params))


async def decided(engine, crop: int):
    [row] = await rows(
        engine, "SELECT label, status, support, reason FROM consensus WHERE item_key = :k", k=key(crop)
    )
    return row


async def settle(voting, crops, at: int = 0) -> None:
    """Three fresh installs of distinct origins settle each crop with its known label."""
    await voting.service.handle([vote(i, c, f"Item {c}", at=at) for c in crops for i in ("s1", "s2", "s3")])
    await voting.refresher.refresh()


async def weights(engine) -> dict[str, float]:
    return {
        r.install_id: r.weight for r in await rows(engine, "SELECT install_id, weight FROM install_trust")
    }


async def test_trust_is_earned_only_by_votes_on_items_already_settled(voting, engine):
    await settle(voting, [1, 2])
    await voting.service.handle([vote("later", 1, "Item 1", at=5), vote("liar", 2, "Item 7", at=5)])
    await voting.refresher.refresh()  # judged against the settled labels
    await voting.refresher.refresh()  # weights re-estimated
    held = await weights(engine)
    fresh = voting.refresher.trust_params.fresh_weight
    assert held["later"] > fresh and held["liar"] < fresh
    assert not {"s1", "s2", "s3"} & set(held)  # who settled an item earned nothing by it
    judged = await rows(engine, "SELECT install_id, agree FROM trust_judgements ORDER BY install_id")
    assert [(r.install_id, r.agree) for r in judged] == [("later", True), ("liar", False)]


async def test_installs_behind_one_origin_share_one_voice(voting, engine):
    await voting.service.handle([vote(f"sybil{n}", 3, "Item 3", net="one") for n in range(8)])
    await voting.service.handle([vote(f"home{n}", 4, "Item 4") for n in range(3)])
    await voting.refresher.refresh()
    swarm, independent = await decided(engine, 3), await decided(engine, 4)
    assert (swarm.status, swarm.support) == ("withheld", 1)
    assert (independent.status, independent.support) == ("accepted", 3)


async def test_a_re_encoded_crop_is_the_same_item(voting, engine):
    png = make_png(64, 64, 5)
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGBA").save(buffer, "PNG", compress_level=9)
    other = buffer.getvalue()
    events = [vote("a", 5, "Item 5"), vote("b", 5, "Item 5", png=other, crop_sha256=sha256_hex(other))]
    await voting.service.handle([*events, vote("c", 5, "Item 5")])
    await voting.refresher.refresh()
    assert (await decided(engine, 5)).support == 3
    assert len(await rows(engine, "SELECT 1 FROM consensus WHERE item_kind = 'icon'")) == 1
    assert len(await rows(engine, "SELECT 1 FROM blobs")) == 2


async def test_visual_families_are_near_pHashes_found_hop_by_hop_in_one_query(voting, engine):
    base = 0x0123_4567_89AB_CDEF
    phashes = {
        "a": base,
        "b": base ^ 0b111,  # 3 bits from a
        "c": base ^ 0b111 ^ (0b11 << 20),  # 2 bits from b, 5 from a
        "spread": base ^ (1 | 1 << 16 | 1 << 32 | 1 << 48),  # 4 bits from a, but in every band: not found
        "far": base ^ 0xFFFF_0000_FFFF_0000,
    }
    item = {name: sha256_hex(name.encode()) for name in phashes}
    await voting.service.handle(
        [
            vote(f"i-{name}", n, "Item 1", pixels_sha256=item[name], phash=f"{phash:016x}")
            for n, (name, phash) in enumerate(phashes.items())
        ]
    )
    names = {key: name for name, key in item.items()}
    async with engine.connect() as connection:
        unit = PostgresRefresh(connection)
        one = await unit.families([item["a"]], 4)
        two = await unit.families([item["a"]], 4, hops=2)
        everything = await unit.families(list(item.values()), 4)

    def named(families):
        return {names[key]: {names[m] for m in members} for key, members in families.items()}

    assert named(one) == {"a": {"b"}}
    assert named(two) == {"a": {"b"}, "b": {"a", "c"}}
    assert named(everything) == {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}


async def earn_trust(voting, install: str, crops) -> None:
    await settle(voting, crops)
    await voting.service.handle([vote(install, c, f"Item {c}", at=9) for c in crops])
    await voting.refresher.refresh()
    await voting.refresher.refresh()


async def test_the_client_model_guess_counts_for_a_trusted_single_vote(voting, engine):
    await earn_trust(voting, "veteran", range(10, 18))  # eight judged agreements: trusted, not fully
    confirmed = vote("veteran", 40, "Item 40", at=20, model_guess="Item 40")
    await voting.service.handle([confirmed, vote("veteran", 41, "Item 41", at=20)])
    await voting.refresher.refresh()
    assert (await decided(engine, 40)).status == "accepted"  # an honest single vote is not wasted
    alone = await decided(engine, 41)  # the same vote without the model: not enough
    assert (alone.status, alone.reason) == ("withheld", "not enough evidence yet")


async def test_a_new_label_needs_trusted_installs_of_distinct_origins(voting, engine):
    await settle(voting, [6])
    png = make_png(64, 64, 6)
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=0)
    re_encoded = buffer.getvalue()
    planted = "Sybil Planted Label"
    swarm = [
        vote(f"fresh{n}", 6, planted, at=3, png=re_encoded, crop_sha256=sha256_hex(re_encoded))
        for n in range(10)
    ]
    swarm += [vote(f"fresh{n}", 60, planted, at=3, model_guess=planted) for n in range(10)]
    await voting.service.handle(swarm)
    await voting.refresher.refresh()
    await voting.refresher.refresh()
    assert (await decided(engine, 6)).label == "Item 6"
    new = await decided(engine, 60)
    assert new.status == "withheld" and new.reason.startswith("new label")
    assert not await rows(
        engine, "SELECT 1 FROM consensus WHERE label = :l AND status = 'accepted'", l=planted
    )


async def test_a_moderator_decision_settles_the_item_and_feeds_trust(voting, engine):
    await voting.service.handle([vote("x", 7, "Item 8"), vote("y", 7, "Item 7")])
    decision = ItemModerated(item_kind="icon", item_key=key(7), label="Item 7", moderator="console:1")
    await voting.service.handle([decision, decision])  # a redelivery changes nothing
    await voting.refresher.refresh()
    await voting.refresher.refresh()
    row = await decided(engine, 7)
    assert (row.label, row.status, row.reason) == ("Item 7", "accepted", "settled by a moderator")
    held = await weights(engine)
    assert held["y"] > held["x"]
    [logged] = await rows(engine, "SELECT label, moderator FROM moderator_decisions")
    assert tuple(logged) == ("Item 7", "console:1")


async def test_a_shadow_banned_install_s_votes_stop_counting(voting, engine):
    await voting.service.handle([vote(i, 9, "Item 9") for i in ("p", "q", "troll")])
    await voting.service.handle(
        [InstallModerated(install_id="troll", shadow_banned=True, moderator="console:1")]
    )
    await voting.refresher.refresh()
    row = await decided(engine, 9)
    assert (row.status, row.support) == ("withheld", 2)


async def test_the_incremental_state_equals_a_full_recompute(voting, engine):
    from tools.simulator.workload import WorkloadSpec, generate, icon_events

    workload = generate(WorkloadSpec(classes=30, variants=3, installs=30, mean_labels_per_install=30, seed=5))
    await seed_known(engine, "icon", sorted(set(workload.class_names) - set(LABELS)))
    events = icon_events(workload)
    for start in range(0, len(events), 150):
        await voting.service.handle(events[start : start + 150])
        await voting.refresher.refresh()
    for _ in range(10):  # until trust and the queue are at rest
        if not (await voting.refresher.refresh()).stats.get("decided"):
            break
    sql = (
        "SELECT item_kind, item_key, label, status, support, reason, settled_seq FROM consensus ORDER BY 1, 2"
    )
    incremental = await rows(engine, sql)
    outcome = await voting.refresher.recompute()
    assert outcome.stats["queued"] == len(incremental) > 50
    assert await rows(engine, sql) == incremental
    assert sum(1 for r in incremental if r.status == "accepted") > 10


async def test_an_operator_sees_why_an_item_is_accepted_or_withheld_and_how_an_install_is_trusted(
    voting, engine
):
    await settle(voting, [11])
    await voting.service.handle([vote("lonely", 12, "Item 12"), vote("later", 11, "Item 11", at=4)])
    await voting.refresher.refresh()
    await voting.refresher.refresh()
    app = Starlette(routes=ops_routes(PostgresExplainer(engine, voting.settings), voting.refresher))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as client:
        accepted = (await client.get(f"/admin/items/icon/{key(11)}")).json()
        withheld = (await client.get(f"/admin/items/icon/{key(12)}")).json()
        install = (await client.get("/admin/installs/later")).json()
        assert (await client.get("/admin/items/icon/nothing")).status_code == 404
        assert (await client.get("/admin/items/bogus/x")).status_code == 404
    assert accepted["decision"]["status"] == "accepted" and accepted["distinct_origins"] == 4
    assert {v["install_id"] for v in accepted["voters"]} == {"s1", "s2", "s3", "later"}
    assert accepted["decision"]["evidence"]["scores"]["Item 11"] >= 1
    assert withheld["decision"]["status"] == "withheld" and withheld["why"] == "not enough evidence yet"
    assert withheld["voters"][0]["weight"] == voting.refresher.trust_params.fresh_weight
    assert install["judged"]["agree"] == 1 and install["votes"]["icon"] == {"votes": 1, "origins": 1}
