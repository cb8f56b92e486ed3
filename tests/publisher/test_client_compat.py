"""The WARP client's update logic, reproduced, against a release made by trainer and publisher.

The client polls GET /model/version, updates when the remote trained_at is string-greater than its own,
downloads the required and optional files with hf_hub_download, and runs the icon model as in WIRE_CONTRACT §5.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from sqlalchemy import text

from services.publisher.handlers import ReleaseService
from services.publisher.hub import HfHub, RetryPolicy
from shared.events import decode_event
from shared.torchvision_compat import import_torchvision
from tests.ingest.conftest import ingest_settings, running_ingest  # noqa: F401 (fixture)
from tests.trainer.conftest import add_run, make_snapshot, runner, trainer_settings  # noqa: F401 (fixtures)
from tests.utils.hub_server import running_hub
from tools.simulator.workload import draw_icon

tv = import_torchvision()
REPO = "warp/warp-knowledge"
REQUIRED = ("models/icon_classifier.pt", "models/label_map.json")
OPTIONAL = (
    "models/icon_classifier_meta.json",
    "models/icon_classifier.onnx",
    "models/model_version.json",
    "models/screen_classifier.pt",
    "models/screen_classifier_labels.json",
    "models/screen_classifier_meta.json",
    "models/ship_type_corrections.json",
)


class WarpClient:
    """What the desktop client does, step by step."""

    def __init__(self, hub_url: str, cache: Path, local_trained_at: str) -> None:
        self.hub_url, self.cache, self.trained_at = hub_url, cache, local_trained_at
        self.files: dict[str, Path] = {}

    def wants(self, remote: dict) -> bool:
        return bool(remote.get("available")) and remote["trained_at"] > self.trained_at

    def install(self, remote: dict) -> None:
        for name in REQUIRED:
            self.files[name] = Path(self._download(name))
        for name in OPTIONAL:
            try:
                self.files[name] = Path(self._download(name))
            except RemoteEntryNotFoundError:
                pass
        self.trained_at = remote["trained_at"]

    def _download(self, name: str) -> str:
        return hf_hub_download(REPO, name, repo_type="dataset", endpoint=self.hub_url, cache_dir=self.cache)

    def classify(self, png: bytes) -> tuple[str, float]:
        label_map = json.loads(self.files["models/label_map.json"].read_text())
        model = tv.models.efficientnet_b0(weights=None, num_classes=len(label_map))
        model.load_state_dict(torch.load(self.files["models/icon_classifier.pt"], map_location="cpu"))
        model.eval()
        tensor = self.tensor(png)
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.from_numpy(tensor)), dim=1)[0]
        index = int(probabilities.argmax())
        return label_map[str(index)], float(probabilities[index])

    @staticmethod
    def tensor(png: bytes) -> np.ndarray:
        bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        small = cv2.resize(bgr, (64, 64), interpolation=cv2.INTER_AREA)
        big = cv2.resize(small, (224, 224), interpolation=cv2.INTER_LINEAR)
        return (big.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


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
    async with engine.connect() as connection:
        body = await connection.scalar(text("SELECT body FROM outbox WHERE routing_key = 'model.trained'"))
    # this test is about the client path, not about how good a 20-second model is
    trained = decode_event(body).model_copy(update={"quality_gate_passed": True})
    hub_backend = HfHub(hub.url, "hf_token", REPO, RetryPolicy(attempts=2, base_seconds=0.01))
    await ReleaseService(engine, hub_backend).on_model_trained(trained)

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
