import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.ingest.domain import (
    ICON_LIMITS,
    SCREENSHOT_LIMITS,
    TEXT_CROP_LIMITS,
    ImageLimits,
    ImageRejected,
    _pixel_std,
    check_png,
    clean_install_id,
    clean_text,
    contribution_id,
    decode_base64,
)
from tests.utils.images import make_png


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG declaring a huge canvas, a few kilobytes on the wire."""
    raw = zlib.compress(b"\x00" * ((width // 8 + 1) * 64), 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_a_good_crop_passes_with_its_sha256_and_size():
    data = make_png(64, 48, seed=1)
    image = check_png(data, ICON_LIMITS)
    assert (image.width, image.height) == (64, 48)
    assert len(image.sha256) == 64


@pytest.mark.parametrize(
    ("data", "limits", "code", "words"),
    [
        (b"GIF89a" + b"\x00" * 200, ICON_LIMITS, "not_png", "signature"),
        (make_png(seed=2)[:-40], ICON_LIMITS, "corrupt_png", "truncated or corrupt"),
        (make_png(seed=3)[:300], ICON_LIMITS, "corrupt_png", "truncated or corrupt"),
        (png_of(np.full((32, 32, 3), 128, np.uint8)), ICON_LIMITS, "near_uniform", "near-uniform"),
        (make_png(12, 12, seed=4), ICON_LIMITS, "too_small", "at least 16x16"),
        (make_png(40, 8, seed=5), TEXT_CROP_LIMITS, "too_small", "at least 50x10"),
        (bomb_png(7681, 4320), SCREENSHOT_LIMITS, "too_many_pixels", "7681x4320"),
        (bomb_png(30000, 30000), SCREENSHOT_LIMITS, "too_many_pixels", "the limit is 33177600 pixels"),
        (make_png(64, 64, seed=6), ImageLimits(max_bytes=1000), "too_many_bytes", "the limit is 1000"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(data, limits, code, words):
    with pytest.raises(ImageRejected) as rejected:
        check_png(data, limits)
    assert rejected.value.code == code
    assert words in str(rejected.value)


def test_a_crc_error_is_corruption():
    data = bytearray(make_png(seed=7))
    data[40] ^= 0xFF
    with pytest.raises(ImageRejected, match="corrupt"):
        check_png(bytes(data), ICON_LIMITS)


def test_the_uniformity_threshold_is_the_population_standard_deviation_of_all_values():
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16] = 19  # values 0 and 19 in equal numbers: population std exactly 9.5
    with pytest.raises(ImageRejected, match="9.5"):
        check_png(png_of(pixels), ICON_LIMITS)
    pixels[:, :16] = 21  # std 10.5
    check_png(png_of(pixels), ICON_LIMITS)


def test_base64_is_checked():
    assert decode_base64("aGVsbG8=") == b"hello"
    with pytest.raises(ImageRejected, match="base64"):
        decode_base64("not base64 at all!!")


def test_text_and_install_ids_are_cleaned_as_the_old_backend_did():
    assert clean_install_id("abc-DEF_123 !@#") == "abc-DEF_123"
    assert clean_text("  Phaser\x00 Array\t\n ") == "Phaser Array"
    assert clean_text("\x01\x02") == ""


def test_contribution_ids_are_deterministic_and_distinct():
    assert contribution_id("icon", "i", "sha", "Phaser") == contribution_id("icon", "i", "sha", "Phaser")
    assert contribution_id("icon", "i", "sha", "Phaser") != contribution_id("icon", "i", "sha", "Torpedo")
    assert contribution_id("icon", "ab", "c") != contribution_id("icon", "a", "bc")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_uniformity_is_measured_on_the_rgb_values_whatever_the_png_mode(mode):
    """The histogram shortcut gives numpy's std of the RGB pixels, for every mode clients may send."""
    rng = np.random.default_rng(7)
    for scale in (3, 40, 255):
        array = (rng.random((24, 40, 3)) * scale).astype(np.uint8)
        image = Image.fromarray(array).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        decoded = Image.open(io.BytesIO(buffer.getvalue()))
        expected = np.asarray(decoded.convert("RGB"), dtype=np.float64).std()
        assert _pixel_std(decoded.convert("RGB").histogram()) == pytest.approx(expected, abs=1e-9)
