"""A contribution workload with known true labels (ground truth), and scoring of consensus against it.

Icons are drawn procedurally: each class has a design (shapes and colours from its seed) and several
variants (small shifts and colour changes); a variant is pixel-identical every time an install sees it, so
it is one crop (one sha256). Installs have skewed (log-normal) activity and pick crops by class popularity
(Zipf). Honest installs mislabel a share of crops with a random other class; spammers label at random; a
coordinated group first labels popular crops correctly (a clean record), then, in a burst at the end, pushes
one wrong label per target class onto every variant of a few less popular target classes.
"""

from __future__ import annotations

import io
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class WorkloadSpec:
    classes: int = 500
    variants: int = 4
    installs: int = 150
    honest_error: float = 0.08
    spammer_share: float = 0.05
    group_size: int = 6
    attacked_class_share: float = 0.01
    mean_labels_per_install: float = 110.0
    popularity_exponent: float = 0.5
    group_clean_labels: int = 60
    seed: int = 7


@dataclass(frozen=True)
class SimVote:
    seq: int
    install: str
    crop: int
    label: str
    model_guess: str


@dataclass
class Workload:
    spec: WorkloadSpec
    class_names: list[str]
    crop_class: list[int]
    votes: list[SimVote]
    spammers: set[str]
    group: set[str]
    attacked_classes: set[int]
    _images: dict[int, bytes] = field(default_factory=dict)

    def truth(self, crop: int) -> str:
        return self.class_names[self.crop_class[crop]]

    def crop_png(self, crop: int) -> bytes:
        if crop not in self._images:
            self._images[crop] = draw_icon(self.crop_class[crop], crop % self.spec.variants)
        return self._images[crop]

    @property
    def attacked_crops(self) -> set[int]:
        return {crop for crop, cls in enumerate(self.crop_class) if cls in self.attacked_classes}


