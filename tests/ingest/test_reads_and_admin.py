"""Read endpoints clients poll, and the admin surface, in memory (the real store and broker:
``test_reads_and_admin_integration.py``)."""

import json

import pytest

from services.ingest.readmodels import CachedRead, ReadModelUnavailable
from tests.ingest.conftest import ADMIN_KEY, memory_ingest
from tests.ingest.fakes import FakeRelease

ADMIN = {"X-Admin-Key": ADMIN_KEY}


async def test_health_is_liveness(memory):
    assert (await memory.client.get("/health")).json() == {"status": "ok", "service": "ingest"}


async def test_model_version_says_unavailable_only_when_nothing_was_published(memory):
    assert (await memory.client.get("/model/version")).json() == {"available": False}
    memory.reads.release = FakeRelease("v1", "2026-04-06T12:01:02.345678+00:00Z")
    assert (await memory.client.get("/model/version")).json() == {
        "available": True,
        "version": "v1",
        "trained_at": "2026-04-06T12:01:02.345678+00:00Z",
        "n_classes": 12,
        "val_acc": 0.91,
        "n_samples": 340,
        "n_users": 17,
    }


# What /model/version answers for release v2 with a screen model, whichever read store it comes from.
V2_WITH_A_SCREEN_MODEL = {
    "available": True,
    "version": "v2",
    "trained_at": "2026-05-01T08:00:00.000000+00:00Z",
    "n_classes": 12,
    "val_acc": 0.91,
    "n_samples": 340,
    "n_users": 17,
    "screen_trained_at": "2026-05-01T08:00:00.000000+00:00Z",
    "screen_val_acc": 0.88,
    "screen_n_samples": 70,
}


async def test_model_version_adds_the_screen_model_when_there_is_one(memory):
    memory.reads.release = FakeRelease(
        "v2",
        "2026-05-01T08:00:00.000000+00:00Z",
        metrics={
            "val_acc": 0.91,
            "screen_val_acc": 0.88,
            "screen_n_samples": 70,
            "screen_trained_at": "2026-05-01T08:00:00.000000+00:00Z",
            "train_loss": 0.1,  # not part of the wire contract
        },
    )
    answer = (await memory.client.get("/model/version")).json()
    assert answer == V2_WITH_A_SCREEN_MODEL


@pytest.mark.parametrize("path", ["/model/version", "/knowledge", "/config/labels"])
async def test_a_database_error_is_503_never_an_empty_or_unavailable_answer(memory, path):
    memory.reads.down = True
    response = await memory.client.get(path)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json() == {"detail": "database unavailable; retry later"}


async def test_a_recent_good_answer_is_served_while_the_database_is_briefly_down():
    now = [0.0]
    answers = iter([{"a": "1"}, OSError("down"), OSError("down"), {"a": "2"}])

    async def load():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cached = CachedRead(load, ttl=5, stale_for=60, clock=lambda: now[0])
    assert await cached.get() == {"a": "1"}
    now[0] = 10  # expired, the refresh fails: the last good answer stands in
    assert await cached.get() == {"a": "1"}
    now[0] = 61  # too old to stand in
    with pytest.raises(ReadModelUnavailable):
        await cached.get()
    assert await cached.get() == {"a": "2"}


async def test_read_answers_are_cached_for_the_configured_seconds():
    async with memory_ingest(read_cache_seconds=5) as memory:
        memory.reads.labels["knowledge"] = {"00000000000000aa": "Phaser Array"}
        first = (await memory.client.get("/knowledge")).json()
        memory.reads.labels["knowledge"] = {}
        memory.clock.advance(seconds=4.9)
        assert (await memory.client.get("/knowledge")).json() == first
        memory.clock.advance(seconds=0.1)
        assert (await memory.client.get("/knowledge")).json() == {"knowledge": {}}


