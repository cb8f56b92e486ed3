"""Pure rules of accepting a contribution: text cleaning, image checks, contribution ids. No I/O."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import io
import ipaddress
import re
import struct
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.imagekeys import ImageKeys, image_keys

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_SLOTS = frozenset({"Ship Type", "Ship Tier"})
POSITION_ONLY_SLOTS = frozenset({"Ship Name"})
KNOWN_SCREEN_TYPES = (
    "SPACE_EQ",
    "GROUND_EQ",
    "TRAITS",
    "BOFFS",
    "SPECIALIZATIONS",
    "SPACE_MIXED",
    "GROUND_MIXED",
)
_INSTALL_ID_DROP = re.compile(r"[^A-Za-z0-9_-]")
_BASE64_LINE_BREAKS = re.compile(r"[\r\n]")
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


class ImageRejected(ValueError):
    """The image cannot be used; the message says why in words a client developer can act on, and ``code``
    names the rule (a bounded set, used as a metrics label)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageLimits:
    """What an endpoint accepts of an image. ``max_pixels`` is checked on the PNG header, before a pixel is
    decoded. ``stored_min_side``: an image whose shorter side is longer is stored downscaled (aspect kept) to
    that shorter side; its sha256 stays the one of the bytes the client sent (the item's key)."""

    max_bytes: int
    min_width: int = 1
    min_height: int = 1
    max_pixels: int = 4096 * 4096
    min_std: float = 10.0
    stored_min_side: int | None = None
    identify: bool = False  # compute the crop's identity by pixels and its pHash (icon crops: voting's item)


# What training uses bounds what a worker decodes: icons are trained at 64x64, so icon and knowledge crops up to
# 256x256 (a 4K screen's icons) are plenty; text crops are lines of text; the screen model sees 224x224, but
# players' screens go up to 8K and super-ultrawide (5120x1440, 5120x2160), so screenshots are allowed 7680x4320
# worth of pixels, decoded at low priority and stored small. ``screen_rgb`` (trainer) squeezes a screenshot to 224x224 with
# INTER_AREA: stored with its shorter side at 224, neither axis is ever upsampled there.
SCREEN_MODEL_SIDE = 224
ICON_LIMITS = ImageLimits(max_bytes=150_000, min_width=16, min_height=16, max_pixels=256 * 256, identify=True)
TEXT_CROP_LIMITS = ImageLimits(max_bytes=150_000, min_width=50, min_height=10, max_pixels=2048 * 256)
KNOWLEDGE_LIMITS = ImageLimits(max_bytes=150_000, max_pixels=256 * 256)
SCREENSHOT_LIMITS = ImageLimits(
    max_bytes=2_500_000,
    min_width=64,
    min_height=64,
    max_pixels=7680 * 4320,
    stored_min_side=SCREEN_MODEL_SIDE,
)


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    sha256: str
    width: int
    height: int
    keys: ImageKeys | None = None  # with ``ImageLimits.identify``


def clean_install_id(raw: str) -> str:
    return _INSTALL_ID_DROP.sub("", raw)


def clean_text(raw: str) -> str:
    """Remove control characters (Unicode category C*) and surrounding white space."""
    return "".join(ch for ch in raw if not unicodedata.category(ch).startswith("C")).strip()


