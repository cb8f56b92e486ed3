"""What a release contains: every file in the exact shapes of WIRE_CONTRACT §3 (built in memory as bytes), the
run's metrics, and the ``model.trained`` event that hands them on. Also reads a published release's model back
(to fine-tune from and gate against) from the same file names it is written to."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from services.trainer.domain.budget import GateDecision  # noqa: E402
from services.trainer.domain.client_path import (  # noqa: E402
    ICON_INPUT_SIZE,
    ICON_PREPROCESSING,
    SCREEN_PREPROCESSING,
    icon_input,
)
from services.trainer.domain.data import SnapshotItem  # noqa: E402
from services.trainer.domain.gold import GoldItem  # noqa: E402
from services.trainer.domain.runs import Run  # noqa: E402
from services.trainer.models import ICON_HEAD, SCREEN_HEAD  # noqa: E402
from services.trainer.training import (  # noqa: E402
    Dataset,
    EpochReport,
    ModelOutcome,
    PublishedModel,
    network,
)
from shared.blobstore import sha256_hex  # noqa: E402
from shared.events import ModelTrained  # noqa: E402

ONNX_TOLERANCE = 1e-3  # on softmax probabilities; top-1 must be identical
ONNX_PROBE_CROPS = 4
MODEL_FILES = {  # weights, label map, meta
    "icon": ("models/icon_classifier.pt", "models/label_map.json", "models/icon_classifier_meta.json"),
    "screen": (
        "models/screen_classifier.pt",
        "models/screen_classifier_labels.json",
        "models/screen_classifier_meta.json",
    ),
}
NETWORK_META = {
    "icon": {
        "input_size": ICON_INPUT_SIZE,
        "architecture": "torchvision.models.efficientnet_b0",
        "head": ICON_HEAD,
        "preprocessing": ICON_PREPROCESSING,
    },
    "screen": {
        "input_size": SCREEN_PREPROCESSING["input_size"],
        "architecture": "torchvision.models.mobilenet_v3_small",
        "head": SCREEN_HEAD,
        "preprocessing": SCREEN_PREPROCESSING,
        "trust_threshold": 0.5,
    },
}


@dataclass(frozen=True)
class Release:
    """A trained run as it is handed on: its files by path, its metrics, and the event that announces them."""

    files: dict[str, bytes]
    metrics: dict[str, Any]
    event: ModelTrained
    gold: Sequence[GoldItem] = ()  # added to the gold set once the release passed its gate


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def state_dict_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def load_state_dict_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _label_map(labels: Sequence[str]) -> bytes:
    return _json({str(i): label for i, label in enumerate(labels)})


def read_model(kind: str, files: Mapping[str, bytes]) -> PublishedModel | None:
    """The ``kind`` model of a release from its files; None when the release has none."""
    weights, labels, _ = MODEL_FILES[kind]
    if weights not in files or labels not in files:
        return None
    label_map = json.loads(files[labels])
    return PublishedModel(
        load_state_dict_bytes(files[weights]), [label_map[str(i)] for i in range(len(label_map))]
    )


def model_files(kind: str, model: nn.Module, labels: Sequence[str]) -> dict[str, bytes]:
    """Weights, label map and meta file of the ``kind`` classifier."""
    weights, label_map, meta = MODEL_FILES[kind]
    return {
        weights: state_dict_bytes(model.state_dict()),
        label_map: _label_map(labels),
        meta: _json({"n_classes": len(labels)} | NETWORK_META[kind]),
    }


def icon_files(model: nn.Module, labels: Sequence[str], probe: torch.Tensor) -> dict[str, bytes]:
    """``probe``: a few client-path inputs (N x 3 x 224 x 224) on which the ONNX export must agree."""
    return model_files("icon", model, labels) | {"models/icon_classifier.onnx": onnx_export(model, probe)}


def onnx_export(model: nn.Module, probe: torch.Tensor) -> bytes:
    """Export with the input named ``input`` and check ONNX Runtime agrees with PyTorch on ``probe``."""
    model.eval()
    buffer = io.BytesIO()
    # The TorchScript exporter (dynamo=False) exports EfficientNet-B0 as-is and needs no onnxscript; the
    # agreement check below is what guarantees the file, whichever exporter made it.
    torch.onnx.export(
        model,
        (probe[:1],),
        buffer,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    data = buffer.getvalue()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = torch.softmax(model(probe), dim=1).numpy()
    got = torch.softmax(torch.from_numpy(session.run(None, {"input": probe.numpy()})[0]), dim=1).numpy()
    difference = float(np.abs(got - expected).max())
    if difference > ONNX_TOLERANCE or (got.argmax(1) != expected.argmax(1)).any():
        raise RuntimeError(
            f"ONNX export disagrees with PyTorch: probabilities differ by {difference:.2e} (tolerance {ONNX_TOLERANCE})"
        )
    return data


def derived_files(
    ocr: Mapping[str, str],
    anchors: Sequence[Mapping[str, Any]],
    crop_shas: Sequence[str],
    generated_at: str,
) -> dict[str, bytes]:
    """``ocr`` is {raw OCR text: corrected name}, as the snapshot holds it."""
    entries = [
        {
            "type": a["type"],
            "aspect": a["aspect"],
            "res": a["res"],
            "slots": a["slots"],
            "n_contributors": a["n_contributors"],
            "timestamp": generated_at,
        }
        for a in anchors
    ]
    return {
        "models/ship_type_corrections.json": _json(dict(ocr)),
        "models/community_anchors.json": _json(
            {
                "generated_at": generated_at,
                "n_contributors": max((e["n_contributors"] for e in entries), default=0),
                "entries": entries,
            }
        ),
        "models/training_manifest.json": _json(
            {"crop_shas": sorted(crop_shas), "updated_at": generated_at, "count": len(crop_shas)}
        ),
    }


def training_curve_png(histories: Mapping[str, Sequence[EpochReport]]) -> bytes:
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for name, history in histories.items():
        if not history:
            continue
        minutes = [report.elapsed / 60 for report in history]
        loss_axis.plot(minutes, [report.train_loss for report in history], label=name)
        validated = [
            (m, r.val_accuracy) for m, r in zip(minutes, history, strict=True) if r.val_accuracy is not None
        ]
        if validated:
            accuracy_axis.plot(*zip(*validated, strict=True), label=name)
    loss_axis.set(title="training loss", xlabel="minutes")
    accuracy_axis.set(title="held-out accuracy", xlabel="minutes", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def release_files(
    items: Sequence[SnapshotItem],
    icon_data: Dataset,
    icon: ModelOutcome,
    screen: ModelOutcome | None,
    trained_at: str,
) -> dict[str, bytes]:
    """Every file of the release, by path. Blocking (the ONNX export and its check): run it in a thread."""
    probe = torch.from_numpy(
        np.stack(
            [
                icon_input(icon_data.images[i].permute(1, 2, 0).numpy())
                for i in range(min(ONNX_PROBE_CROPS, len(icon_data.keys)))
            ]
        )
    )
    files = icon_files(network("icon", icon.classes, icon.state), icon.classes, probe)
    histories = {"icon": icon.history}
    if screen is not None:
        files |= model_files("screen", network("screen", screen.classes, screen.state), screen.classes)
        histories["screen"] = screen.history
    ocr = {i.key: i.label for i in items if i.kind == "ocr"}
    anchors = [i.value for i in items if i.kind == "anchor"]
    files |= derived_files(ocr, anchors, icon_data.keys, trained_at)
    files["models/training_curve.png"] = training_curve_png(histories)
    files["models/per_class_accuracy.json"] = _json(icon.per_class)
    return files


def run_metrics(
    icon: ModelOutcome,
    screen: ModelOutcome | None,
    screen_note: str,
    gate: GateDecision,
    *,
    started_at: datetime,
    now: datetime,
    trained_at: str,
    gold: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's metrics, recorded on the run and sent with ``model.trained`` (the publisher's model card)."""
    metrics: dict[str, Any] = {
        "training_seconds": round((now - started_at).total_seconds(), 1),
        "val_acc": icon.accuracy,
        "published_model_val_acc": icon.current_accuracy,
        "quality_gate": {"publish": gate.publish, "reason": gate.reason},
        "icon_epochs": icon.epochs,
        "icon_images_per_second": icon.images_per_second,
        "icon_carried_over": icon.carried,
        "screen": screen_note,
        "gold": dict(gold or {}),
    }
    if screen is not None:
        metrics |= {
            "screen_trained_at": trained_at,
            "screen_val_acc": screen.accuracy,
            "screen_n_samples": screen.n_samples,
            "screen_n_classes": len(screen.classes),
        }
    return metrics


def model_trained(
    run: Run,
    files: Mapping[str, bytes],
    metrics: Mapping[str, Any],
    icon: ModelOutcome,
    gate: GateDecision,
    *,
    n_users: int,
    trained_at: str,
) -> ModelTrained:
    """The event with the run's lineage; its message id is the run's, so there is one per run."""
    return ModelTrained(
        message_id=f"model-trained-{run.id}",
        run_id=run.id,
        snapshot_id=run.snapshot_id,
        trained_at=trained_at,
        artifacts={path: sha256_hex(data) for path, data in files.items()},
        metrics=dict(metrics),
        n_classes=len(icon.classes),
        n_samples=icon.n_samples,
        n_users=n_users,
        quality_gate_passed=gate.publish,
    )
