import io
import uuid

import numpy as np
import pytest_asyncio
from PIL import Image
from sqlalchemy import insert, text

from services.trainer.bootstrap import bootstrap
from services.trainer.handlers import ModelWork, TrainingRunner
from services.trainer.settings import TrainerSettings
from services.trainer.training import Phase, TrainConfig
from services.voting.tables import snapshot_items, training_snapshots
from tests.utils.blobs import put_blob
from tools.simulator.workload import draw_icon

FAST_ICONS = TrainConfig(phases=(Phase(64, 0.8, 16), Phase(224, 1.0, 8)), patience=1000)
FAST_SCREENS = TrainConfig(
    phases=(Phase(224, 1.0, 8),), normalise=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), patience=1000
)


def screenshot(kind: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((180, 320, 3), np.uint8)
    pixels[:, :] = (40 * kind % 255, 90, 200 - 30 * kind)
    pixels[20 + 10 * kind : 60 + 10 * kind, 30:290] = 230
    pixels = np.clip(pixels.astype(int) + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def make_snapshot(
    engine, classes: int = 6, variants: int = 4, screens: dict[str, int] | None = None, extra=()
) -> uuid.UUID:
    """A snapshot of simulator icons (and optionally screenshots per type, OCR and anchor entries)."""
    snapshot_id = uuid.uuid4()
    rows = []
    for cls in range(classes):
        for variant in range(variants):
            sha = await put_blob(engine, draw_icon(cls, variant))
            rows.append(dict(item_kind="icon", item_key=sha, label=f"Item {cls:02d}", image_sha256=sha))
    for index, (screen_type, count) in enumerate(sorted((screens or {}).items())):
        for seed in range(count):
            sha = await put_blob(engine, screenshot(index, seed))
            rows.append(dict(item_kind="screen", item_key=sha, label=screen_type, image_sha256=sha))
    rows += list(extra)
    async with engine.begin() as connection:
        await connection.execute(
            insert(training_snapshots).values(
                id=snapshot_id, reason="admin", item_count=len(rows), new_label_count=len(rows)
            )
        )
        await connection.execute(
            insert(snapshot_items),
            [{"snapshot_id": snapshot_id, "value": None} | r for r in rows],
        )
    return snapshot_id


async def add_run(engine, snapshot_id: uuid.UUID, request: str = "req-1") -> uuid.UUID:
    run_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO training_runs (id, request_message_id, snapshot_id, status) VALUES (:i, :r, :s, 'pending')"
            ),
            {"i": run_id, "r": request, "s": snapshot_id},
        )
    return run_id


@pytest_asyncio.fixture
async def trainer_settings(broker_url, database_url, topology) -> TrainerSettings:
    return TrainerSettings(
        broker_url=broker_url,
        database_url=database_url,
        broker_namespace=topology.namespace,
        delivery_limit=topology.delivery_limit,
        budget_minutes=0.3,
        health_port=0,
    )


FAST = ModelWork(icon_config=FAST_ICONS, screen_config=FAST_SCREENS)


@pytest_asyncio.fixture
async def runner(engine, trainer_settings, publisher) -> TrainingRunner:
    settings = trainer_settings.model_copy(update={"checkpoint_seconds": 2})
    return bootstrap(settings, engine=engine, publisher=publisher, work=FAST).runner
