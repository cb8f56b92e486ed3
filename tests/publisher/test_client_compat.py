"""The WARP client's update logic (tests/utils/warp_client.py) against a release made by trainer and publisher."""

import json

import onnxruntime
import pytest
from sqlalchemy import text

from services.publisher.hub import HfHub, RetryPolicy
from shared.events import decode_event
from tests.ingest.conftest import ingest_settings, running_ingest  # noqa: F401 (fixture)
from tests.publisher.conftest import release_service
from tests.trainer.conftest import add_run, make_snapshot, runner, trainer_settings  # noqa: F401 (fixtures)
from tests.utils.hub_server import running_hub
from tests.utils.warp_client import REPO, REQUIRED, WarpClient
from tools.simulator.workload import draw_icon


@pytest.fixture
def hub():
    with running_hub() as running:
        yield running


async def test_a_client_updates_to_a_published_release_and_runs_it_as_it_does(
    engine,
    runner,  # noqa: F811 (the fixture imported above)
    ingest_settings,  # noqa: F811
    hub,
    tmp_path,
):
    snapshot = await make_snapshot(engine, classes=4, variants=4)
    await runner.execute(await add_run(engine, snapshot))
    # this test is about the client path, not about how good a 20-second model is: the run's record passes it
    async with engine.begin() as connection:
        body = await connection.scalar(text("SELECT body FROM outbox WHERE routing_key = 'model.trained'"))
        await connection.execute(
            text("UPDATE training_runs SET metrics = jsonb_set(metrics, '{quality_gate,publish}', 'true')")
        )
    trained = decode_event(body).model_copy(update={"quality_gate_passed": True})
    hub_backend = HfHub(hub.url, "hf_token", REPO, RetryPolicy(attempts=2, base_seconds=0.01))
    await release_service(engine, hub_backend).on_model_trained(trained)

    client = WarpClient(hub.url, tmp_path / "cache", local_trained_at="2026-01-01T00:00:00.000000+00:00Z")
    async with running_ingest(**ingest_settings) as ingest:
        remote = (await ingest.client.get("/model/version")).json()
        assert client.wants(remote)
        client.install(remote)
        assert not client.wants((await ingest.client.get("/model/version")).json())  # installed: no loop
    assert remote["trained_at"] == trained.trained_at and remote["n_classes"] == 4
    assert set(REQUIRED) <= set(client.files) and "models/screen_classifier.pt" not in client.files
    label, confidence = client.classify(draw_icon(2, 7))
    assert label in {f"Item {i:02d}" for i in range(4)} and 0 < confidence <= 1
    version_file = json.loads(client.files["models/model_version.json"].read_text())
    assert version_file == {key: remote[key] for key in version_file}
    session = onnxruntime.InferenceSession(str(client.files["models/icon_classifier.onnx"]))
    logits = session.run(None, {"input": WarpClient.tensor(draw_icon(2, 7))})[0]
    label_map = json.loads(client.files["models/label_map.json"].read_text())
    assert label_map[str(int(logits.argmax()))] == label
