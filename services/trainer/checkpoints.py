"""Checkpoints of a running training, so a restarted trainer resumes a run instead of starting it again.

A bundle is what ``fit`` hands over (model, optimiser, RNG states, phase, epoch, best state, history), or, once
a model is trained, ``{"done": True, "outcome": ...}`` so a restart after it goes straight to the next step.
One checkpoint per run and model kind; the run's end drops them (in the store, with the run's new status).

No pickle: a blob is read back as data, never as code. It holds a JSON header (every plain value, with each
tensor replaced by a reference) and the tensors alone, written with ``torch.save`` of a flat
``{name: tensor}`` and read with ``torch.load(weights_only=True)``, which refuses anything else. A blob that
is not in this format (a checkpoint written before it, or one tampered with) is refused, and the run trains
that model again from the start.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import pickle
import uuid
from typing import Any

import numpy as np
import torch

from services.trainer.store import TrainerStore
from services.trainer.training import EpochReport, ModelOutcome
from shared.blobstore import BlobStore

log = logging.getLogger(__name__)

MAGIC = b"warp-checkpoint/2\n"
HEADER_LENGTH_BYTES = 8
# the only classes a checkpoint may hold, rebuilt field by field from plain values
_DATACLASSES = {cls.__name__: cls for cls in (ModelOutcome, EpochReport)}


class UnreadableCheckpoint(ValueError):
    """Not a checkpoint this trainer wrote: another format, truncated, or holding more than data."""


def encode(bundle: dict[str, Any]) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    header = json.dumps(_plain(bundle, tensors)).encode()
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return MAGIC + len(header).to_bytes(HEADER_LENGTH_BYTES, "big") + header + buffer.getvalue()


def decode(data: bytes) -> dict[str, Any]:
    if not data.startswith(MAGIC):
        raise UnreadableCheckpoint("not a checkpoint in this trainer's format")
    start = len(MAGIC) + HEADER_LENGTH_BYTES
    header_length = int.from_bytes(data[len(MAGIC) : start], "big")
    try:
        header = json.loads(data[start : start + header_length])
        tensors = torch.load(io.BytesIO(data[start + header_length :]), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise UnreadableCheckpoint(f"checkpoint refused: {error}") from error
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise UnreadableCheckpoint("checkpoint refused: its tensor part holds more than tensors")
    return _restore(header, tensors)


def _plain(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON values; tensors are moved to ``tensors`` and referenced by name."""
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_plain(item, tensors) for item in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_plain(item, tensors) for item in value]}
    if isinstance(value, dict):
        # optimiser states are keyed by parameter index: keys other than str are kept as pairs
        return {"__items__": [[_plain(k, tensors), _plain(v, tensors)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _DATACLASSES:
        fields = {f.name: _plain(getattr(value, f.name), tensors) for f in dataclasses.fields(value)}
        return {"__dataclass__": type(value).__name__, "fields": fields}
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _restore(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_restore(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    try:
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_restore(item, tensors) for item in value["__tuple__"])
        if "__items__" in value:
            return {_restore(k, tensors): _restore(v, tensors) for k, v in value["__items__"]}
        cls = _DATACLASSES[value["__dataclass__"]]
        return cls(**{name: _restore(field, tensors) for name, field in value["fields"].items()})
    except (KeyError, TypeError) as error:
        raise UnreadableCheckpoint(f"checkpoint refused: unexpected entry {error}") from error


class Checkpoints:
    def __init__(self, store: TrainerStore, blobs: BlobStore) -> None:
        self._store = store
        self._blobs = blobs

    async def save(self, run_id: uuid.UUID, kind: str, bundle: dict[str, Any]) -> None:
        await self._store.save_checkpoint(run_id, kind, bundle["epoch"], encode(bundle))

    async def load(self, run_id: uuid.UUID, kind: str) -> dict[str, Any] | None:
        """The run's checkpoint of ``kind``; None when there is none, or none this trainer can read (the model
        is then trained from the start)."""
        sha = await self._store.checkpoint(run_id, kind)
        if sha is None:
            return None
        try:
            bundle = decode(await self._blobs.get(sha))
        except UnreadableCheckpoint as error:
            log.warning(
                "%s checkpoint of run %s ignored (%s); training it from the start",
                kind,
                run_id,
                error,
                extra={"run_id": str(run_id)},
            )
            return None
        log.info("resuming %s training of run %s from its checkpoint", kind, run_id)
        return bundle
