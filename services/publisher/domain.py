"""Pure rules of a release: what a model.trained or a rollback asks for, what a redelivery does, version names,
the files of a release (the version record clients poll, the model card, the knowledge map) and the events
that announce it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from huggingface_hub import EvalResult, ModelCardData

from shared.events import KnowledgePublished, ModelPublished, ModelTrained, format_trained_at

# A release in these states is never attempted again by a redelivery of what asked for it (a held release
# waits for its approval, a message of its own).
SETTLED = ("published", "rejected", "superseded", "held")
RELEASE_MODES = ("automatic", "held")  # held: a release that passed the gate waits for a moderator's approval
# Every file a training run may hand on (WIRE_CONTRACT §3, less the publisher's own model_version.json, plus
# what the model card shows): anything else, a path with ``..`` or an absolute one included, is refused.
RUN_ARTIFACTS = frozenset(
    {
        "models/icon_classifier.pt",
        "models/icon_classifier.onnx",
        "models/label_map.json",
        "models/icon_classifier_meta.json",
        "models/screen_classifier.pt",
        "models/screen_classifier_labels.json",
        "models/screen_classifier_meta.json",
        "models/ship_type_corrections.json",
        "models/community_anchors.json",
        "models/training_manifest.json",
        "models/training_curve.png",
        "models/per_class_accuracy.json",
    }
)
SCREEN_KEYS = ("screen_trained_at", "screen_val_acc", "screen_n_samples")


def version_name(trained_at: str) -> str:
    """``v20260406-120102-345678``: readable, unique per ``trained_at``, and sorting like it."""
    date, time_part = trained_at[:10], trained_at[11:26]
    return f"v{date.replace('-', '')}-{time_part.replace(':', '').replace('.', '-')}"


@dataclass(frozen=True)
class Release:
    """A row of ``model_versions`` as the publisher writes it."""

    version: str
    source_message_id: str
    run_id: uuid.UUID
    snapshot_id: uuid.UUID
    trained_at: str
    metrics: Mapping[str, Any] = field(hash=False)
    n_classes: int
    n_samples: int
    n_users: int
    rollback_of: str | None = None
    status: str = "pending"

    @property
    def lineage(self) -> dict[str, Any]:
        return {"snapshot_id": self.snapshot_id, "run_id": self.run_id, "rollback_of": self.rollback_of}


@dataclass(frozen=True)
class Published:
    """Where a release landed on the Hub: its commit, and its tag (empty for an untagged commit)."""

    commit: str
    tag: str


class TrainedRun(NamedTuple):
    """What the trainer recorded of a run (``training_runs``): its status and its quality gate's decision."""

    status: str
    gate_passed: bool


def trained_refusal(event: ModelTrained, run: TrainedRun | None) -> str | None:
    """Why a model.trained cannot be released as it says (None: it can): artifact paths outside the contract's
    files, or a run the trainer's record does not back (missing, not succeeded, or its gate said no)."""
    unknown = sorted(path for path in event.artifacts if path not in RUN_ARTIFACTS)
    if unknown:
        return f"artifacts: {', '.join(map(repr, unknown[:5]))} not among the files a release may hold"
    if run is None:
        return f"run_id: no training run {event.run_id}"
    if run.status != "succeeded":
        return f"run_id: training run {event.run_id} is {run.status}, not succeeded"
    if event.quality_gate_passed and not run.gate_passed:
        return f"quality_gate_passed: true, but training run {event.run_id} records that its gate refused it"
    return None


def superseded_by(release: Release, current: Release | None) -> str | None:
    """Why ``release`` must not become current (None: it may): it is older than ``current``, the published
    release (a failed release replayed after a newer one); clients, and the Hub's ``main``, keep the newer."""
    if current is not None and release.trained_at < current.trained_at:
        return (
            f"trained at {release.trained_at}, before the published {current.version} ({current.trained_at})"
        )
    return None


