"""The published model's prediction on the real database: voting asks for it only where it can matter (once
per version), stores the trainer's answer, and decides with it; a new release asks again."""

import json

import pytest
import pytest_asyncio
from sqlalchemy import text

from services.voting.store import PostgresExplainer
from shared.blobstore import sha256_hex
from shared.events import ModelPredicted, Prediction, PredictionRequested, decode_event
from shared.imagekeys import keys_of_png
from tests.utils.images import make_png
from tests.utils.rows import add_version, trained_at
from tests.voting.conftest import crop_vote, seed_known

LABELS = [f"Item {i}" for i in range(20)]


@pytest_asyncio.fixture(autouse=True)
async def known(engine):
    await seed_known(engine, "icon", LABELS)


@pytest.fixture
def voting(voting_with):
    return voting_with(trust_seconds=1e-6)


async def publish(engine, version: str, second: int) -> None:
    async with engine.begin() as connection:
        await add_version(connection, version, trained_at=trained_at(second))


def vote(install: str, crop: int, label: str, **fields):
    return crop_vote(install, crop, label, origin=sha256_hex(install.encode())[:32], **fields)


def key(crop: int) -> str:
    return keys_of_png(make_png(64, 64, crop)).pixels_sha256


async def requests(engine) -> list[PredictionRequested]:
    async with engine.connect() as connection:
        bodies = await connection.scalars(
            text("SELECT body FROM outbox WHERE routing_key = 'model.prediction_requested' ORDER BY id")
        )
        return [decode_event(bytes(body)) for body in bodies]


async def decided(engine, crop: int):
    async with engine.connect() as connection:
        return (
            await connection.execute(
                text("SELECT label, status, reason, evidence FROM consensus WHERE item_key = :k"),
                {"k": key(crop)},
            )
        ).one()


def answer(
    version: str, crop: int, label: str, confidence: float, trained_on: bool = False
) -> ModelPredicted:
    prediction = Prediction(
        item_kind="icon", item_key=key(crop), label=label, confidence=confidence, trained_on=trained_on
    )
    return ModelPredicted(model_version=version, predictions=[prediction])


async def test_before_any_release_nothing_is_asked(voting, engine):
    await voting.service.handle([vote("a", 1, "Item 1", model_guess="Item 1")])
    await voting.refresher.refresh()
    assert await requests(engine) == []
    assert (await decided(engine, 1)).reason == "not enough evidence yet"


async def test_a_single_fresh_vote_is_asked_about_once_and_accepted_when_the_model_agrees(voting, engine):
    await publish(engine, "v1", 1)
    await voting.service.handle([vote("a", 1, "Item 1", model_guess="Item 1")])
    await voting.refresher.refresh()
    [request] = await requests(engine)
    assert request.model_version == "v1"
    assert [(i.item_kind, i.item_key, i.image_sha256) for i in request.items] == [
        ("icon", key(1), sha256_hex(make_png(64, 64, 1)))
    ]
    await voting.service.handle([vote("b", 2, "Item 2")])  # another item's vote: item 1 is not asked again
    await voting.refresher.refresh()
    assert [len(r.items) for r in await requests(engine)] == [1, 1]

    await voting.service.handle([answer("v1", 1, "Item 1", 0.97)])
    await voting.refresher.refresh()
    row = await decided(engine, 1)
    assert (row.label, row.status) == ("Item 1", "accepted")
    assert row.evidence["published_model"] == {
        "label": "Item 1",
        "confidence": 0.97,
        "version": "v1",
        "trained_on": False,
        "agrees": True,
    }


async def test_a_model_that_trained_on_the_item_does_not_vouch_for_it(voting, engine):
    await publish(engine, "v1", 1)
    await voting.service.handle([vote("a", 1, "Item 1", model_guess="Item 1")])
    await voting.refresher.refresh()
    await voting.service.handle([answer("v1", 1, "Item 1", 0.99, trained_on=True)])
    await voting.refresher.refresh()
    assert (await decided(engine, 1)).status == "withheld"


