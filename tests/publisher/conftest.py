import json
import uuid

import pytest_asyncio
from sqlalchemy import insert

from services.publisher.handlers import ReleaseService
from services.publisher.hub import Hub
from services.publisher.store import PostgresReleaseStore
from services.trainer.tables import model_artifacts, training_runs
from services.voting.tables import training_snapshots
from shared.events import ModelTrained
from tests.utils.blobs import put_blob

FILES = {
    "models/icon_classifier.pt": b"weights-v1",
    "models/label_map.json": json.dumps({"0": "Phaser", "1": "Torpedo"}).encode(),
    "models/icon_classifier_meta.json": json.dumps({"n_classes": 2, "input_size": 224}).encode(),
    "models/training_curve.png": b"\x89PNG\r\n\x1a\nfake",
}


async def trained_event(
    engine,
    files: dict[str, bytes] = FILES,
    *,
    trained_at="2026-05-01T10:00:00.000000+00:00Z",
    gate=True,
    accuracy=0.9,
    status="succeeded",
) -> ModelTrained:
    """A finished run in the database (snapshot, run, artifacts in the blob store) and its model.trained event."""
    snapshot_id, run_id = uuid.uuid4(), uuid.uuid4()
    metrics = {"val_acc": accuracy, "quality_gate": {"publish": gate, "reason": "test"}, "icon_epochs": 3}
    shas = {path: await put_blob(engine, data) for path, data in files.items()}
    async with engine.begin() as connection:
        await connection.execute(
            insert(training_snapshots).values(id=snapshot_id, reason="admin", item_count=2, new_label_count=2)
        )
        await connection.execute(
            insert(training_runs).values(
                id=run_id,
                request_message_id=f"req-{run_id}",
                snapshot_id=snapshot_id,
                status=status,
                metrics=metrics,
            )
        )
        for path, sha in shas.items():
            await connection.execute(
                insert(model_artifacts).values(run_id=run_id, path=path, blob_sha256=sha)
            )
    return ModelTrained(
        message_id=f"model-trained-{run_id}",
        run_id=run_id,
        snapshot_id=snapshot_id,
        trained_at=trained_at,
        artifacts=shas,
        metrics=metrics,
        n_classes=2,
        n_samples=40,
        n_users=7,
        quality_gate_passed=gate,
    )


def release_service(engine, hub: Hub) -> ReleaseService:
    """The handlers over the real store."""
    return ReleaseService(PostgresReleaseStore(engine), hub)


@pytest_asyncio.fixture
async def local_hub(tmp_path):
    from services.publisher.hub import LocalHub

    return LocalHub(tmp_path / "hub", "warp/warp-knowledge")
