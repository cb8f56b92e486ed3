"""The two networks clients run, and moving weights between versions of them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from shared.torchvision_compat import import_torchvision

log = logging.getLogger(__name__)
tv = import_torchvision()

ICON_HEAD = "classifier.1"  # Linear(1280, n_classes)
SCREEN_HEAD = "classifier.3"  # Linear(1024, n_classes)


def icon_model(n_classes: int) -> nn.Module:
    return _quick_batch_norm(tv.models.efficientnet_b0(weights=None, num_classes=n_classes))


def screen_model(n_classes: int) -> nn.Module:
    return _quick_batch_norm(tv.models.mobilenet_v3_small(weights=None, num_classes=n_classes))


def _quick_batch_norm(model: nn.Module) -> nn.Module:
    """torchvision builds these with BatchNorm momentum 0.01 (0.001 for MobileNetV3), tuned for ImageNet's
    millions of steps: after the few hundred steps a CPU budget allows, the running statistics are still near
    their initial values and the model evaluates at chance. Momentum is not part of the state dict, so what
    clients load is unaffected."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


def carry_over(
    model: nn.Module,
    previous: dict[str, torch.Tensor],
    previous_labels: list[str],
    labels: list[str],
    head: str,
) -> dict[str, int]:
    """Start from a previous version: the whole backbone, and the head rows of every class that still exists
    (new classes keep their fresh initialisation). Returns what was carried."""
    state = model.state_dict()
    backbone = _backbone_tensors(previous, state, head)
    state.update(backbone)
    old_row = {label: i for i, label in enumerate(previous_labels)}
    carried = 0
    for new_index, label in enumerate(labels):
        if label in old_row and f"{head}.weight" in previous:
            state[f"{head}.weight"][new_index] = previous[f"{head}.weight"][old_row[label]]
            state[f"{head}.bias"][new_index] = previous[f"{head}.bias"][old_row[label]]
            carried += 1
    model.load_state_dict(state)
    return {"backbone_tensors": len(backbone), "head_rows": carried, "new_classes": len(labels) - carried}


def load_initial_weights(model: nn.Module, path: Path, head: str) -> int:
    """Initial weights from a local file (nothing can be downloaded at run time): every tensor whose name and
    shape match, the head excluded. Returns how many tensors were loaded."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    state = model.state_dict()
    usable = _backbone_tensors(weights, state, head)
    state.update(usable)
    model.load_state_dict(state)
    log.info("loaded %d tensors of initial weights from %s", len(usable), path)
    return len(usable)


def _backbone_tensors(weights: dict, state: dict, head: str) -> dict:
    """The tensors of ``weights`` that fit ``state`` by name and shape, the classifier ``head`` excluded."""
    return {
        k: v
        for k, v in weights.items()
        if not k.startswith(f"{head}.") and k in state and state[k].shape == v.shape
    }
