import io

import numpy as np
from PIL import Image


def make_png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    """A real, non-uniform RGB PNG: a random colour field with a bright square whose place depends on the seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    x, y = seed % max(1, width // 2), (seed * 7) % max(1, height // 2)
    pixels[y : y + height // 4, x : x + width // 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