def is_settled(release: Release | None) -> bool:
    """A redelivered request whose release was published (or refused) already has nothing left to do; a pending
    or failed one is attempted again under the same version."""
    return release is not None and release.status in SETTLED


def trained_release(event: ModelTrained, recorded: Release | None) -> Release:
    """The release a model.trained asks for (``recorded``: what an earlier delivery of it wrote)."""
    return Release(
        version=recorded.version if recorded is not None else version_name(event.trained_at),
        source_message_id=event.message_id,
        run_id=event.run_id,
        snapshot_id=event.snapshot_id,
        trained_at=event.trained_at,
        metrics=event.metrics,
        n_classes=event.n_classes,
        n_samples=event.n_samples,
        n_users=event.n_users,
        status="pending" if event.quality_gate_passed else "rejected",
    )


def held_for_approval(mode: str) -> bool:
    """Whether a release that passed every check waits for an approval instead of going out."""
    if mode not in RELEASE_MODES:
        raise ValueError(f"release mode {mode!r} is not one of {RELEASE_MODES}")
    return mode == "held"


def approval_refusal(run_id: uuid.UUID, release: Release | None) -> str | None:
    """Why an approval of ``run_id``'s release cannot be acted on (None: it can, or it already was: a
    published release has nothing left to do); only a held release is approved."""
    if release is None:
        return f"run_id: no release of training run {run_id}"
    if release.status not in ("held", "published"):
        return f"run_id: the release {release.version} of training run {run_id} is {release.status}, not held"
    return None


def rollback_refusal(target_version: str, target: Release | None) -> str | None:
    """Why a rollback to ``target_version`` cannot be done (None: it can): only a published version returns."""
    if target is None or target.status != "published":
        return f"rollback: no published version {target_version!r}"
    return None


def rollback_release(target: Release, message_id: str, recorded: Release | None, now: datetime) -> Release:
    """The old weights of ``target`` as a new release: clients install only a newer ``trained_at``, so it gets
    one (``now``, or the one an earlier delivery of this request recorded)."""
    trained_at = recorded.trained_at if recorded is not None else format_trained_at(now)
    return replace(
        target,
        version=version_name(trained_at),
        source_message_id=message_id,
        trained_at=trained_at,
        rollback_of=target.version,
        status="pending",
    )


def knowledge_version(message_id: str) -> str:
    """The commit name of a knowledge-map publication (one per request)."""
    return f"knowledge-{message_id}"


def knowledge_file(knowledge: Mapping[str, str], updated_at: str) -> bytes:
    return _json({"knowledge": dict(knowledge), "updated_at": updated_at})


def release_files(
    release: Release, artifacts: Mapping[str, bytes], knowledge: Mapping[str, str]
) -> dict[str, bytes]:
    """Every file of one release commit: the trainer's artifacts, the version record, the model card and the
    knowledge map as it stands."""
    record = model_version_record(
        release.version,
        release.trained_at,
        release.n_classes,
        release.n_samples,
        release.n_users,
        release.metrics,
    )
    return dict(artifacts) | {
        "models/model_version.json": _json(record),
        "README.md": model_card(record, release.metrics, release.lineage).encode(),
        "knowledge.json": knowledge_file(knowledge, release.trained_at),
    }


def model_published(release: Release, landed: Published) -> ModelPublished:
    return ModelPublished(
        message_id=f"model-published-{release.version}",
        version=release.version,
        trained_at=release.trained_at,
        hub_commit=landed.commit,
        hub_tag=landed.tag,
        run_id=release.run_id,
    )


def knowledge_published(
    request_id: str, landed: Published, entries: int, updated_at: str
) -> KnowledgePublished:
    return KnowledgePublished(
        message_id=f"knowledge-published-{request_id}",
        hub_commit=landed.commit,
        n_entries=entries,
        updated_at=updated_at,
    )


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


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
