"""Pure pieces of a release: version names, the version record clients poll, the model card."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

MODEL_VERSION_KEYS = ("version", "trained_at", "n_classes", "val_acc", "n_samples", "n_users")
SCREEN_KEYS = ("screen_trained_at", "screen_val_acc", "screen_n_samples")


def version_name(trained_at: str) -> str:
    """``v20260406-120102-345678``: readable, unique per ``trained_at``, and sorting like it."""
    date, time_part = trained_at[:10], trained_at[11:26]
    return f"v{date.replace('-', '')}-{time_part.replace(':', '').replace('.', '-')}"


def model_version_record(
    version: str, trained_at: str, n_classes: int, n_samples: int, n_users: int, metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """``models/model_version.json``: the keys of ``GET /model/version`` without ``available``."""
    record = {
        "version": version,
        "trained_at": trained_at,
        "n_classes": n_classes,
        "val_acc": float(metrics.get("val_acc", 0.0)),
        "n_samples": n_samples,
        "n_users": n_users,
    }
    record.update({key: metrics[key] for key in SCREEN_KEYS if metrics.get(key) is not None})
    return record


def model_card(record: Mapping[str, Any], metrics: Mapping[str, Any], lineage: Mapping[str, Any]) -> str:
    """README.md of a release, in the Hub's model-card conventions (YAML front matter, then prose)."""
    front = ModelCardData(
        library_name="pytorch",
        tags=["warp", "star-trek-online", "image-classification", "efficientnet_b0", "mobilenet_v3_small"],
        model_name="warp-icon-classifier",
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type="warp-community-crops",
                dataset_name="WARP held-out crops",
                metric_type="accuracy",
                metric_name="held-out top-1 through the client path",
                metric_value=record["val_acc"],
            )
        ],
    ).to_yaml()
    gate = metrics.get("quality_gate", {})
    published = metrics.get("published_model_val_acc")
    lines = [
        "---",
        front,
        "---",
        "",
        f"# WARP recognition models — {record['version']}",
        "",
        "Community-trained classifiers for the WARP desktop client: the icon classifier (EfficientNet-B0) and the",
        "screen-type classifier (MobileNetV3-Small), with the OCR correction map and community layout anchors.",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| icon classes | {record['n_classes']} |",
        f"| held-out top-1, client preprocessing | {record['val_acc']:.4f} |",
        f"| previous published model, same held-out crops | {'-' if published is None else f'{published:.4f}'} |",
        f"| screen classifier held-out top-1 | {metrics.get('screen_val_acc', '-')} |",
        f"| icon training throughput | {metrics.get('icon_images_per_second', 0):.0f} images/s |",
        "",
        "![training curve](models/training_curve.png)",
        "",
        "## Lineage",
        "",
        f"- trained at: {record['trained_at']}",
        f"- training snapshot: `{lineage.get('snapshot_id')}` (immutable: the exact crops and consensus labels)",
        f"- training run: `{lineage.get('run_id')}`, {metrics.get('icon_epochs', '?')} epochs, "
        f"{metrics.get('training_seconds', 0) / 60:.1f} minutes on CPU",
        f"- samples: {record['n_samples']} icon crops from {record['n_users']} installs",
        f"- quality gate: {'passed' if gate.get('publish') else 'not passed'} — {gate.get('reason', '-')}",
    ]
    if lineage.get("rollback_of"):
        lines.append(
            f"- rollback: the weights of `{lineage['rollback_of']}`, republished so clients install them again"
        )
    lines += [
        "",
        "## How clients run it",
        "",
        "See `models/icon_classifier_meta.json` and `models/screen_classifier_meta.json`: the preprocessing is",
        "spelled out there (icons: BGR, 64x64 area resize, 224x224 bilinear, /255, no mean/std).",
        "",
    ]
    return "\n".join(lines)
