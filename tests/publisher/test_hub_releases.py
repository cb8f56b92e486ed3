"""Releases to a Hub through the real huggingface_hub client, against the test Hub on loopback."""

import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from services.publisher.hub import HfHub, PermanentPublishError, RetryPolicy
from tests.publisher.conftest import FILES, release_service, trained_event
from tests.utils.hub_server import running_hub

pytestmark = pytest.mark.integration  # a Hub server on loopback

REPO = "warp/warp-knowledge"
FAST = RetryPolicy(attempts=4, base_seconds=0.01, max_seconds=0.05)


@pytest.fixture
def hub():
    with running_hub() as running:
        yield running


def release_commits(api: HfApi) -> list:
    return [
        c for c in api.list_repo_commits(REPO, repo_type="dataset") if c.title.startswith("warp-loop release")
    ]


async def test_one_commit_per_release_with_every_file_and_a_tag(engine, hub):
    service = release_service(engine, HfHub(hub.url, "hf_token", REPO, FAST))
    event = await trained_event(engine)
    await service.on_model_trained(event)
    await service.on_model_trained(event)  # redelivered
    api = HfApi(endpoint=hub.url, token="hf_token")
    [commit] = release_commits(api)
    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v20260501-100000-000000", commit.commit_id)]
    files = {
        f.path
        for f in api.list_repo_tree(REPO, repo_type="dataset", recursive=True, revision=commit.commit_id)
        if hasattr(f, "size")
    }
    assert set(FILES) | {"models/model_version.json", "README.md", "knowledge.json"} <= files
    assert hub.hub.last_authorization == "Bearer hf_token"


async def test_rate_limits_server_errors_and_a_stale_parent_are_retried_once_each(engine, hub, tmp_path):
    waits: list[float] = []
    service = release_service(engine, HfHub(hub.url, "hf_token", REPO, FAST, sleep=waits.append))
    await service.on_model_trained(await trained_event(engine))
    hub.hub.fail_next(429, retry_after=0, route="commit")
    hub.hub.fail_next(500, route="commit")
    hub.hub.stale_parent_next()
    newer = dict(FILES) | {"models/icon_classifier.pt": b"weights-v2"}
    await service.on_model_trained(
        await trained_event(engine, newer, trained_at="2026-05-02T10:00:00.000000+00:00Z")
    )
    api = HfApi(endpoint=hub.url, token="hf_token")
    assert len(release_commits(api)) == 2  # the retried release still made exactly one commit
    # one wait per refusal: Retry-After (0 s) for the 429, then the backoff of the 2nd and 3rd attempts
    assert waits == [0.0, FAST.delay(1, None), FAST.delay(2, None)]
    assert hub.hub.calls["commit"] == 5
    downloaded = api.hf_hub_download(
        REPO,
        "models/model_version.json",
        repo_type="dataset",
        revision="v20260502-100000-000000",
        cache_dir=tmp_path,
    )
    version = json.loads(Path(downloaded).read_text())
    assert version["trained_at"] == "2026-05-02T10:00:00.000000+00:00Z"


async def test_an_outage_longer_than_the_retries_is_an_error_for_the_queue_to_retry(engine, hub):
    waits: list[float] = []
    service = release_service(engine, HfHub(hub.url, "hf_token", REPO, FAST, sleep=waits.append))
    hub.hub.fail_next(503, times=20, route="commit")
    with pytest.raises(Exception, match="503"):
        await service.on_model_trained(await trained_event(engine))
    assert waits == [FAST.delay(attempt, None) for attempt in range(FAST.attempts)]
    assert hub.hub.calls["commit"] == FAST.attempts + 1


async def test_a_refused_token_is_permanent(hub):
    waits: list[float] = []
    hub.hub.fail_next(403, times=5)
    with pytest.raises(PermanentPublishError, match="403"):
        HfHub(hub.url, "hf_bad", REPO, FAST, sleep=waits.append).publish("v1", {"a": b"1"})
    assert waits == []  # not retried: retrying cannot help