def icon_pixels(design: int, variant: int, nudge: int = 0, size: int = 64) -> np.ndarray:
    """An icon's RGB pixels: shapes from its design seed, shifted and tinted per variant; ``nudge`` > 0 makes
    the look-alike twin (one shape's colour moved a little)."""
    shapes = np.random.default_rng(design)
    tweak = np.random.default_rng(design * 1000 + variant + 1)
    background = tuple(int(c) for c in shapes.integers(0, 120, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    dx, dy = (int(v) for v in tweak.integers(-3, 4, 2))
    for index in range(int(shapes.integers(2, 5))):
        x0, y0 = (int(v) for v in shapes.integers(4, size // 2, 2))
        x1, y1 = x0 + int(shapes.integers(10, size // 2)), y0 + int(shapes.integers(10, size // 2))
        base = shapes.integers(60, 256, 3) + (nudge if index == 0 else 0)
        colour = tuple(int(np.clip(c + tweak.integers(-15, 16), 0, 255)) for c in base)
        shape = draw.ellipse if shapes.random() < 0.5 else draw.rectangle
        shape((x0 + dx, y0 + dy, x1 + dx, y1 + dy), fill=colour, outline=(255, 255, 255))
    return np.asarray(image)


def draw_icon(class_seed: int, variant: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(icon_pixels(class_seed, variant, size=size), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def generate(spec: WorkloadSpec = WorkloadSpec()) -> Workload:
    rng = np.random.default_rng(spec.seed)
    names = [f"Item {i:04d}" for i in range(spec.classes)]
    crop_class = [cls for cls in range(spec.classes) for _ in range(spec.variants)]
    n_crops = len(crop_class)
    popularity = 1.0 / np.arange(1, spec.classes + 1) ** spec.popularity_exponent
    rng.shuffle(popularity)
    crop_weight = np.repeat(popularity, spec.variants)
    crop_weight /= crop_weight.sum()

    installs = [f"install-{i:04d}" for i in range(spec.installs)]
    n_spammers = max(1, round(spec.installs * spec.spammer_share))
    roles = rng.permutation(spec.installs)
    spammers = {installs[i] for i in roles[:n_spammers]}
    group = {installs[i] for i in roles[n_spammers : n_spammers + spec.group_size]}
    n_attacked = max(1, round(spec.classes * spec.attacked_class_share))
    # The group aims where its votes can win: classes outside the most popular 40 %.
    less_popular = np.argsort(-popularity)[int(spec.classes * 0.4) :]
    attacked_classes = {int(c) for c in rng.choice(less_popular, n_attacked, replace=False)}

    timed: list[tuple[float, str, int, str, str]] = []
    for install in installs:
        activity = float(
            np.clip(rng.lognormal(np.log(spec.mean_labels_per_install) - 0.3, 0.8), 10, n_crops // 3)
        )
        if install in group:
            popular = np.argsort(-crop_weight)[: spec.group_clean_labels * 2]
            for crop in rng.choice(popular, spec.group_clean_labels, replace=False):
                truth = names[crop_class[crop]]
                timed.append((rng.uniform(0, 0.8), install, int(crop), truth, truth))
            continue
        chosen = rng.choice(n_crops, int(activity), replace=False, p=crop_weight)
        for crop in chosen:
            truth = names[crop_class[crop]]
            if install in spammers:
                label = names[int(rng.integers(spec.classes))]
            elif rng.random() < spec.honest_error:
                label = names[(crop_class[crop] + int(rng.integers(1, spec.classes))) % spec.classes]
            else:
                label = truth
            timed.append((rng.uniform(0, 1), install, int(crop), label, truth))
    for cls in sorted(attacked_classes):
        wrong = names[(cls + int(rng.integers(1, spec.classes))) % spec.classes]
        for variant in range(spec.variants):
            crop = cls * spec.variants + variant
            for install in sorted(group):
                timed.append((rng.uniform(0.9, 0.92), install, crop, wrong, wrong))
    timed.sort()
    votes, seen = [], set()
    for seq, (_, install, crop, label, guess) in enumerate(timed):
        if (install, crop) not in seen:  # one install, one vote per item (the workload never revotes)
            seen.add((install, crop))
            votes.append(SimVote(seq, install, crop, label, guess))
    return Workload(spec, names, crop_class, votes, spammers, group, attacked_classes)


@dataclass(frozen=True)
class Score:
    precision: float  # share of labels handed to training that are right
    coverage: float  # share of voted crops that get a label
    attacked_safe: float  # share of attacked crops that end right or withheld
    labelled: int
    voted: int

    def row(self, name: str) -> str:
        return (
            f"{name:<16} precision {100 * self.precision:6.2f}%   coverage {100 * self.coverage:6.2f}%   "
            f"attacked crops correct or withheld {100 * self.attacked_safe:6.2f}%   ({self.labelled}/{self.voted} crops)"
        )


def score(workload: Workload, labels: dict[Hashable, str | None], key=lambda crop: crop) -> Score:
    voted = sorted({vote.crop for vote in workload.votes})
    given = {crop: labels.get(key(crop)) for crop in voted}
    labelled = [crop for crop, label in given.items() if label is not None]
    right = sum(given[crop] == workload.truth(crop) for crop in labelled)
    attacked = [crop for crop in voted if crop in workload.attacked_crops]
    safe = sum(given[crop] is None or given[crop] == workload.truth(crop) for crop in attacked)
    return Score(
        precision=right / len(labelled) if labelled else 1.0,
        coverage=len(labelled) / len(voted),
        attacked_safe=safe / len(attacked) if attacked else 1.0,
        labelled=len(labelled),
        voted=len(voted),
    )


def bulk_crops_body(event) -> dict:
    """An icon-crop event as the WARP client posts it to ``POST /contribute/bulk-crops``."""
    import base64

    item = {
        "slot": event.slot,
        "name": event.label,
        "ml_name": event.model_guess,
        "crop_png_b64": base64.b64encode(event.png).decode(),
    }
    return {"install_id": event.install_id, "items": [item]}


def icon_events(workload: Workload, start=None) -> list:
    """The workload as the icon-crop events ingest would publish, in arrival order, one millisecond apart."""
    from datetime import UTC, datetime, timedelta

    from shared.blobstore import sha256_hex
    from shared.events import IconCropContributed

    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for vote in workload.votes:
        png = workload.crop_png(vote.crop)
        events.append(
            IconCropContributed(
                message_id=f"sim-{workload.spec.seed}-{vote.seq}",
                occurred_at=start + timedelta(milliseconds=vote.seq),
                install_id=vote.install,
                crop_sha256=sha256_hex(png),
                png=png,
                slot="Fore Weapon",
                label=vote.label,
                model_guess=vote.model_guess,
            )
        )
    return events
