"""Checkpoints of a running training, so a restarted trainer resumes a run instead of starting it again.

A bundle is what ``fit`` hands over (model, optimiser, RNG states, phase, epoch, best state, history), or, once
a model is trained, ``{"done": True, "outcome": ...}`` so a restart after it goes straight to the next step.
One checkpoint per run and model kind; the run's end drops them (in the store, with the run's new status).
"""

from __future__ import annotations

import io
import logging
import uuid
from typing import Any

import torch

from services.trainer.store import TrainerStore
from shared.blobstore import BlobStore

log = logging.getLogger(__name__)


def encode(bundle: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(bundle, buffer)
    return buffer.getvalue()


def decode(data: bytes) -> dict[str, Any]:
    # our own bundle (it holds dataclasses and RNG states), never a downloaded file
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class Checkpoints:
    def __init__(self, store: TrainerStore, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs

    async def save(self, run_id: uuid.UUID, kind: str, bundle: dict[str, Any]) -> None:
        await self._store.save_checkpoint(run_id, kind, bundle["epoch"], encode(bundle))

    async def load(self, run_id: uuid.UUID, kind: str) -> dict[str, Any] | None:
        sha = await self._store.checkpoint(run_id, kind)
        if sha is None:
            return None
        log.info("resuming %s training of run %s from its checkpoint", kind, run_id)
        return decode(await self._blobs.get(sha))
