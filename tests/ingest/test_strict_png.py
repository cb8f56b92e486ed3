"""Strict PNG (issue 15): whatever a strict decoder refuses is refused with its reason, although Pillow would
decode it: final chunks cut off (base64 cut short), a bad CRC, trailing data after IEND."""

import base64
import struct
import zlib

import pytest

from services.ingest.domain import ICON_LIMITS, ImageRejected, check_png, decode_base64, png_structure_problem
from tests.ingest.bodies import bulk_body, icon_item, knowledge_body
from tests.utils.images import make_png

GOOD = make_png(64, 64, seed=3)
IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def with_text_chunk(png: bytes, crc: int | None = None) -> bytes:
    """``png`` with a tEXt chunk before IEND (Pillow reads it, and skips its CRC when told to)."""
    return png[: -len(IEND)] + chunk(b"tEXt", b"Comment\x00hello", crc) + IEND


def test_a_sound_png_has_no_structure_problem():
    assert png_structure_problem(GOOD) is None
    assert png_structure_problem(with_text_chunk(GOOD)) is None


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (GOOD[: -len(IEND)], "the IEND chunk is missing"),
        (GOOD[:-4], "the data ends inside a chunk header"),
        (with_text_chunk(GOOD)[: -len(IEND) - 6], "chunk tEXt at byte"),
        (with_text_chunk(GOOD, crc=1), "chunk tEXt at byte"),
        (GOOD[:-4] + b"\x00\x00\x00\x00", "chunk IEND at byte"),
        (GOOD + b"\x00", "1 bytes of trailing data follow the IEND chunk"),
        (GOOD + IEND, "12 bytes of trailing data"),
        (GOOD[:8] + IEND, "the first chunk is IEND, not IHDR"),
        (GOOD[:33] + IEND, "there is no IDAT chunk"),
    ],
)
def test_what_a_strict_decoder_refuses_is_refused_with_its_reason(data, words):
    with pytest.raises(ImageRejected) as rejected:
        check_png(data, ICON_LIMITS)
    assert rejected.value.code == "corrupt_png"
    assert "PNG is truncated or corrupt" in str(rejected.value) and words in str(rejected.value)


def test_every_crop_whose_base64_was_cut_short_is_refused():
    """The issue's 28 records: base64 cut by 4 to 18 characters, inside the final chunk, past the pixel data."""
    for seed in range(28):
        b64 = base64.b64encode(make_png(48, 48, seed)).decode()
        cut = b64[: -(4 * (1 + seed % 4) + seed % 3)]
        with pytest.raises(ImageRejected) as rejected:
            check_png(decode_base64(cut), ICON_LIMITS)
        assert rejected.value.code == "corrupt_png"


async def test_a_crop_cut_short_is_rejected_alone_with_its_reason(memory):
    cut = base64.b64encode(make_png(64, 64, 9)[: -len(IEND)]).decode()
    response = await memory.client.post(
        "/contribute/bulk-crops", json=bulk_body([icon_item(1), icon_item(2, crop_png_b64=cut)])
    )
    assert response.status_code == 200
    assert response.json()["rejected_reasons"] == [
        "item 1: PNG is truncated or corrupt (the IEND chunk is missing (the data ends early))"
    ]


async def test_base64_holding_a_character_outside_ascii_is_a_400_not_a_500(memory):
    response = await memory.client.post("/contribute", json=knowledge_body(crop_png_b64="\u00e9" * 200))
    assert response.status_code == 400
    assert response.json()["detail"][0] == {
        "loc": ["body", "crop_png_b64"],
        "msg": "image is not valid base64",
        "type": "not_base64",
    }
