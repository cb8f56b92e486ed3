"""Icon crops where generalising is the hard part: each item (class) is drawn on rarity backgrounds and with
degradations; held-out crops use a background and a degradation the class never had in training."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RARITY_BACKGROUNDS = [
    (70, 70, 70),
    (30, 110, 40),
    (35, 70, 160),
    (110, 45, 150),
    (175, 125, 25),
    (150, 35, 35),
]
DEGRADATIONS = ("none", "jpeg", "blur", "downscale", "noise", "shift", "gain")
# what players' crops do to an icon that training crops did not: held-out crops get one or two of these
HELD_OUT_DEGRADATIONS = ("jpeg", "blur", "downscale", "shift", "noise", "gain")


def hard_icon(item: int, rarity: int, degradation: str, seed: int, size: int = 64) -> bytes:
    """One crop of ``item`` on a rarity background; ``degradation`` is one of DEGRADATIONS, or several joined
    by '+' (applied in order)."""
    design = np.random.default_rng(item)
    jitter = np.random.default_rng(seed)
    top = np.array(RARITY_BACKGROUNDS[rarity % len(RARITY_BACKGROUNDS)])
    gradient = np.linspace(1.0, 0.45, size)[:, None, None] * top[None, None, :]
    image = Image.fromarray(np.broadcast_to(gradient, (size, size, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    dx, dy = (int(v) for v in jitter.integers(-2, 3, 2))
    for _ in range(int(design.integers(2, 5))):
        x0, y0 = (int(v) for v in design.integers(6, size // 2, 2))
        x1, y1 = x0 + int(design.integers(10, size // 2)), y0 + int(design.integers(10, size // 2))
        colour = tuple(int(c) for c in design.integers(40, 256, 3))
        shape = (draw.ellipse, draw.rectangle, draw.polygon)[int(design.integers(3))]
        box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        if shape is draw.polygon:
            shape([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=colour)
        else:
            shape(box, fill=colour)
    draw.rectangle((0, 0, size - 1, size - 1), outline=tuple(min(255, c + 60) for c in top), width=2)
    for step in degradation.split("+"):
        image = _degrade(image, step, jitter, size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _degrade(image: Image.Image, degradation: str, jitter: np.random.Generator, size: int) -> Image.Image:
    if degradation == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=float(jitter.uniform(0.6, 1.2))))
    if degradation == "downscale":
        low = int(jitter.integers(28, 44))
        return image.resize((low, low), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    if degradation == "noise":
        pixels = np.asarray(image, dtype=np.int16) + jitter.integers(-18, 19, (size, size, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if degradation == "shift":  # the slot cropped a fraction of a pixel off: bilinear resampling
        dx, dy = (float(v) for v in jitter.uniform(-1.5, 1.5, 2))
        return image.transform(image.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), resample=Image.BILINEAR)
    if degradation == "gain":  # the game's gamma, brightness or HDR setting
        gain, offset = float(jitter.uniform(0.7, 1.3)), float(jitter.uniform(-25, 25))
        pixels = np.asarray(image, dtype=np.float32) * gain + offset
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if degradation == "jpeg":
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=int(jitter.integers(25, 55)))
        return Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB")
    if degradation != "none":
        raise ValueError(f"unknown degradation {degradation!r}; one of {DEGRADATIONS}")
    return image


def hard_dataset(
    items: range, train_per_item: int = 3, seed: int = 0, harder: bool = False
) -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]]]:
    """(training crops, held-out crops) as (png, item). Training sees ``train_per_item`` rarities, clean or
    mildly degraded; the held-out crop shows the item on another rarity with a heavier degradation (``harder``:
    one or two of HELD_OUT_DEGRADATIONS, sub-pixel shifts and gain/offset included)."""
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for item in items:
        rarities = rng.permutation(len(RARITY_BACKGROUNDS))
        for k in range(train_per_item):
            degradation = ("none", "noise", "none")[k % 3]
            train.append(
                (hard_icon(item, int(rarities[k]), degradation, seed * 100_000 + item * 10 + k), item)
            )
        if harder:
            chosen = rng.choice(HELD_OUT_DEGRADATIONS, size=int(rng.integers(1, 3)), replace=False)
            degradation = "+".join(str(d) for d in chosen)
        else:
            degradation = str(rng.choice(["jpeg", "blur", "downscale"]))
        held_out.append(
            (
                hard_icon(item, int(rarities[train_per_item]), degradation, seed * 100_000 + item * 10 + 9),
                item,
            )
        )
    return train, held_out