class TextRejected(ValueError):
    """A text that cannot be accepted as sent: the message names the field and the character by its code point
    (never the text itself), and ``code`` names the rule (a metrics label)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_NEVER_STORED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # categories Cc and Cs
_CATEGORY_WORDS = {
    "Cc": "a control character",
    "Cs": "a lone surrogate",
    "Cf": "a format character: bidi control or zero-width",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zs": "a space other than U+0020",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


@dataclass(frozen=True)
class TextRule:
    """What one text field of the wire may hold, and how it is cleaned.

    No text may hold a control character (NUL included) or a lone surrogate: Postgres stores neither (in text
    or jsonb), so answering 2xx to one would lose the contribution downstream. A name (a label, slot, screen or
    build type) must also be printable throughout: bidi controls and zero-width characters make two different
    names look alike. What is accepted is NFC-normalised and stripped, and then within ``max_length``."""

    field: str
    max_length: int
    name: bool = True
    required: bool = True

    def _first_refused(self, text: str) -> int | None:
        if self.name:
            return None if text.isprintable() else next(i for i, c in enumerate(text) if not c.isprintable())
        found = _NEVER_STORED.search(text)
        return found.start() if found else None

    def clean(self, text: str) -> str:
        position = self._first_refused(text)
        if position is not None:
            char = text[position]
            words = _CATEGORY_WORDS.get(unicodedata.category(char), "not printable")
            raise TextRejected(
                "unprintable_text",
                f"{self.field} contains non-printable character U+{ord(char):04X} ({words}) at position {position}",
            )
        cleaned = unicodedata.normalize("NFC", text).strip()
        if self.required and not cleaned:
            raise TextRejected("empty_text", f"{self.field} is empty once surrounding spaces are removed")
        if len(cleaned) > self.max_length:
            raise TextRejected(
                "text_too_long",
                f"{self.field} is {len(cleaned)} characters once normalised (NFC); the limit is {self.max_length}",
            )
        return cleaned


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not; line breaks are tolerated, any other stray character is not."""
    if "\n" in text or "\r" in text:
        text = _BASE64_LINE_BREAKS.sub("", text)
    if "-" in text or "_" in text:
        if "+" in text or "/" in text:
            raise ImageRejected(
                "not_base64", "image is not valid base64 (mixes the standard and URL-safe alphabets)"
            )
        text = text.translate(_URLSAFE_TO_STANDARD)
    try:
        return binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise ImageRejected("not_base64", "image is not valid base64") from None


_LEVELS = np.arange(256, dtype=np.float64)


