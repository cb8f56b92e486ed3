"""Every file of a release in the exact shapes of WIRE_CONTRACT §3, built in memory as bytes."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from services.trainer.domain.client_path import ICON_INPUT_SIZE, ICON_PREPROCESSING, SCREEN_PREPROCESSING  # noqa: E402
from services.trainer.training import EpochReport  # noqa: E402

ONNX_TOLERANCE = 1e-3  # on softmax probabilities; top-1 must be identical


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def state_dict_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def load_state_dict_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def icon_files(model: nn.Module, labels: Sequence[str], probe: torch.Tensor) -> dict[str, bytes]:
    """``probe``: a few client-path inputs (N x 3 x 224 x 224) on which the ONNX export must agree."""
    return {
        "models/icon_classifier.pt": state_dict_bytes(model.state_dict()),
        "models/label_map.json": _json({str(i): label for i, label in enumerate(labels)}),
        "models/icon_classifier_meta.json": _json(
            {
                "n_classes": len(labels),
                "input_size": ICON_INPUT_SIZE,
                "architecture": "torchvision.models.efficientnet_b0",
                "head": "classifier.1",
                "preprocessing": ICON_PREPROCESSING,
            }
        ),
        "models/icon_classifier.onnx": onnx_export(model, probe),
    }


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


def screen_files(model: nn.Module, labels: Sequence[str]) -> dict[str, bytes]:
    return {
        "models/screen_classifier.pt": state_dict_bytes(model.state_dict()),
        "models/screen_classifier_labels.json": _json({str(i): label for i, label in enumerate(labels)}),
        "models/screen_classifier_meta.json": _json(
            {
                "n_classes": len(labels),
                "input_size": SCREEN_PREPROCESSING["input_size"],
                "architecture": "torchvision.models.mobilenet_v3_small",
                "head": "classifier.3",
                "preprocessing": SCREEN_PREPROCESSING,
                "trust_threshold": 0.5,
            }
        ),
    }


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


def version_file(version: Mapping[str, Any]) -> dict[str, bytes]:
    return {"models/model_version.json": _json(dict(version))}


def per_class_accuracy(
    predictions: Sequence[int], truth: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for predicted, actual in zip(predictions, truth, strict=True):
        totals[actual][0] += int(predicted == actual)
        totals[actual][1] += 1
    return {
        labels[c]: {"correct": right, "samples": n, "accuracy": right / n}
        for c, (right, n) in sorted(totals.items())
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
