"""New classes within minutes: head rows imprinted on the published icon model, without training it.

The backbone and every row of the published head are kept. A new class's row points along the normalised mean of
its crops' normalised embeddings under the published backbone (the crops fed through the client path), less the
mean of all the crops at hand (``CENTRED``: pooled features share a large common part, which made a new row fire on
every crop; centred, as SimpleShot's CL2N does, it points at what sets the class apart); only its
length and its bias are fitted, to the crops at hand: the new class's crops should score above what the published
model's best row scores on them, every other crop below. That keeps the published model's own answers on other
classes (a new row only wins where it is closer than their own class) and puts the new row on their scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.trainer.domain.client_path import icon_input
from services.trainer.models import ICON_HEAD, carry_over
from services.trainer.training import Dataset, PublishedModel, augment, network

MAX_OTHER_CROPS = 256  # crops of known classes the new rows are fitted against
FIT_STEPS = 300
VIEWS = 0  # augmented copies of each crop
# The weight of known crops in a new row's fit, and whether rows are centred: measured on a strong base model in
# services/trainer/README.md, "Imprint releases" (0.75 uncentred took 20 old items' crops; 0.97 centred one;
# benchmarks/trainer_vs_old.py --imprint-protect ... [--imprint-uncentred] tries others).
PROTECT_KNOWN = 0.97
CENTRED = True
BATCH = 32


@dataclass
class Imprinted:
    state: dict[str, torch.Tensor]
    classes: list[str]
    new_classes: list[str]
    crops: dict[str, int]  # new class -> crops imprinted from


@torch.no_grad()
def embeddings(model: nn.Module, images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Pooled backbone features (what the head sees) of ``images[indices]``, fed as clients feed them."""
    model.eval()
    out = []
    for start in range(0, len(indices), BATCH):
        chosen = indices[start : start + BATCH]
        batch = np.stack([icon_input(images[i].permute(1, 2, 0).numpy()) for i in chosen])
        out.append(torch.flatten(model.avgpool(model.features(torch.from_numpy(batch))), 1))
    return torch.cat(out) if out else torch.zeros(0, 0)


def augmented_views(images: torch.Tensor, indices: Sequence[int], views: int, seed: int) -> torch.Tensor:
    """``views`` augmented copies of each of ``images[indices]`` (uint8 N x 3 x 64 x 64), made as training makes
    them (``training.augment``: another rarity background, shifts, colour, blur, noise): what a player's crop
    of the item may look like, where the crops at hand show one or two backgrounds."""
    if not views or not indices:
        return images[:0]
    generator = torch.Generator().manual_seed(seed)
    crops = images[list(indices)].float().div(255).repeat(views, 1, 1, 1)
    return augment(crops, generator).mul(255).round().to(torch.uint8)


def imprint(
    published: PublishedModel,
    data: Dataset,
    seed: int = 0,
    views: int = VIEWS,
    protect_known: float = PROTECT_KNOWN,
    centred: bool = CENTRED,
) -> Imprinted:
    """The published icon model with a row for every class of ``data`` it does not know (blocking). Each crop
    counts with ``views`` augmented copies of it, the known classes' crops too (the new rows are fitted not to
    take their degraded crops); ``protect_known`` and ``centred``: see ``_fit_row`` and the module's text."""
    new_classes = sorted(set(data.labels) - set(published.classes))
    classes = sorted(set(published.classes) | set(new_classes))
    model = network("icon", classes)
    carry_over(model, published.state, published.classes, classes, ICON_HEAD)
    head = model.get_submodule(ICON_HEAD)
    old_rows = torch.tensor([classes.index(label) for label in published.classes])
    known = [i for i, label in enumerate(data.labels) if label in set(published.classes)]
    rng = np.random.default_rng(seed)
    others = sorted(rng.choice(known, size=min(MAX_OTHER_CROPS, len(known)), replace=False).tolist())
    fresh = [i for i, label in enumerate(data.labels) if label in set(new_classes)]
    chosen = others + fresh
    images = torch.cat([data.images[chosen], augmented_views(data.images, chosen, views, seed)])
    features = embeddings(model, images, range(len(images)))
    with torch.no_grad():
        best_known = (features @ head.weight[old_rows].T + head.bias[old_rows]).max(1).values
    labels = [data.labels[i] for i in chosen] * (1 + views)
    crops = {}
    with torch.no_grad():
        unit = F.normalize(features, dim=1)
        # the mean of every crop at hand, the new classes' too: where a snapshot knows few classes (the first
        # releases) the known crops' mean is one class's, not the part all crops share
        common = unit.mean(0) if centred else torch.zeros_like(unit[0])
        for label in new_classes:
            mine = torch.tensor([lab == label for lab in labels])
            direction = F.normalize(unit[mine].mean(0) - common, dim=0)
            length, bias = _fit_row(features @ direction, best_known, mine, protect_known)
            head.weight[classes.index(label)] = length * direction
            head.bias[classes.index(label)] = bias
            crops[label] = int(mine.sum()) // (1 + views)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return Imprinted(state, classes, new_classes, crops)


def _fit_row(
    projection: torch.Tensor, competitor: torch.Tensor, positive: torch.Tensor, protect_known: float
) -> tuple[float, float]:
    """Length and bias of a row along a fixed direction: its logit ``length * projection + bias`` should beat
    ``competitor`` (the best known row's logit) on the positive crops and lose to it on the others; a logistic
    fit in which the others weigh ``protect_known`` of the total (a known class answered wrongly costs more than
    a new one not recognised yet: the full training follows)."""
    scale = float(projection.std().clamp(min=1e-6))
    z = (projection - projection.mean()) / scale
    weight = torch.where(
        positive,
        (1 - protect_known) / positive.sum().clamp(min=1),
        protect_known / (~positive).sum().clamp(min=1),
    )
    a = torch.zeros((), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.Adam([a, b], lr=0.1)
    centre = float(competitor.mean())
    with torch.enable_grad():
        for _ in range(FIT_STEPS):
            margin = F.softplus(a) * 4 * z + b + centre - competitor
            loss = (
                F.binary_cross_entropy_with_logits(margin, positive.float(), reduction="none") * weight
            ).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    length = float(F.softplus(a) * 4 / scale)
    return length, float(b) + centre - length * float(projection.mean())
