"""An icon crop's identity by its pixels, and its perceptual hash.

A crop is an item by what the client's model sees, not by its PNG bytes: the client decodes the crop, keeps
BGR order and resizes it to 64x64 (area), so ``pixels_sha256`` hashes exactly that array. A PNG re-encoded with
other compression, chunks, colour type or an alpha channel over the same pixels is the same item.

``phash`` is the 64-bit DCT perceptual hash (32x32 greyscale, the 8x8 lowest frequencies against their median),
written here rather than taken from ``imagehash``: that package pulls SciPy and PyWavelets for a dozen lines of
NumPy. Near-copies (a pixel shifted, recompressed, another rarity frame) land a few bits apart.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

CLIENT_SIZE = 64
_HASH_SIZE = 8
_DCT_SIZE = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix(_DCT_SIZE)


@dataclass(frozen=True)
class ImageKeys:
    pixels_sha256: str
    phash: str


def _client_rgb(image: Image.Image) -> Image.Image:
    rgb = image.convert("RGB")
    if rgb.size != (CLIENT_SIZE, CLIENT_SIZE):
        rgb = rgb.resize((CLIENT_SIZE, CLIENT_SIZE), Image.Resampling.BOX)
    return rgb


def client_pixels(image: Image.Image) -> np.ndarray:
    """The 64x64x3 uint8 BGR array the client feeds its icon model."""
    return np.ascontiguousarray(np.asarray(_client_rgb(image))[:, :, ::-1])


def _phash(rgb: Image.Image) -> str:
    small = np.asarray(
        rgb.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BOX), dtype=np.float64
    )
    low = (_DCT @ small @ _DCT.T)[:_HASH_SIZE, :_HASH_SIZE].ravel()
    return np.packbits(low > np.median(low)).tobytes().hex()


def image_keys(image: Image.Image) -> ImageKeys:
    rgb = _client_rgb(image)
    bgr = np.asarray(rgb)[:, :, ::-1]
    return ImageKeys(hashlib.sha256(np.ascontiguousarray(bgr).tobytes()).hexdigest(), _phash(rgb))


def keys_of_png(png: bytes) -> ImageKeys:
    with Image.open(io.BytesIO(png)) as image:
        return image_keys(image)


def hamming(first: str, second: str) -> int:
    return (int(first, 16) ^ int(second, 16)).bit_count()