async def test_knowledge_and_labels_are_built_from_accepted_consensus(memory):
    memory.reads.labels = {
        "knowledge": {"00000000000000aa": "Phaser Array"},
        "icon": {"a" * 64: "Torpedo", "b" * 64: "Phaser Array", "c" * 64: "Torpedo"},
        "screen": {"d" * 64: "SPACE_EQ", "e" * 64: "A_NEW_SCREEN"},
    }
    assert (await memory.client.get("/knowledge")).json() == {
        "knowledge": {"00000000000000aa": "Phaser Array"}
    }
    labels = (await memory.client.get("/config/labels")).json()
    assert labels["icon_labels"] == ["Phaser Array", "Torpedo"]
    assert "A_NEW_SCREEN" in labels["screen_types"] and "BOFFS" in labels["screen_types"]
    assert labels["screen_types"] == sorted(set(labels["screen_types"]))
    assert labels["text_slots"] == ["Ship Tier", "Ship Type"]
    assert labels["virtual_labels"] == ["__empty__", "__inactive__"]


async def test_an_empty_knowledge_map_is_a_real_answer(memory):
    assert (await memory.client.get("/knowledge")).json() == {"knowledge": {}}


# (method, path, the answer with the right key): in memory no broker answers the dead-letter admin
ADMIN_CALLS = [
    ("post", "/admin/merge", 200),
    ("post", "/admin/train", 202),
    ("post", "/admin/rollback/v1", 202),
    ("get", "/admin/dead-letters/voting", 503),
]


@pytest.mark.parametrize(("method", "path", "answer"), ADMIN_CALLS)
async def test_admin_endpoints_need_the_right_key(memory, method, path, answer):
    call = getattr(memory.client, method)
    missing = await call(path)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["header", "x-admin-key"]
    assert (await call(path, headers={"X-Admin-Key": "wrong-key-wrong-key"})).status_code == 403
    assert memory.publisher.published == []
    assert (await call(path, headers=ADMIN)).status_code == answer


@pytest.mark.parametrize(("method", "path", "answer"), ADMIN_CALLS)
async def test_admin_endpoints_are_404_without_an_admin_key_configured(method, path, answer):
    async with memory_ingest(admin_key=None) as disabled:
        response = await getattr(disabled.client, method)(path, headers=ADMIN)
        assert response.status_code == 404
        assert "WARP_ADMIN_KEY" in response.json()["detail"]


async def test_admin_merge_requests_a_publication_and_answers_the_counts(memory):
    memory.reads.merge_counts = (1, 2)
    response = await memory.client.post("/admin/merge", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "merged": 1, "total": 2}
    assert [event.event_type for event in memory.publisher.published] == ["knowledge.publish_requested"]


async def test_admin_train_asks_voting_for_a_snapshot(memory):
    response = await memory.client.post("/admin/train", headers=ADMIN)
    assert response.status_code == 202
    [command] = memory.publisher.published
    assert command.event_type == "training.force_requested"
    assert response.json() == {"ok": True, "request_id": command.message_id}


async def test_admin_rollback_asks_the_publisher_for_a_new_release_of_an_old_version(memory):
    response = await memory.client.post("/admin/rollback/v20260501-100000-000000", headers=ADMIN)
    assert response.status_code == 202
    [command] = memory.publisher.published
    assert command.event_type == "model.rollback_requested"
    assert command.target_version == "v20260501-100000-000000"
    assert response.json()["request_id"] == command.message_id


@pytest.mark.parametrize("path", ["/admin/merge", "/admin/train", "/admin/rollback/v1"])
async def test_an_admin_command_is_503_when_the_broker_is_down(memory, path):
    await memory.publisher.close()
    response = await memory.client.post(path, headers=ADMIN)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "broker unavailable" in response.json()["detail"]


async def test_dead_letter_admin_answers_503_when_rabbitmq_is_unreachable(memory):
    for method, path in (
        ("GET", "/admin/dead-letters/voting"),
        ("POST", "/admin/dead-letters/voting/replay"),
    ):
        response = await memory.client.request(method, path, headers=ADMIN)
        assert response.status_code == 503, path
        assert response.headers["Retry-After"] == "5"
        assert "broker unavailable" in response.json()["detail"]
    assert (await memory.client.get("/admin/dead-letters/nobody", headers=ADMIN)).status_code == 422


async def test_the_openapi_document_describes_both_apis(memory):
    spec = (await memory.client.get("/openapi.json")).json()
    assert {"/contribute", "/contribute/bulk-crops", "/v1/contributions/crops", "/model/version"} <= set(
        spec["paths"]
    )
    assert json.dumps(spec)
