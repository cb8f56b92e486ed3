"""The scaled-out shape (two ingest, three voting, two trainers of which one is active, a publisher), with a
voting process and the active trainer killed (-9) and the Hub failing for a while: the totals still match and
exactly one release goes out."""

import asyncio
import uuid

import httpx

from shared.reads import accepted_labels, snapshot_labels
from tests.system.conftest import QUICK, READY_SECONDS, post_all, within
from tests.system.test_end_to_end import SPEC
from tests.utils.warp_client import REPO
from tools.simulator.workload import generate

ONE_ACTIVE_SECONDS = 30
ARRIVING_SECONDS = COUNTED_SECONDS = 60
CHECKPOINTED_SECONDS = 120
# what is left of the training budget after the hand-over, evaluation, export, the quality gate and the Hub
# commits (five refused first)
RELEASED_SECONDS = float(QUICK["WARP_BUDGET_MINUTES"]) * 60 + 270


async def active_trainers(system) -> list:
    actives = []
    async with httpx.AsyncClient(timeout=3) as client:
        for trainer in system.stack.of("trainer"):
            if trainer.alive:
                health = await client.get(trainer.url + "/health")
                if health.json().get("active"):
                    actives.append(trainer)
    return actives


@within(
    READY_SECONDS,
    ONE_ACTIVE_SECONDS,
    ARRIVING_SECONDS,
    COUNTED_SECONDS,
    CHECKPOINTED_SECONDS,
    RELEASED_SECONDS,
)
async def test_scaled_out_system_loses_nothing_through_crashes_and_releases_once(system):
    stack = system.stack
    ingests = [stack.start("ingest") for _ in range(2)]
    votings = [stack.start("voting", WARP_MAX_BATCH="50") for _ in range(3)]
    trainers = [stack.start("trainer") for _ in range(2)]
    stack.start("publisher")
    await stack.wait_ready(timeout=READY_SECONDS)
    await system.wait_for("one active trainer", lambda: _one_active(system), timeout=ONE_ACTIVE_SECONDS)
    # the Hub fails every commit for a while: three 500s, then two 429s asking to wait a second
    system.hub.hub.fail_next(500, times=3, route="commit")
    system.hub.hub.fail_next(429, times=2, retry_after=1, route="commit")
    workload = generate(SPEC)

    feeding = asyncio.create_task(post_all([i.url for i in ingests], workload, concurrency=4))

    async def some_votes() -> bool:
        return await system.scalar("SELECT count(*) FROM votes") >= len(workload.votes) // 3

    await system.wait_for("votes arriving", some_votes, timeout=ARRIVING_SECONDS, every=0.05)
    votings[0].kill()  # mid-load, while batches are being stored
    sent = await feeding
    stack.restart(votings[0])

    async def all_votes_counted() -> bool:
        return await system.scalar("SELECT count(*) FROM votes") == len(workload.votes)

    await system.wait_for("every vote counted", all_votes_counted, timeout=COUNTED_SECONDS)

    async def checkpointed() -> bool:
        return await system.scalar("SELECT count(*) FROM checkpoints WHERE model_kind = 'icon'") > 0

    await system.wait_for(
        "the first checkpoint of the training", checkpointed, timeout=CHECKPOINTED_SECONDS, every=0.5
    )
    [active] = await active_trainers(system)
    active.kill()  # mid-epoch: a checkpoint exists, training goes on
    standby = next(t for t in trainers if t is not active)
    stack.restart(active)

    async def released() -> bool:
        return await system.scalar("SELECT count(*) FROM model_versions WHERE status = 'published'") > 0

    await system.wait_for("the release", released, timeout=RELEASED_SECONDS, every=2)

    votes = await system.scalar("SELECT count(*) FROM votes")
    contributions = await system.scalar("SELECT count(*) FROM contributions")
    runs = await system.scalar("SELECT json_agg(row_to_json(r)) FROM training_runs r")
    versions = await system.scalar("SELECT json_agg(row_to_json(v)) FROM model_versions v")
    snapshots = await system.scalar("SELECT json_agg(id) FROM training_snapshots")
    repo = system.hub.hub.repo(REPO)
    release_commits = [c for c in repo.commits if "models/icon_classifier.pt" in c.files]
    print(
        f"scale-out: {len(workload.votes)} sent via 2 ingest, {sent['accepted']} accepted, {votes} votes counted, "
        f"{contributions} contributions stored; voting-0 killed (exit {votings[0].exit_codes}); "
        f"trainer {active.name} killed, {standby.name} took over; runs {[(r['status'], r['attempts']) for r in runs]}; "
        f"releases {[(v['version'], v['status']) for v in versions]}; Hub commit calls {system.hub.hub.calls['commit']}, "
        f"release commits {len(release_commits)}, tags {sorted(repo.tags)}"
    )
    assert sent == {"accepted": len(workload.votes)}
    assert votes == contributions == len(workload.votes)
    assert votings[0].exit_codes == [-9] and active.exit_codes == [-9]
    # A release needs its own snapshot, run and version row, each made once per request (a redelivered request
    # finds its row): one of each, chained, and nothing left for voting to snapshot means no second release can
    # follow, however late a stray message would be.
    [snapshot] = snapshots
    [run] = runs
    assert run["snapshot_id"] == snapshot
    assert run["status"] == "succeeded" and run["attempts"] == 2  # resumed once, finished once
    [version] = versions
    assert version["run_id"] == run["id"] and version["status"] == "published"
    assert await icon_labels_not_in(system, snapshot) < int(QUICK["WARP_TRAINING_THRESHOLD"])
    assert len(release_commits) == 1 and list(repo.tags) == [version["version"]]
    assert system.hub.hub.calls["commit"] >= 6  # five refused, then the one that landed
    async with httpx.AsyncClient() as client:
        for ingest in ingests:
            remote = (await client.get(ingest.url + "/model/version")).json()
            assert remote["trained_at"] == version["trained_at"]


async def _one_active(system) -> bool:
    return len(await active_trainers(system)) == 1


async def icon_labels_not_in(system, snapshot_id: str) -> int:
    """Accepted icon labels the snapshot lacks or has otherwise: what voting counts towards the next snapshot."""
    async with system.engine.connect() as connection:
        in_snapshot = await snapshot_labels(connection, uuid.UUID(snapshot_id), kinds=("icon",))
        accepted = await accepted_labels(connection, "icon")
    assert accepted, "no accepted icon labels: the comparison would prove nothing"
    return sum(1 for key, label in accepted.items() if in_snapshot.get(("icon", key)) != label)
