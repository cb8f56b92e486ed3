"""The two networks clients run, and moving weights between versions of them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.torchvision_compat import import_torchvision

log = logging.getLogger(__name__)
tv = import_torchvision()

ICON_HEAD = "classifier.1"  # Linear(1280, n_classes)
SCREEN_HEAD = "classifier.3"  # Linear(1024, n_classes)


def icon_model(n_classes: int) -> nn.Module:
    """EfficientNet-B0 as clients build it, trained without stochastic depth: torchvision's 0.2 suits ImageNet's
    hundreds of epochs; in a budget of minutes it holds the network back where it has most to learn. Measured
    (200 items from scratch, one thread, 64 px alone, same round): validation 0.555 against 0.225 after 177
    CPU-seconds, 0.71 against 0.41 after 240 (services/trainer/README.md, "Stochastic depth off"). Stochastic
    depth has no weights and does nothing in evaluation, so the state dict and what clients run are the same."""
    network = tv.models.efficientnet_b0(weights=None, num_classes=n_classes, stochastic_depth_prob=0.0)
    return _quick_depthwise(_quick_batch_norm(network))


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


class _DepthwiseConv(torch.autograd.Function):
    """A depthwise convolution whose weight gradient is itself a depthwise convolution.

    oneDNN computes the weight gradient of a depthwise convolution whose kernel is larger than its map (most
    of the kernel on padding) 10-100x slower than the forward pass (measured on one thread, batch 32: 1152
    channels at 2x2, 5x5 kernel: 33-40 ms against 0.3 ms; 3x3 on a 4x4 map is fast), and at 64 px eight of
    EfficientNet-B0's sixteen depthwise layers are such: a third of a training step went there. The gradient of
    channel c is the correlation of its input with its output gradient summed over the batch: a depthwise
    convolution of the (channel x sample) planes with the output gradients as kernels (dilated by the stride),
    which oneDNN runs in 1.3-9 ms. Forward and input gradient stay oneDNN's. The screen model trains at 224 px,
    where no depthwise kernel is larger than its map, and keeps plain convolutions.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, channels, height, width = x.shape
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                ctx.stride,
                ctx.padding,
                (1, 1),
                False,
                (0, 0),
                channels,
                (True, False, False),
            )[0]
        if ctx.needs_input_grad[1]:
            kh, kw = weight.shape[-2:]
            planes = x.transpose(0, 1).reshape(1, channels * n, height, width)
            kernels = grad.transpose(0, 1).reshape(channels * n, 1, *grad.shape[-2:])
            correlation = F.conv2d(
                planes.contiguous(memory_format=torch.channels_last),
                kernels,
                None,
                1,
                ctx.padding,
                ctx.stride,
                channels * n,
            )
            grad_weight = correlation[..., :kh, :kw].reshape(channels, n, kh, kw).sum(1, keepdim=True)
        return grad_x, grad_weight, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same weights, same state dict) that trains maps smaller than its kernel through
    ``_DepthwiseConv`` on the CPU; in evaluation, under no_grad, on a GPU and in an export it is the plain
    convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            and self.weight.requires_grad
            and x.device.type == "cpu"
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and (self.kernel_size[0] > x.shape[-2] or self.kernel_size[1] > x.shape[-1])
        ):
            return _DepthwiseConv.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)


def _quick_depthwise(model: nn.Module) -> nn.Module:
    """Swap every bias-free, undilated, zero-padded depthwise ``nn.Conv2d`` of ``model`` for a
    ``DepthwiseConv2d`` holding the same weight: names, shapes and what clients run are unchanged."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if (
                type(child) is nn.Conv2d
                and child.groups == child.in_channels == child.out_channels
                and child.bias is None
                and child.dilation == (1, 1)
                and child.padding_mode == "zeros"
                and isinstance(child.padding, tuple)
            ):
                swapped = DepthwiseConv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    groups=child.groups,
                    bias=False,
                )
                swapped.weight = child.weight
                setattr(parent, name, swapped)
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


IMAGENET = "imagenet"
FIRST_CONV = {"icon": "features.0.0.weight", "screen": "features.0.0.weight"}


def choose_device(setting: str, cuda_available: bool) -> str:
    """``auto``: the GPU when torch sees one, else the CPU; ``cpu``; ``cuda`` or ``cuda:N`` (refused when torch
    sees no GPU, with the reason)."""
    if setting == "auto":
        return "cuda" if cuda_available else "cpu"
    if setting.startswith("cuda") and not cuda_available:
        raise ValueError(f"WARP_DEVICE={setting}, but torch sees no CUDA device; use auto or cpu")
    return setting


def fetch_imagenet_icon_weights() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of EfficientNet-B0 (downloaded once into the torch hub cache)."""
    return tv.models.EfficientNet_B0_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


def load_imagenet_weights(
    model: nn.Module, head: str, fetch: Callable[[], dict[str, torch.Tensor]] = fetch_imagenet_icon_weights
) -> int:
    """ImageNet weights when they can be fetched, with the first convolution adapted to the icon input (BGR,
    /255, no mean/std: ImageNet's RGB normalisation folded into its weights). When they cannot, one log line
    says why and the model trains from scratch. Returns how many tensors were loaded."""
    try:
        weights = fetch()
    except Exception as error:  # any failure to fetch (no network, a proxy, a corrupt cache) means scratch
        log.warning("ImageNet weights could not be fetched (%r): the icon model trains from scratch", error)
        return 0
    weights = dict(weights)
    first = FIRST_CONV["icon"]
    if first in weights:
        std = torch.tensor([0.229, 0.224, 0.225])[[2, 1, 0]].view(1, 3, 1, 1)
        weights[first] = weights[first][:, [2, 1, 0]] / std  # BGR input; the mean's offset is BatchNorm's
    loaded = _load_backbone(model, weights, head)
    log.info("initial weights: %d tensors of torchvision's ImageNet EfficientNet-B0", loaded)
    return loaded


def load_initial_weights(model: nn.Module, path: Path, head: str) -> int:
    """Initial weights from a local file: every tensor whose name and shape match, the head excluded. Returns
    how many tensors were loaded."""
    weights = torch.load(path, map_location="cpu", weights_only=True)
    loaded = _load_backbone(model, weights, head)
    log.info("loaded %d tensors of initial weights from %s", loaded, path)
    return loaded


def _load_backbone(model: nn.Module, weights: dict, head: str) -> int:
    state = model.state_dict()
    usable = _backbone_tensors(weights, state, head)
    state.update(usable)
    model.load_state_dict(state)
    return len(usable)


def _backbone_tensors(weights: dict, state: dict, head: str) -> dict:
    """The tensors of ``weights`` that fit ``state`` by name and shape, the classifier ``head`` excluded."""
    return {
        k: v
        for k, v in weights.items()
        if not k.startswith(f"{head}.") and k in state and state[k].shape == v.shape
    }