def _pixel_std(rgb_histogram: list[int]) -> float:
    """Standard deviation of every channel value of an RGB image, from its 3 x 256-bin histogram: the same
    figure as ``numpy.asarray(image).std()``, without copying the pixels out of Pillow (a third of the check)."""
    counts = np.asarray(rgb_histogram, dtype=np.float64).reshape(3, 256).sum(axis=0)
    total = counts.sum()
    mean = counts @ _LEVELS / total
    return float(np.sqrt(max(counts @ (_LEVELS - mean) ** 2 / total, 0.0)))


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (which must come first), read without decoding a pixel."""
    if len(data) < 24 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
        raise ImageRejected("corrupt_png", "PNG is truncated or corrupt (the IHDR header chunk is not first)")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels",
        )
    if width < limits.min_width or height < limits.min_height:
        raise ImageRejected(
            "too_small",
            f"image is {width}x{height} pixels; at least {limits.min_width}x{limits.min_height} is required",
        )


def stored_size(width: int, height: int, min_side: int | None) -> tuple[int, int] | None:
    """The size an image is stored at when it is larger than needed (shorter side ``min_side``, aspect kept,
    rounded), or None to store it as sent."""
    if min_side is None or min(width, height) <= min_side:
        return None
    scale = min_side / min(width, height)
    return max(min_side, round(width * scale)), max(min_side, round(height * scale))


def _png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk_name(kind: bytes) -> str:
    return kind.decode("ascii") if kind.isalpha() else f"0x{kind.hex()}"


def png_structure_problem(data: bytes) -> str | None:
    """What a strict PNG decoder refuses in the chunk layout, in words (None when sound): each chunk complete
    with a matching CRC, IHDR first, IDAT present, IEND last and nothing after it. Pillow decodes a PNG whose
    final chunks were cut off, as long as its pixel data is complete, and ignores what follows IEND."""
    view, position, kinds = memoryview(data), len(PNG_SIGNATURE), []
    while position < len(data):
        if position + 12 > len(data):
            return f"the data ends inside a chunk header at byte {position}"
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            return f"chunk {_chunk_name(kind)} at byte {position} is cut short ({length} data bytes declared)"
        if zlib.crc32(view[position + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            return f"chunk {_chunk_name(kind)} at byte {position} has a bad CRC"
        if not kinds and kind != b"IHDR":
            return f"the first chunk is {_chunk_name(kind)}, not IHDR"
        kinds.append(kind)
        position = end
        if kind == b"IEND":
            if b"IDAT" not in kinds:
                return "there is no IDAT chunk"
            if position < len(data):
                return f"{len(data) - position} bytes of trailing data follow the IEND chunk"
            return None
    return "the IEND chunk is missing (the data ends early)"


def check_png(data: bytes, limits: ImageLimits) -> CheckedImage:
    """Accept only a complete, sane, non-uniform PNG within the limits; raise ``ImageRejected`` otherwise.

    The pixel limits are checked on the header before anything is decoded (far below Pillow's own
    decompression-bomb limit), so a small file that would inflate to a huge image costs nothing."""
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_many_bytes", f"PNG is {len(data)} bytes; the limit is {limits.max_bytes}")
    if not data.startswith(PNG_SIGNATURE):
        raise ImageRejected("not_png", "not a PNG (the 8-byte PNG signature is missing)")
    if (problem := png_structure_problem(data)) is not None:
        raise ImageRejected("corrupt_png", f"PNG is truncated or corrupt ({problem})")
    width, height = png_dimensions(data)
    check_dimensions(width, height, limits)
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        histogram = rgb.histogram()
    except UnidentifiedImageError:  # its message names a Python object, of no use to a client
        raise ImageRejected("corrupt_png", "PNG is truncated or corrupt (no decodable PNG header)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected("corrupt_png", f"PNG is truncated or corrupt ({error})") from None
    std = _pixel_std(histogram)
    if std < limits.min_std:
        raise ImageRejected(
            "near_uniform", f"image is near-uniform (pixel standard deviation {std:.1f} < {limits.min_std:g})"
        )
    size = stored_size(width, height, limits.stored_min_side)
    stored = data if size is None else _png_of(rgb.resize(size, Image.Resampling.BOX))
    keys = image_keys(rgb) if limits.identify else None
    return CheckedImage(
        data=stored, sha256=hashlib.sha256(data).hexdigest(), width=width, height=height, keys=keys
    )


def contribution_id(kind: str, *parts: str) -> str:
    """Deterministic id of a contribution: a resend of the same thing gets the same id (and message id)."""
    return hashlib.sha256("\x1f".join((kind, *parts)).encode()).hexdigest()[:32]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_PORT = re.compile(r"[0-9]{1,5}")


def parse_hop(hop: str) -> Address | None:
    """One ``X-Forwarded-For`` entry (or a peer): ``ip``, ``ip:port``, ``[v6]`` or ``[v6]:port``; None when it
    is none of these. An IPv4-mapped IPv6 address is its IPv4 address (else every IPv4 client behind a
    dual-stack socket would share one /64), and an IPv6 zone is dropped."""
    hop = hop.strip()
    if hop.startswith("["):
        host, bracket, rest = hop[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
    elif hop.count(":") == 1:
        host, _, port = hop.partition(":")
        if not _PORT.fullmatch(port):
            return None
    else:
        host = hop
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped or ipaddress.IPv6Address(address.packed)
    return address


def _trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address in network for network in proxies)


def client_address(
    peer: str | None,
    forwarded_for: Sequence[str],
    trusted_proxies: Sequence[Network],
    proxy_hops: int | None = None,
) -> Address | None:
    """The address quotas are charged to (None: the server gave no peer address).

    It is the direct peer, unless the peer is a trusted proxy: then ``X-Forwarded-For`` is read, every header
    line of it in order (a proxy that adds a line rather than appending to the client's must not let the
    client choose). Left-most hops are client-written, so the client is, with ``proxy_hops`` (how many proxies
    in front of ingest append to the header) set, the hop that many from the right; unset, the right-most hop
    that is not itself a trusted proxy. A chosen hop that is not an address falls back to the peer."""
    address = parse_hop(peer) if peer is not None else None
    if address is None or not forwarded_for or not _trusted(address, trusted_proxies):
        return address
    hops = [hop for line in forwarded_for for hop in line.split(",") if hop.strip()]
    if not hops:
        return address
    if proxy_hops:
        return parse_hop(hops[max(len(hops) - proxy_hops, 0)]) or address
    for hop in reversed(hops):
        forwarded = parse_hop(hop)
        if forwarded is None:
            return address
        if not _trusted(forwarded, trusted_proxies):
            return forwarded
    return address


def origin_network(address: Address, ipv4_prefix: int, ipv6_prefix: int) -> Network:
    """The network one client origin is taken to be: the address's ``/ipv4_prefix`` or ``/ipv6_prefix``
    (a home IPv6 connection gets a whole /64, so counting single IPv6 addresses counts nothing)."""
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return ipaddress.ip_network((address, prefix), strict=False)


def origin_key(network: Network | None, secret: bytes) -> str:
    """What an origin is counted and stored under: HMAC-SHA256 of its network under ``secret``, in hex. The
    address cannot be read back from it without the secret, which is never stored beside it."""
    return hmac.new(secret, str(network or "unknown").encode(), hashlib.sha256).hexdigest()