async def test_the_model_that_judged_the_item_before_training_on_it_keeps_vouching(voting, engine):
    await publish(engine, "v1", 1)
    await voting.service.handle([vote("a", 1, "Item 1", model_guess="Item 1")])
    await voting.refresher.refresh()
    await voting.service.handle([answer("v1", 1, "Item 1", 0.97)])
    await voting.refresher.refresh()
    assert (await decided(engine, 1)).status == "accepted"
    # v2 trained on the accepted item: its agreement is no evidence, v1's still is
    await publish(engine, "v2", 2)
    await voting.service.handle([answer("v2", 1, "Item 1", 0.99, trained_on=True)])
    await voting.refresher.refresh()
    row = await decided(engine, 1)
    assert row.status == "accepted"
    # the decision stayed, its evidence did not: the stored explanation names both predictions
    assert row.evidence["published_model"] == {
        "label": "Item 1",
        "confidence": 0.99,
        "version": "v2",
        "trained_on": True,
        "agrees": True,
        "independent": {"label": "Item 1", "confidence": 0.97, "version": "v1"},
    }
    async with engine.connect() as connection:
        kept = (
            await connection.execute(
                text(
                    "SELECT model_version, trained_on, independent_version, independent_label, "
                    "independent_confidence FROM model_predictions WHERE item_key = :k"
                ),
                {"k": key(1)},
            )
        ).one()
    assert tuple(kept) == ("v2", True, "v1", "Item 1", 0.97)
    # a later version that trained on it and learned another label still contradicts
    await publish(engine, "v3", 3)
    await voting.service.handle([answer("v3", 1, "Item 4", 0.9, trained_on=True)])
    await voting.refresher.refresh()
    row = await decided(engine, 1)
    assert (row.status, row.reason[:36]) == ("withheld", "the published model says Item 4 (0.9")
    assert row.evidence["published_model"]["independent"] == {
        "label": "Item 1",
        "confidence": 0.97,
        "version": "v1",
    }


async def test_a_swarm_with_forged_guesses_waits_for_the_model_and_its_contradiction_holds(voting, engine):
    await publish(engine, "v1", 1)
    swarm = [vote(f"sybil{n}", 3, "Item 9", model_guess="Item 9") for n in range(5)]
    await voting.service.handle(swarm)
    await voting.refresher.refresh()
    row = await decided(engine, 3)
    assert (row.status, row.reason) == ("withheld", "waiting for the published model's prediction")
    await voting.service.handle([answer("v1", 3, "Item 3", 0.9)])
    await voting.refresher.refresh()
    row = await decided(engine, 3)
    assert row.status == "withheld"
    assert row.reason.startswith("the published model says Item 3 (0.90)")


async def test_a_new_release_asks_again_for_what_is_still_withheld(voting, engine):
    await publish(engine, "v1", 1)
    await voting.service.handle([vote("a", 1, "Item 1", model_guess="Item 1")])
    await voting.refresher.refresh()
    await voting.service.handle([answer("v1", 1, "Item 1", 0.5)])  # unsure: still withheld
    await voting.refresher.refresh()
    assert (await decided(engine, 1)).status == "withheld"
    await publish(engine, "v2", 2)
    await voting.refresher.refresh()  # sees v2: queues the withheld items
    await voting.refresher.refresh()  # decides them, asking v2
    assert [(r.model_version, len(r.items)) for r in await requests(engine)] == [("v1", 1), ("v2", 1)]
    await voting.service.handle([answer("v2", 1, "Item 1", 0.95)])
    await voting.refresher.refresh()
    assert (await decided(engine, 1)).status == "accepted"
    assert json.loads(json.dumps((await decided(engine, 1)).evidence))["published_model"]["version"] == "v2"


async def test_items_over_a_refresh_s_limit_are_asked_by_the_next_refresh(voting_with, engine):
    voting = voting_with(trust_seconds=1e-6, prediction_max_per_refresh=1)
    await publish(engine, "v1", 1)
    await voting.service.handle([vote("a", 1, "Item 1"), vote("b", 2, "Item 2")])
    await voting.refresher.refresh()
    assert [len(r.items) for r in await requests(engine)] == [1]
    await voting.refresher.refresh()  # the other one was queued again
    asked = [i.item_key for r in await requests(engine) for i in r.items]
    assert sorted(asked) == sorted([key(1), key(2)])


async def test_the_explanation_shows_the_prediction_and_a_restart_does_not_ask_again(voting_with, engine):
    voting = voting_with(trust_seconds=1e-6)
    await publish(engine, "v1", 1)
    await voting.service.handle([vote(i, 1, "Item 1", model_guess="Item 1") for i in ("a", "b", "c")])
    await voting.refresher.refresh()
    await voting.service.handle([answer("v1", 1, "Item 5", 0.7)])
    await voting.refresher.refresh()
    explained = await PostgresExplainer(engine, voting.settings).item("icon", key(1))
    assert explained["why"].startswith("the published model says Item 5 (0.70)")
    model = explained["published_model"]
    assert (model["model_version"], model["label"], model["requested_version"]) == ("v1", "Item 5", "v1")
    restarted = voting_with(trust_seconds=1e-6)  # a new process: it knows v1 from the last refresh
    await restarted.refresher.refresh()
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM dirty_items")) == 0
