"""Scoring through the client path: the candidate and the published model are judged on the same held-out
crops, preprocessed with the client's own OpenCV steps (resizes, BGR, scaling), since that is what counts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from services.trainer.domain.client_path import icon_input, screen_input_from_rgb

BATCH = 32


@dataclass(frozen=True)
class Scores:
    accuracy: float  # the candidate's held-out top-1
    current_accuracy: float | None  # the published model's, on the same crops; None without one
    per_class: dict[str, Any]


@torch.no_grad()
def client_top1(
    kind: str, model: nn.Module, images: torch.Tensor, indices: Sequence[int]
) -> list[tuple[int, float]]:
    """Top-1 class index and its softmax probability for ``images[indices]`` (uint8 N x 3 x H x W) fed as the
    client feeds them."""
    model.eval()
    top: list[tuple[int, float]] = []
    for batch in _client_batches(kind, images, indices):
        confidence, index = model(batch).softmax(1).max(1)
        top += zip(index.tolist(), confidence.tolist(), strict=True)
    return top


def _client_batches(kind: str, images: torch.Tensor, indices: Sequence[int]) -> Iterator[torch.Tensor]:
    if not indices:
        return
    client_input = icon_input if kind == "icon" else screen_input_from_rgb
    batch = np.stack([client_input(images[i].permute(1, 2, 0).numpy()) for i in indices])
    for start in range(0, len(batch), BATCH):
        yield torch.from_numpy(batch[start : start + BATCH])


@torch.no_grad()
def predictions_of_two_heads(
    kind: str,
    model: nn.Module,
    head: nn.Linear,
    other_head: tuple[torch.Tensor, torch.Tensor],
    images: torch.Tensor,
    indices: Sequence[int],
) -> tuple[list[int], list[int]]:
    """Top-1 class indices of ``model`` and of the same network with ``other_head`` (weight, bias) in place of
    its ``head``, from one pass of the backbone: two models that differ only in the head's rows (an imprint
    release and the published model it was made from) cost one."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0]))
    model.eval()
    weight, bias = other_head
    mine: list[int] = []
    theirs: list[int] = []
    try:
        for batch in _client_batches(kind, images, indices):
            mine += model(batch).argmax(1).tolist()
            theirs += (seen.pop() @ weight.T + bias).argmax(1).tolist()
    finally:
        hook.remove()
    return mine, theirs


def client_predictions(
    kind: str, model: nn.Module, images: torch.Tensor, indices: Sequence[int]
) -> list[int]:
    """Top-1 class indices for ``images[indices]`` (uint8 N x 3 x H x W) fed as the client feeds them."""
    return [index for index, _ in client_top1(kind, model, images, indices)]


def accuracy(predicted: Sequence[Any], truth: Sequence[Any]) -> float:
    """Share of ``predicted`` equal to ``truth``; 0 when nothing was held out."""
    if not truth:
        return 0.0
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))


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


def score(
    kind: str,
    candidate: nn.Module,
    classes: Sequence[str],
    published: tuple[nn.Module, Sequence[str]] | None,
    images: torch.Tensor,
    labels: Sequence[str],
    validation: Sequence[int],
) -> Scores:
    """Candidate (over ``classes``) and published model (over its own class list) on ``validation``; the two
    class lists may differ, so the published model is scored by label, not by index."""
    index = {label: i for i, label in enumerate(classes)}
    truth = [index[labels[i]] for i in validation]
    predicted = client_predictions(kind, candidate, images, validation)
    current = None
    if published is not None and validation:
        model, published_classes = published
        predicted_labels = [published_classes[p] for p in client_predictions(kind, model, images, validation)]
        current = accuracy(predicted_labels, [labels[i] for i in validation])
    return Scores(accuracy(predicted, truth), current, per_class_accuracy(predicted, truth, classes))


def label_counts(
    kind: str, model: nn.Module, classes: Sequence[str], images: torch.Tensor, labels: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """{label: (correct, examples)} of ``model`` (over ``classes``) on ``images`` through the client path, judged
    by label, so models over different class lists are comparable on the same crops."""
    return counts_by_label(client_predictions(kind, model, images, range(len(labels))), classes, labels)


def counts_by_label(
    predicted: Sequence[int], classes: Sequence[str], labels: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """{label: (correct, examples)} of predicted class indices (over ``classes``) against ``labels``."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for index, label in zip(predicted, labels, strict=True):
        counts[label][0] += int(classes[index] == label)
        counts[label][1] += 1
    return {label: (right, n) for label, (right, n) in sorted(counts.items())}
