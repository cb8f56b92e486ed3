"""From HTTP contributions to a release a WARP client installs and runs: the four services as separate processes."""

import json

import httpx

from tests.system.conftest import READY_SECONDS, post_all, within
from tests.utils.warp_client import REPO, REQUIRED, WarpClient
from tools.simulator.workload import WorkloadSpec, draw_icon, generate

# A small community: 12 items seen in 4 variants each, 20 installs, one spammer, 5 % honest mistakes. (16 installs
# left one item with two crops of two votes each: two fresh installs confirming the client model's guess share one
# confirmation, so they no longer settle a crop at a cold start; three fresh origins or one trusted install do.)
SPEC = WorkloadSpec(
    classes=12,
    variants=4,
    installs=20,
    honest_error=0.05,
    spammer_share=0.01,
    group_size=0,
    mean_labels_per_install=14,
    seed=11,
)
HELD_OUT_VARIANTS = range(4, 10)  # variants no install ever sent: shifted and recoloured differently
# 4 minutes rather than the system tests' 2.5: on a slower machine of this kind (64 px training at 33-52
# images/s instead of 126) 2.5 minutes left the 224 px phase two epochs and 12/72 held-out crops right.
TRAINING_MINUTES = 4
COUNTED_SECONDS = 60
# the training budget, then evaluation, export, the quality gate and the Hub commit
RELEASED_SECONDS = TRAINING_MINUTES * 60 + 180


@within(READY_SECONDS, COUNTED_SECONDS, RELEASED_SECONDS)
async def test_contributions_become_a_release_that_the_client_runs_well(system, tmp_path):
    stack = system.stack
    ingest = stack.start("ingest")
    stack.start("voting")
    stack.start("trainer", WARP_BUDGET_MINUTES=str(TRAINING_MINUTES))
    stack.start("publisher")
    await stack.wait_ready(timeout=READY_SECONDS)
    workload = generate(SPEC)

    sent = await post_all([ingest.url], workload)
    assert sent == {"accepted": len(workload.votes)}

    async def all_votes_counted() -> bool:
        return await system.scalar("SELECT count(*) FROM votes") == len(workload.votes)

    await system.wait_for("every vote counted", all_votes_counted, timeout=COUNTED_SECONDS)

    async with httpx.AsyncClient(base_url=ingest.url) as client:

        async def released() -> bool:
            return (await client.get("/model/version")).json().get("available") is True

        await system.wait_for("the first release", released, timeout=RELEASED_SECONDS, every=2)
        remote = (await client.get("/model/version")).json()

    record = await system.scalar("SELECT row_to_json(v) FROM model_versions v WHERE status = 'published'")
    assert record["trained_at"] == remote["trained_at"] and record["hub_tag"] == record["version"]
    labelled = await system.scalar(
        "SELECT count(DISTINCT label) FROM consensus WHERE item_kind = 'icon' AND status = 'accepted'"
    )
    assert remote["n_classes"] == labelled == SPEC.classes

    repo = system.hub.hub.repo(REPO)
    head = repo.resolve("main")
    assert repo.tags[record["version"]] == head.sha == record["hub_commit"]
    assert set(REQUIRED) | {"models/icon_classifier.onnx", "models/model_version.json", "README.md"} <= set(
        head.files
    )
    version_file = json.loads(head.files["models/model_version.json"])
    # the keys of GET /model/version but "available", all of them (a subset of its keys could be empty)
    assert version_file == {key: value for key, value in remote.items() if key != "available"}

    client = WarpClient(system.hub.url, tmp_path / "client-cache", "2026-01-01T00:00:00.000000+00:00Z")
    assert client.wants(remote)
    client.install(remote)
    held_out = [(cls, variant) for cls in range(SPEC.classes) for variant in HELD_OUT_VARIANTS]
    right = sum(client.classify(draw_icon(cls, variant))[0] == f"Item {cls:04d}" for cls, variant in held_out)
    accuracy = right / len(held_out)
    chance = 1 / SPEC.classes
    print(
        f"held-out top-1 through the client path: {accuracy:.1%} ({right}/{len(held_out)}), chance {chance:.1%}"
    )
    # 33 %: a wide margin over 8.3 % (measured: 50 % with 2.5 minutes on a faster machine)
    assert accuracy >= 4 * chance
