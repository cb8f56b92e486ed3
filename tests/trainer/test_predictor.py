"""The predictor answers voting's requests with the published model's top-1 through the client path, on the
real database and blobs, with a tiny model: a crop's mean colour in the client's BGR order picks its class."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import text
from torch import nn

from services.trainer.handlers import Predictor
from services.trainer.release import MODEL_FILES, state_dict_bytes
from services.trainer.store import PostgresTrainerStore
from services.trainer.training import predict_images
from shared.blobstore import PostgresBlobStore, sha256_hex
from shared.events import ModelPredicted, PredictionItem, PredictionRequested
from shared.imagekeys import keys_of_png
from tests.utils.blobs import put_blob
from tests.utils.rows import add_snapshot, add_version, trained_at

CLASSES = ["Blue", "Green", "Red"]  # the client feeds BGR: channel 0 is blue


class MeanColour(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1))


def tiny(kind: str, classes, state) -> nn.Module:
    model = MeanColour(len(classes))
    model.load_state_dict(state)
    return model.eval()


def solid(rgb: tuple[int, int, int], size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), rgb, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


RED, GREEN = solid((230, 20, 20)), solid((20, 230, 20))


async def release(engine, version: str, snapshot_items=()) -> None:
    """A published release whose icon model is ``MeanColour`` (no screen model)."""
    model = MeanColour(3)
    with torch.no_grad():
        model.head.weight.copy_(torch.eye(3) * 20)
        model.head.bias.zero_()
    weights, labels, _ = MODEL_FILES["icon"]
    files = {
        weights: state_dict_bytes(model.state_dict()),
        labels: b'{"0": "Blue", "1": "Green", "2": "Red"}',
    }
    shas = {path: await put_blob(engine, data) for path, data in files.items()}
    async with engine.begin() as connection:
        snapshot = await add_snapshot(connection, snapshot_items)
        run_id = await add_version(connection, version, trained_at=trained_at(1), snapshot_id=snapshot)
        await connection.execute(
            text("INSERT INTO model_artifacts (run_id, path, blob_sha256) VALUES (:run, :path, :sha)"),
            [{"run": run_id, "path": path, "sha": sha} for path, sha in shas.items()],
        )


@pytest.fixture
def sent() -> list:
    return []


@pytest.fixture
def predictor(engine, sent) -> Predictor:
    async def publish(event) -> None:
        sent.append(event)

    return Predictor(
        PostgresTrainerStore(engine),
        PostgresBlobStore(engine),
        publish,
        predict=lambda kind, model, images: predict_images(kind, model, images, build=tiny),
    )


def request(*items: tuple[str, str, str]) -> PredictionRequested:
    return PredictionRequested(
        model_version="v1",
        items=[PredictionItem(item_kind=k, item_key=key, image_sha256=sha) for k, key, sha in items],
    )


async def test_each_item_is_predicted_once_through_the_client_path_and_flagged_when_trained_on(
    engine, predictor, sent
):
    red, green = await put_blob(engine, RED), await put_blob(engine, GREEN)
    green_pixels = keys_of_png(GREEN).pixels_sha256
    await release(engine, "v1", [("icon", green_pixels, "Green", green)])
    screenshot = await put_blob(engine, solid((0, 0, 200), 96))
    missing = sha256_hex(b"never stored")
    red_key = keys_of_png(RED).pixels_sha256
    asked = request(
        ("icon", red_key, red),
        ("icon", red_key, red),  # asked twice, predicted once
        ("icon", green_pixels, green),  # the release trained on it
        ("knowledge", "00ff00ff00ff00ff", green),  # a knowledge crop whose pixels it trained on
        ("knowledge", "ff00ff00ff00ff00", red),
        ("screen", screenshot, screenshot),  # this release has no screen model
        ("icon", "f" * 64, missing),  # no such blob
    )
    await predictor.handle(asked)
    [answer] = sent
    assert isinstance(answer, ModelPredicted)
    assert answer.model_version == "v1" and answer.request_id == asked.message_id
    got = {(p.item_kind, p.item_key): p for p in answer.predictions}
    assert len(answer.predictions) == len(got) == 6
    assert (got["icon", red_key].label, got["icon", red_key].trained_on) == ("Red", False)
    assert got["icon", red_key].confidence > 0.9
    assert (got["icon", green_pixels].label, got["icon", green_pixels].trained_on) == ("Green", True)
    assert got["knowledge", "00ff00ff00ff00ff"].trained_on
    assert (got["knowledge", "ff00ff00ff00ff00"].label, got["knowledge", "ff00ff00ff00ff00"].trained_on) == (
        "Red",
        False,
    )
    assert got["screen", screenshot].label is None
    assert got["icon", "f" * 64].label is None


async def test_before_the_first_release_a_request_is_left_unanswered(engine, predictor, sent):
    red = await put_blob(engine, RED)
    await predictor.handle(request(("icon", keys_of_png(RED).pixels_sha256, red)))
    assert sent == []
