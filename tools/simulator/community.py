"""A community workload for the consensus: every kind of contribution a real community sends, in arrival order,
as the contribution events ingest publishes, with the truth of every item and the attacks marked.

What it draws (all seeded; times are a fraction ``t`` of a 30-day window):

- **Items** with 2-4 rendering variants each, popularity Zipf-like. A share of the items come in **look-alike
  pairs** (the second icon is the first with one shape's colour nudged). A few **new items** appear only after
  a game patch (``t >= NEW_ITEMS_AT``); no model knows them before the last release.
- **The client's model** (``model_guess`` on icon crops; the name a knowledge confirmation confirms): one guess
  per (crop pixels, release), right more often with each release (``RELEASES``), wrong mostly on look-alikes
  (where it says the twin's name). It is the same model for honest users and trolls, so it is usually right
  where a troll overrides it.
- **Honest installs** with log-normal activity; each joins at some time and stays. Most sit behind their own
  network origin, a few households share one. A user mostly keeps a right model guess, corrects a wrong one,
  but sometimes lets a wrong guess stand (often on look-alikes): honest mistakes come mostly from look-alikes.
- **Crops**: the base variants (voted by many); **near-copies** (the variant shifted a pixel, a little noise:
  new pixels, a visual family member) seen by one install each; **re-encodings** (the same pixels as PNG bytes
  of another client build: other compress level, RGBA, an extra chunk; new ``crop_sha256``, same
  ``pixels_sha256``): each install's client build encodes its crops one way.
- **Attacks**: spammers (random labels on every kind); a **farming group** that votes correctly on settled
  items, then flips every base crop of a few settled, less popular items, and labels near-copies of known items
  nobody labelled with their look-alike twin's name, each member alone on its own, every client guess of both
  forged to the wrong label; **fresh-install swarms** of 2, 5 and
  10 installs, from one origin and from as many, each planting its own ``Sybil Planted Label <k>`` on
  re-encodings of settled crops, or on crops nobody labelled (near-copies of settled crops, and base crops no
  one had voted on yet); their clients' model guess is honest, except a share forged to the planted label; an
  **OCR raw-text attack** (a few installs map raw texts that one or two honest users corrected to a wrong name);
  a **screen troll** (two installs of one origin mislabelling their own screenshots).
- **The published model** (what the trainer's predictor answers, ``Workload.published_prediction``): the same
  model as the clients' of each release, published on the server from ``first_release_at`` (unavailable
  before), run on an item's first stored image: the icon model on icon and knowledge crops, a screen model on
  screenshots. Its confidence is high when right and spread lower when wrong (look-alikes, new items before the
  last release); whether it trained on an item is the benchmark's to say (what was accepted at the release).
- **Forged existing-label swarms**: 3, 5 and 10 fresh installs of as many origins label crops nobody labelled
  with an existing item's name (the look-alike twin's where there is one) and forge every client guess to it.
- **A moderator** settles the first honest screenshot of each screen type (``ItemModerated``, gold): what a
  published screen model would know; no screenshot has a second voter.

Icon events carry ``pixels_sha256`` and ``phash`` from ``shared.imagekeys.keys_of_png`` (what ingest computes).
Truth is kept per scoring unit: an icon crop by its ``crop_sha256`` (every distinct PNG sent), an OCR item by
``slot\\x1fraw_text``, a knowledge item by ``phash`` (pHashes shared by two items are never used), a screenshot by
``image_sha256``.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from shared.events import (
    Contribution,
    Event,
    IconCropContributed,
    ItemModerated,
    KnowledgeContributed,
    OcrCorrectionContributed,
    ScreenTypeContributed,
)
from shared.imagekeys import keys_of_png
from tools.simulator.workload import icon_pixels

START = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = timedelta(days=30)
KEY_SEPARATOR = "\x1f"
PLANTED = "Sybil Planted Label"
SLOTS = ("Fore Weapon", "Aft Weapon", "Hull", "Engine", "Shield", "Sensor")
SHIP_TYPES = ("Destroyer", "Cruiser", "Battleship", "Carrier", "Frigate", "Corvette", "Dreadnought", "Tender")
SHIP_TIERS = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")
SCREEN_TYPES = ("port", "battle", "results", "armory", "tech_tree", "loading", "battle_stats", "dock")
SCREEN_CONFUSED = {"results": "battle_stats", "battle_stats": "results", "port": "dock", "dock": "port"}
# Model releases: (from t, error on look-alike items, error elsewhere). The last release knows the new items.
RELEASES = ((0.0, 0.45, 0.04), (0.4, 0.30, 0.02), (0.75, 0.15, 0.008))
NEW_ITEMS_AT = 0.45
SWARM_SIZES = (2, 5, 10)
SWARM_MODES = ("one-origin", "many-origins")
SWARM_TARGETS = ("re-encoded", "new-crop")
FORGED_SWARM_SIZES = (3, 5, 10)
FORGED_TARGET = "existing-label"
SCREEN_MODEL_ERROR = (0.12, 0.06, 0.03)  # per release, like RELEASES: the screen model's error
ICON, KNOWLEDGE, OCR, SCREEN = "icon", "knowledge", "ocr", "screen"
KINDS = (ICON, KNOWLEDGE, OCR, SCREEN)


@dataclass(frozen=True)
class CommunitySpec:
    items: int = 250
    installs: int = 100
    contributions: int = 5000  # honest and spammer contributions; the attacks come on top
    kind_mix: tuple[float, float, float, float] = (0.72, 0.18, 0.06, 0.04)  # icon, knowledge, ocr, screen
    lookalike_share: float = 0.2  # items that belong to a look-alike pair
    new_item_share: float = 0.04
    popularity_exponent: float = 0.6  # item popularity ~ 1 / rank ** exponent
    reencoding_builds: float = 0.1  # installs whose client build writes other PNG bytes
    near_copy_share: float = 0.05  # honest icon/knowledge votes on a near-copy of a variant
    household_share: float = 0.06  # honest installs that share their origin with another
    spammer_share: float = 0.04
    group_size: int = 5
    group_clean_votes: int = 30
    farmed_items: int = 4
    farming_forges_guesses: bool = (
        True  # the farming group's flips carry client guesses forged to their label
    )
    farmed_new_crops: int = 3  # per member: near-copies nobody labelled, labelled alone with a forged guess
    swarm_crops: int = 5  # crops each of the 12 swarms plants on
    forged_guess_share: float = 0.2  # swarm votes whose client forged model_guess to the planted label
    ocr_attackers: int = 3
    ocr_attacked_texts: int = 4
    screen_troll_screens: int = 6
    moderated_screens: int = 1  # per screen type: early honest screenshots a moderator settles (gold)
    forged_swarm_crops: int = 5  # crops each forged existing-label swarm labels
    first_release_at: float = 0.1  # the published model reaches the server (predictions) from here
    seed: int = 1


SCALES = {
    "small": CommunitySpec(),
    "issue": CommunitySpec(
        items=1000,
        installs=200,
        contributions=20000,
        group_size=6,
        group_clean_votes=60,
        farmed_items=10,
        swarm_crops=10,
        ocr_attacked_texts=5,
        screen_troll_screens=10,
    ),
}


def swarm_name(size: int, mode: str, target: str) -> str:
    return f"swarm {size:>2} {mode} {target}"


def swarm_names() -> list[tuple[str, int, str, str]]:
    """Every swarm the workload draws: (name, size, origin mode, target)."""
    planting = [(s, m, t) for s in SWARM_SIZES for m in SWARM_MODES for t in SWARM_TARGETS]
    forged = [(s, "many-origins", FORGED_TARGET) for s in FORGED_SWARM_SIZES]
    return [(swarm_name(*spec), *spec) for spec in planting + forged]


def origin_key(seed: int, network: str) -> str:
    """A keyed-hash-like origin (what ingest derives from the client's /24 or /64)."""
    return hashlib.sha256(f"sim-origin:{seed}:{network}".encode()).hexdigest()[:32]


# --- images --------------------------------------------------------------------------------------------------


def near_copy(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same rendering a pixel off and with slight sensor noise: new pixels, near-identical to the eye."""
    axis = int(rng.integers(2))
    shifted = np.roll(pixels, int(rng.choice([-1, 1])), axis=axis).astype(np.int16)
    noise = rng.integers(-3, 4, pixels.shape) * (rng.random(pixels.shape[:2]) < 0.3)[:, :, None]
    return np.clip(shifted + noise, 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray, encoding: int) -> bytes:
    """PNG bytes of ``pixels`` as client build ``encoding`` writes them: 0 is the plain RGB default; any other
    build uses another compress level, RGBA every other build, and its own text chunk, so each encoding gives
    new bytes over the same pixels."""
    image = Image.fromarray(pixels, "RGB")
    if encoding == 0:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if encoding % 2:
        image = image.convert("RGBA")
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("Software", f"warp-client build {encoding}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=(1, 9, 3, 0)[encoding % 4], pnginfo=chunks)
    return buffer.getvalue()


@functools.lru_cache(maxsize=4096)
def text_png(text: str, variant: int) -> bytes:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{text}:{variant}".encode()).digest()[:8]))
    image = Image.new("RGB", (120, 20), tuple(int(c) for c in rng.integers(10, 50, 3)))
    ImageDraw.Draw(image).text((3 + variant, 4), text, fill=(230, 230, 230))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def screen_png(screen_type: int, rng: np.random.Generator) -> bytes:
    layout = np.random.default_rng(1000 + screen_type)
    pixels = np.broadcast_to(layout.integers(0, 256, 3).astype(np.uint8), (54, 96, 3)).copy()
    for _ in range(3):
        y, x = int(layout.integers(0, 40)), int(layout.integers(0, 80))
        pixels[y : y + 12, x : x + 16] = layout.integers(0, 256, 3)
    pixels[rng.integers(0, 54, 8), rng.integers(0, 96, 8)] = rng.integers(0, 256, (8, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def ocr_garbles(truth: str, rng: np.random.Generator, count: int = 10) -> list[str]:
    """Raw OCR readings of ``truth``: look-alike characters swapped, a character lost, case and spacing off."""
    swaps = {
        "O": "0",
        "o": "0",
        "I": "1",
        "l": "1",
        "i": "l",
        "S": "5",
        "s": "5",
        "B": "8",
        "e": "c",
        "V": "U",
    }
    readings: list[str] = []
    for _ in range(count * 6):
        chars = list(truth)
        for _ in range(int(rng.integers(1, 3))):
            at = int(rng.integers(len(chars)))
            roll = rng.random()
            if roll < 0.55 and chars[at] in swaps:
                chars[at] = swaps[chars[at]]
            elif roll < 0.75 and len(chars) > 2:
                del chars[at]
            elif roll < 0.9:
                chars.insert(at, " ")
            else:
                chars[at] = chars[at].swapcase()
        reading = "".join(chars).strip()
        if reading and reading != truth and reading not in readings:
            readings.append(reading)
        if len(readings) == count:
            break
    return readings


# --- the workload --------------------------------------------------------------------------------------------


@dataclass
class Crop:
    item: int
    pixels: np.ndarray
    pngs: dict[int, tuple[bytes, str, str, str]] = field(default_factory=dict)  # encoding -> png, sha, px, ph


@dataclass
class Workload:
    spec: CommunitySpec
    names: list[str]
    twin: dict[int, int]  # look-alike pairs, both ways
    new_items: set[int]
    events: list[Contribution]  # arrival order
    truth: dict[str, dict[str, str]]  # kind -> scoring unit -> the right label
    icon_pixels_key: dict[str, str]  # crop_sha256 -> pixels_sha256
    attacked: dict[str, dict[str, str]]  # kind -> scoring unit -> the attack on it
    planted: dict[str, tuple[str, str]]  # crop_sha256 -> (planted label, swarm)
    roles: dict[
        str, str
    ]  # install -> honest | spammer | farming | <swarm name> | ocr-attacker | screen-troll
    origins: dict[str, str]  # install -> origin
    model_guess: Callable[[int, int, float], str]  # (item, crop id, t) -> the client model's guess
    guesses: list[tuple[float, bool, bool]] = field(default_factory=list)  # icon votes: t, lookalike, right
    moderations: list[ItemModerated] = field(default_factory=list)  # a moderator's decisions (gold), in order
    # (item kind, item key, t) -> the published model's (label, confidence, snapshot ref it would be trained
    # under), None before its first release or for an item it cannot see
    published_prediction: Callable[[str, str, float], tuple[str, float, tuple[str, str]] | None] | None = None
    model_releases: tuple[float, ...] = ()  # when each published model version reaches the server
    # release number -> what it was trained on besides the community's accepted labels: a base crop of every
    # item it knows (its class list), as (kind, key, label)
    model_training: Callable[[int], list[tuple[str, str, str]]] | None = None

    def stream(self) -> list[Event]:
        """Contributions and moderator decisions together, in arrival order."""
        return sorted([*self.events, *self.moderations], key=lambda event: event.occurred_at)

    def unit_of(self, event: Contribution) -> tuple[str, str]:
        match event:
            case IconCropContributed():
                return ICON, event.crop_sha256
            case KnowledgeContributed():
                return KNOWLEDGE, event.phash
            case OcrCorrectionContributed():
                return OCR, f"{event.slot}{KEY_SEPARATOR}{event.raw_text}"
            case ScreenTypeContributed():
                return SCREEN, event.image_sha256
        raise TypeError(type(event).__name__)


class _Builder:
    def __init__(self, spec: CommunitySpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        rng = self.rng
        self.names = [f"Item {i:04d}" for i in range(spec.items)]
        order = rng.permutation(spec.items)
        n_pairs = round(spec.items * spec.lookalike_share / 2)
        self.twin: dict[int, int] = {}
        for a, b in zip(order[:n_pairs], order[n_pairs : 2 * n_pairs], strict=True):
            self.twin[int(a)], self.twin[int(b)] = int(b), int(a)
        self.new_items = {
            int(i) for i in order[2 * n_pairs : 2 * n_pairs + round(spec.items * spec.new_item_share)]
        }
        popularity = 1.0 / np.arange(1, spec.items + 1) ** spec.popularity_exponent
        self.popularity = popularity[rng.permutation(spec.items)]
        self.old_p = np.where([i in self.new_items for i in range(spec.items)], 0.0, self.popularity)
        self.old_p /= self.old_p.sum()
        self.all_p = self.popularity / self.popularity.sum()
        self.slot = [SLOTS[int(rng.integers(len(SLOTS)))] for _ in range(spec.items)]
        self.crops: list[Crop] = []
        self.variants: list[list[int]] = []
        for item in range(spec.items):
            first = min(item, self.twin.get(item, item))
            design = spec.seed * 100_003 + first
            nudge = 0 if item == first else 28
            ids = []
            for variant in range(int(rng.integers(2, 5))):
                ids.append(self._new_crop(item, icon_pixels(design, variant, nudge)))
            self.variants.append(ids)
        self.events: list[tuple[float, Contribution]] = []
        self.truth: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self.attacked: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self.planted: dict[str, tuple[str, str]] = {}
        self.pixels_key: dict[str, str] = {}
        self.roles: dict[str, str] = {}
        self.origins: dict[str, str] = {}
        self.voted: set[tuple[str, str, str]] = set()  # (install, kind, unit)
        self.guesses: list[tuple[float, bool, bool]] = []
        self.phash_items: dict[str, set[int]] = defaultdict(set)
        for item, ids in enumerate(self.variants):
            for crop in ids:
                self.phash_items[self.png(crop, 0)[3]].add(item)
        self.ocr_readings = {
            (slot, truth): ocr_garbles(truth, rng, count=16)
            for slot, truths in (("Ship Type", SHIP_TYPES), ("Ship Tier", SHIP_TIERS))
            for truth in truths
        }
        readers = Counter(r for readings in self.ocr_readings.values() for r in readings)
        self.ocr_readings = {k: [r for r in v if readers[r] == 1] for k, v in self.ocr_readings.items()}
        self.serial = 0
        self.farmed: set[int] = set()
        self.pixels_crop: dict[str, int] = {}  # icon item key -> a crop with those pixels
        self.knowledge_crop: dict[str, int] = {}  # knowledge pHash -> the first crop sent for it
        self.screen_truth: dict[str, int] = {}  # screenshot sha256 -> its screen type
        self.model_releases = tuple(max(start, spec.first_release_at) for start, _, _ in RELEASES)

    # crops and their PNGs

    def _new_crop(self, item: int, pixels: np.ndarray) -> int:
        self.crops.append(Crop(item, pixels))
        return len(self.crops) - 1

    def png(self, crop: int, encoding: int) -> tuple[bytes, str, str, str]:
        held = self.crops[crop].pngs.get(encoding)
        if held is None:
            data = encode_png(self.crops[crop].pixels, encoding)
            keys = keys_of_png(data)
            held = (data, hashlib.sha256(data).hexdigest(), keys.pixels_sha256, keys.phash)
            self.crops[crop].pngs[encoding] = held
        return held

    def near_copy_of(self, item: int) -> int:
        base = self.variants[item][int(self.rng.integers(len(self.variants[item])))]
        return self._new_crop(item, near_copy(self.crops[base].pixels, self.rng))

    # the client's model

    def model_guess(self, item: int, crop: int, t: float) -> str:
        """One release's guess for one crop is always the same: drawn from a hash of (seed, crop, release)."""
        release = max(i for i, r in enumerate(RELEASES) if r[0] <= t)
        digest = hashlib.blake2b(f"{self.spec.seed}:{crop}:{release}".encode(), digest_size=16).digest()
        chance = int.from_bytes(digest[:8]) / 2**64
        other = (item + 1 + int.from_bytes(digest[8:]) % (self.spec.items - 1)) % self.spec.items
        if item in self.new_items and release < len(RELEASES) - 1:
            return self.names[self.twin.get(item, other)]
        _, lookalike_error, plain_error = RELEASES[release]
        if item in self.twin:
            return self.names[self.twin[item]] if chance < lookalike_error else self.names[item]
        return self.names[other] if chance < plain_error else self.names[item]

    def release_at(self, t: float) -> int | None:
        """The published model version on the server at ``t`` (an index of RELEASES), None before the first."""
        out = [i for i, at in enumerate(self.model_releases) if at <= t]
        return out[-1] if out else None

    def published_prediction(
        self, kind: str, key: str, t: float
    ) -> tuple[str, float, tuple[str, str]] | None:
        """What the trainer's predictor would answer: the published version's label for the item's first
        stored image and its confidence (high when right; spread lower when wrong, as on look-alikes)."""
        release = self.release_at(t)
        if release is None:
            return None
        if kind == SCREEN:
            if key not in self.screen_truth:
                return None
            truth = self.screen_truth[key]
            chance = self._chance("screen", key, release)
            wrong = chance < SCREEN_MODEL_ERROR[release]
            other = SCREEN_CONFUSED.get(SCREEN_TYPES[truth], SCREEN_TYPES[(truth + 1) % len(SCREEN_TYPES)])
            label = other if wrong else SCREEN_TYPES[truth]
            return label, self._confidence("screen", key, release, not wrong), (SCREEN, key)
        crop = (self.pixels_crop if kind == ICON else self.knowledge_crop).get(key)
        if crop is None:
            return None
        item = self.crops[crop].item
        # the published model is the clients' model of that release: the same answer for the same pixels
        label = self.model_guess(item, crop, self.model_releases[release])
        right = label == self.names[item]
        return label, self._confidence(kind, key, release, right), (ICON, self.png(crop, 0)[2])

    def model_training(self, release: int) -> list[tuple[str, str, str]]:
        """A base crop of every item the release knows (new items only from the last release): the training
        data that gives the published model its classes, beside the community's accepted labels."""
        last = release == len(RELEASES) - 1
        return [
            (ICON, self.png(ids[0], 0)[2], self.names[item])
            for item, ids in enumerate(self.variants)
            if last or item not in self.new_items
        ]

    def _chance(self, *parts: object) -> float:
        digest = hashlib.blake2b(
            ":".join(map(str, (self.spec.seed, *parts))).encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest) / 2**64

    def _confidence(self, kind: str, key: str, release: int, right: bool) -> float:
        """Softmax-like confidence: right answers mostly confident, wrong ones spread over 0.3-0.9."""
        u = self._chance("confidence", kind, key, release)
        return round(0.55 + 0.45 * u**0.35, 4) if right else round(0.3 + 0.6 * u, 4)

    def _other(self, item: int, draw: np.random.Generator) -> int:
        return (item + int(draw.integers(1, self.spec.items))) % self.spec.items

    def honest_label(self, item: int, guess: str) -> str:
        """Keep a right guess (rarely slip to the twin or another item); fix a wrong one, or let it stand."""
        truth = self.names[item]
        if guess == truth:
            if self.rng.random() < 0.01:
                return self.names[self.twin.get(item, self._other(item, self.rng))]
            return truth
        return guess if self.rng.random() < (0.3 if item in self.twin else 0.1) else truth

    # events

    def emit(self, t: float, event_class, install: str, **fields) -> Contribution:
        self.serial += 1
        event = event_class(
            message_id=f"sim{self.spec.seed}-{self.serial}",
            occurred_at=START + WINDOW * t,
            install_id=install,
            origin=self.origins[install],
            **fields,
        )
        self.events.append((t, event))
        return event

    def icon_vote(
        self, t: float, install: str, crop: int, encoding: int, label: str, guess: str | None = None
    ) -> str | None:
        data, sha, pixels_key, phash = self.png(crop, encoding)
        if (install, ICON, sha) in self.voted:
            return None
        self.voted.add((install, ICON, sha))
        item = self.crops[crop].item
        model = self.model_guess(item, crop, t)
        self.guesses.append((t, item in self.twin, model == self.names[item]))
        self.truth[ICON][sha] = self.names[item]
        self.pixels_key[sha] = pixels_key
        self.pixels_crop.setdefault(pixels_key, crop)
        self.emit(
            t,
            IconCropContributed,
            install,
            crop_sha256=sha,
            png=data,
            slot=self.slot[item],
            label=label,
            model_guess=model if guess is None else guess,
            pixels_sha256=pixels_key,
            phash=phash,
        )
        return sha

    def pick_item(self, t: float) -> int:
        return int(self.rng.choice(self.spec.items, p=self.all_p if t >= NEW_ITEMS_AT else self.old_p))

    def pick_crop(self, item: int) -> int:
        if self.rng.random() < self.spec.near_copy_share:
            return self.near_copy_of(item)
        return self.variants[item][int(self.rng.integers(len(self.variants[item])))]

    def honest(self, install: str, t: float, kind: str, spammer: bool, encoding: int) -> None:
        rng = self.rng
        if kind == ICON:
            item = self.pick_item(t)
            crop = self.pick_crop(item)
            guess = self.model_guess(item, crop, t)
            label = (
                self.names[int(rng.integers(self.spec.items))] if spammer else self.honest_label(item, guess)
            )
            self.icon_vote(t, install, crop, encoding, label)
        elif kind == KNOWLEDGE:
            item = self.pick_item(t)
            crop = self.pick_crop(item)
            phash = self.png(crop, 0)[3]
            self.phash_items[phash].add(item)
            if len(self.phash_items[phash]) > 1 or (install, KNOWLEDGE, phash) in self.voted:
                return
            self.voted.add((install, KNOWLEDGE, phash))
            self.knowledge_crop.setdefault(phash, crop)
            guess = self.model_guess(item, crop, t)
            name = (
                self.names[int(rng.integers(self.spec.items))] if spammer else self.honest_label(item, guess)
            )
            self.truth[KNOWLEDGE][phash] = self.names[item]
            data, sha = self.png(crop, encoding)[:2]
            self.emit(
                t,
                KnowledgeContributed,
                install,
                phash=phash,
                crop_sha256=sha,
                png=data,
                item_name=name,
                wrong_name=None if name == guess else guess,
                confirmed=True,
            )
        elif kind == OCR:
            slot, truths = ("Ship Type", SHIP_TYPES) if rng.random() < 0.5 else ("Ship Tier", SHIP_TIERS)
            truth_index = int(rng.integers(len(truths)))
            readings = self.ocr_readings[(slot, truths[truth_index])]
            weights = 1.0 / np.arange(1, len(readings) + 1) ** 0.9
            raw = readings[int(rng.choice(len(readings), p=weights / weights.sum()))]
            if spammer:
                corrected = truths[int(rng.integers(len(truths)))]
            elif (slip := rng.random()) < 0.03:  # a neighbouring tier, another type
                corrected = truths[(truth_index + int(rng.choice([-1, 1]))) % len(truths)]
            elif slip < 0.05 and len(truths[truth_index]) > 3:  # a typo
                at = int(rng.integers(1, len(truths[truth_index])))
                corrected = truths[truth_index][:at] + truths[truth_index][at + 1 :]
            else:
                corrected = truths[truth_index]
            self.ocr_vote(t, install, slot, raw, corrected, truths[truth_index])
        else:
            truth = int(rng.choice(len(SCREEN_TYPES), p=np.array([5, 5, 4, 2, 2, 2, 1, 1]) / 22))
            label = SCREEN_TYPES[truth]
            if spammer:
                label = SCREEN_TYPES[int(rng.integers(len(SCREEN_TYPES)))]
            elif rng.random() < 0.02:
                label = SCREEN_CONFUSED.get(label, SCREEN_TYPES[(truth + 1) % len(SCREEN_TYPES)])
            self.screen_vote(t, install, truth, label)

    def ocr_vote(self, t: float, install: str, slot: str, raw: str, corrected: str, truth: str) -> str | None:
        key = f"{slot}{KEY_SEPARATOR}{raw}"
        if (install, OCR, key) in self.voted:
            return None
        self.voted.add((install, OCR, key))
        self.truth[OCR][key] = truth
        data = text_png(raw, int(self.rng.integers(4)))
        self.emit(
            t,
            OcrCorrectionContributed,
            install,
            crop_sha256=hashlib.sha256(data).hexdigest(),
            png=data,
            slot=slot,
            raw_text=raw,
            corrected_text=corrected,
        )
        return key

    def screen_vote(self, t: float, install: str, truth: int, label: str) -> str:
        data = screen_png(truth, self.rng)
        sha = hashlib.sha256(data).hexdigest()
        self.truth[SCREEN][sha] = SCREEN_TYPES[truth]
        self.screen_truth.setdefault(sha, truth)
        self.emit(t, ScreenTypeContributed, install, image_sha256=sha, png=data, screen_type=label)
        return sha

    # who votes

    def community(self) -> None:
        spec, rng = self.spec, self.rng
        n_spammers = max(1, round(spec.installs * spec.spammer_share))
        installs = [f"i{spec.seed}-{n:04d}" for n in range(spec.installs)]
        households = round(spec.installs * spec.household_share / 2)
        for n, install in enumerate(installs):
            network = f"home-{n // 2}" if n < 2 * households else f"net-{n}"
            self.origins[install] = origin_key(spec.seed, network)
            self.roles[install] = "spammer" if n >= spec.installs - n_spammers else "honest"
        activity = rng.lognormal(0.0, 1.0, spec.installs)
        counts = np.maximum(1, np.round(activity / activity.sum() * spec.contributions)).astype(int)
        kinds = rng.choice(len(KINDS), int(counts.sum()), p=np.array(spec.kind_mix) / sum(spec.kind_mix))
        drawn = 0
        for install, count in zip(installs, counts, strict=True):
            joined = float(rng.uniform(0, 0.7))
            encoding = int(rng.integers(1, 3)) if rng.random() < spec.reencoding_builds else 0
            for t in np.sort(rng.uniform(joined, 1.0, count)):
                self.honest(
                    install, float(t), KINDS[kinds[drawn]], self.roles[install] == "spammer", encoding
                )
                drawn += 1

    def settled_crops(self, before: float, min_votes: int) -> dict[int, int]:
        """item -> its base crop (plain encoding) that had the most right honest votes by ``before``, for the
        items where that is at least ``min_votes``."""
        base = {self.png(crop, 0)[1]: (item, crop) for item, ids in enumerate(self.variants) for crop in ids}
        right: Counter = Counter()
        for t, event in self.events:
            if (
                t < before
                and isinstance(event, IconCropContributed)
                and event.crop_sha256 in base
                and self.roles[event.install_id] == "honest"
                and event.label == self.truth[ICON][event.crop_sha256]
            ):
                right[base[event.crop_sha256]] += 1
        settled: dict[int, int] = {}
        for (item, crop), votes in right.most_common():
            if votes >= min_votes:
                settled.setdefault(item, crop)
        return dict(sorted(settled.items()))

    def unvoted_crops(self, before: float) -> list[int]:
        """Base crops whose pixels nobody had voted on (in any encoding) by ``before``."""
        voted = {e.pixels_sha256 for t, e in self.events if t < before and isinstance(e, IconCropContributed)}
        return [crop for ids in self.variants for crop in ids if self.png(crop, 0)[2] not in voted]

    def farming_group(self) -> None:
        spec, rng = self.spec, self.rng
        forged = (lambda wrong: wrong) if spec.farming_forges_guesses else (lambda wrong: None)
        settled_early = self.settled_crops(0.35, 3)
        early = sorted(settled_early, key=lambda i: -self.popularity[i])
        popular = early[: max(spec.group_clean_votes, len(early) // 2)]
        by_popularity = sorted(self.settled_crops(0.85, 3), key=lambda i: -self.popularity[i])
        quieter = [i for i in by_popularity[len(by_popularity) // 3 :] if i not in popular]
        targets = [int(i) for i in rng.choice(quieter, min(spec.farmed_items, len(quieter)), replace=False)]
        self.farmed = set(targets)
        group = [f"farm{spec.seed}-{n}" for n in range(spec.group_size)]
        for n, install in enumerate(group):
            self.roles[install] = "farming"
            self.origins[install] = origin_key(spec.seed, f"farm-{n}")
            for item in rng.choice(popular, min(spec.group_clean_votes, len(popular)), replace=False):
                crop = settled_early[int(item)]
                self.icon_vote(float(rng.uniform(0.35, 0.85)), install, crop, 0, self.names[int(item)])
        for item in targets:
            wrong = self.names[self.twin.get(item, self._other(item, rng))]
            for crop in self.variants[item]:
                for install in group:
                    sha = self.icon_vote(
                        float(rng.uniform(0.9, 0.92)), install, crop, 0, wrong, guess=forged(wrong)
                    )
                    if sha:
                        self.attacked[ICON][sha] = "farming"

    def farmed_new_crops(self) -> None:
        """The farming group, trusted by now, labels near-copies of known items nobody labelled with their
        look-alike twin's name (another item's where there is none), each member alone on its own crops and
        every client guess forged to that name: single trusted votes, the model guess confirming them."""
        spec, group = self.spec, [i for i, role in self.roles.items() if role == "farming"]
        if not spec.farmed_new_crops:
            return
        rng = np.random.default_rng(
            (spec.seed, 1701)
        )  # its own draws: the rest of the workload stays the same
        known = [i for i in range(spec.items) if i not in self.new_items and i not in self.farmed]
        for install in group:
            for item in rng.choice(known, spec.farmed_new_crops, replace=False):
                item = int(item)
                crop = self.near_copy_of(item)
                label = self.names[self.twin.get(item, self._other(item, rng))]
                sha = self.icon_vote(float(rng.uniform(0.92, 0.97)), install, crop, 0, label, guess=label)
                if sha:
                    self.attacked[ICON][sha] = "farming"

    def swarms(self) -> None:
        spec, rng = self.spec, self.rng
        known = self.settled_crops(0.5, 2)
        used_items = set(self.farmed)  # each swarm its own targets, none the farming group's
        used_crops: set[int] = set()
        number = 0
        for size in SWARM_SIZES:
            for mode in SWARM_MODES:
                for target in SWARM_TARGETS:
                    number += 1
                    name = swarm_name(size, mode, target)
                    label = f"{PLANTED} {number}"
                    members = [
                        hashlib.sha256(f"{spec.seed}:{name}:{n}".encode()).hexdigest()[:24]
                        for n in range(size)
                    ]
                    for n, install in enumerate(members):
                        self.roles[install] = name
                        network = f"{name}-0" if mode == "one-origin" else f"{name}-{n}"
                        self.origins[install] = origin_key(spec.seed, network)
                    start = float(rng.uniform(0.55, 0.9))
                    unvoted = [c for c in self.unvoted_crops(start + 0.005) if c not in used_crops]
                    unvoted = [int(c) for c in rng.permutation(unvoted)]
                    fresh = [i for i in known if i not in used_items]
                    pool = fresh if len(fresh) >= spec.swarm_crops else list(known)
                    for n, item in enumerate(rng.choice(pool, spec.swarm_crops, replace=False)):
                        item = int(item)
                        used_items.add(item)
                        if target == "re-encoded":
                            crop, encoding = known[item], 1000 + number
                        elif n % 2 and unvoted:  # a crop of an item nobody labelled yet
                            crop, encoding = unvoted.pop(), 0
                        else:  # a near-copy of a known item's crop
                            crop, encoding = self.near_copy_of(item), 0
                        used_crops.add(crop)
                        for install in members:
                            forged = label if rng.random() < spec.forged_guess_share else None
                            t = start + float(rng.uniform(0, 0.005))
                            sha = self.icon_vote(t, install, crop, encoding, label, guess=forged)
                            self.attacked[ICON][sha] = name
                            self.planted[sha] = (label, name)

    def forged_swarms(self) -> None:
        """Fresh installs of one origin each label crops nobody labelled with an existing item's name (the
        look-alike twin's where there is one), every client guess forged to it."""
        spec, rng = self.spec, self.rng
        used: set[int] = set()
        for size in FORGED_SWARM_SIZES:
            name = swarm_name(size, "many-origins", FORGED_TARGET)
            members = [
                hashlib.sha256(f"{spec.seed}:{name}:{n}".encode()).hexdigest()[:24] for n in range(size)
            ]
            for n, install in enumerate(members):
                self.roles[install] = name
                self.origins[install] = origin_key(spec.seed, f"{name}-{n}")
            start = float(rng.uniform(0.55, 0.9))
            unvoted = [int(c) for c in rng.permutation(self.unvoted_crops(start + 0.005)) if c not in used]
            for n in range(spec.forged_swarm_crops):
                if n % 2 and unvoted:
                    crop = unvoted.pop()
                else:  # a near-copy of a random known item's crop: new pixels
                    crop = self.near_copy_of(
                        int(rng.choice([i for i in range(spec.items) if i not in self.new_items]))
                    )
                used.add(crop)
                item = self.crops[crop].item
                label = self.names[self.twin.get(item, self._other(item, rng))]
                for install in members:
                    t = start + float(rng.uniform(0, 0.005))
                    sha = self.icon_vote(t, install, crop, 0, label, guess=label)
                    if sha:
                        self.attacked[ICON][sha] = name
                        self.planted[sha] = (label, name)

    def ocr_attack(self) -> None:
        spec, rng = self.spec, self.rng
        honest_keys = Counter(
            self.unit_of_ocr(event)
            for _, event in self.events
            if isinstance(event, OcrCorrectionContributed) and self.roles[event.install_id] == "honest"
        )
        quiet = sorted(key for key, votes in honest_keys.items() if votes <= 2)
        targets = [
            str(key) for key in rng.choice(quiet, min(spec.ocr_attacked_texts, len(quiet)), replace=False)
        ]
        for n in range(spec.ocr_attackers):
            install = f"ocr{spec.seed}-{n}"
            self.roles[install] = "ocr-attacker"
            self.origins[install] = origin_key(spec.seed, f"ocr-{n}")
            for key in targets:
                slot, raw = key.split(KEY_SEPARATOR)
                self.ocr_vote(
                    float(rng.uniform(0.6, 0.9)), install, slot, raw, "Pirate Barge", self.truth[OCR][key]
                )
                self.attacked[OCR][key] = "ocr raw-text"

    @staticmethod
    def unit_of_ocr(event: OcrCorrectionContributed) -> str:
        return f"{event.slot}{KEY_SEPARATOR}{event.raw_text}"

    def screen_troll(self) -> None:
        spec, rng = self.spec, self.rng
        for n in range(2):
            install = f"troll{spec.seed}-{n}"
            self.roles[install] = "screen-troll"
            self.origins[install] = origin_key(spec.seed, "troll")
            for _ in range(spec.screen_troll_screens // 2):
                truth = int(rng.integers(len(SCREEN_TYPES)))
                wrong = SCREEN_TYPES[(truth + int(rng.integers(1, len(SCREEN_TYPES)))) % len(SCREEN_TYPES)]
                sha = self.screen_vote(float(rng.uniform(0.3, 0.95)), install, truth, wrong)
                self.attacked[SCREEN][sha] = "screen troll"

    def build(self) -> Workload:
        self.community()
        self.farming_group()
        self.swarms()
        self.forged_swarms()
        self.ocr_attack()
        self.screen_troll()
        moderations = self.moderator()
        self.farmed_new_crops()
        ambiguous = {phash for phash, items in self.phash_items.items() if len(items) > 1}
        ordered = [
            event
            for _, event in sorted(self.events, key=lambda te: (te[0], te[1].message_id))
            if not (isinstance(event, KnowledgeContributed) and event.phash in ambiguous)
        ]
        for phash in ambiguous:
            self.truth[KNOWLEDGE].pop(phash, None)
        return Workload(
            self.spec,
            self.names,
            self.twin,
            self.new_items,
            ordered,
            self.truth,
            self.pixels_key,
            self.attacked,
            self.planted,
            self.roles,
            self.origins,
            self.model_guess,
            self.guesses,
            moderations,
            self.published_prediction,
            self.model_releases,
            self.model_training,
        )

    def moderator(self) -> list[ItemModerated]:
        """A moderator settles the first honest screenshots of each type soon after they arrive: screen types
        are what a published screen model would know, and each screenshot has one voter."""
        decided: list[ItemModerated] = []
        per_type: Counter = Counter()
        for t, event in sorted(self.events, key=lambda te: (te[0], te[1].message_id)):
            if isinstance(event, ScreenTypeContributed) and self.roles[event.install_id] == "honest":
                truth = self.truth[SCREEN][event.image_sha256]
                if event.screen_type == truth and per_type[truth] < self.spec.moderated_screens:
                    per_type[truth] += 1
                    decided.append(
                        ItemModerated(
                            message_id=f"sim{self.spec.seed}-moderation-{len(decided)}",
                            occurred_at=START + WINDOW * (t + 0.001),
                            item_kind=SCREEN,
                            item_key=event.image_sha256,
                            label=truth,
                            moderator="sim-moderator",
                        )
                    )
        return sorted(decided, key=lambda event: event.occurred_at)


def generate(spec: CommunitySpec = CommunitySpec()) -> Workload:
    return _Builder(spec).build()


def describe(workload: Workload) -> str:
    events = workload.events
    kinds: dict[str, int] = defaultdict(int)
    for event in events:
        kinds[workload.unit_of(event)[0]] += 1
    icon_votes: dict[str, int] = defaultdict(int)
    for event in events:
        if workload.unit_of(event)[0] == ICON and workload.roles[event.install_id] == "honest":
            icon_votes[event.crop_sha256] += 1
    single = sum(n == 1 for n in icon_votes.values())
    return (
        f"{len(events)} contributions ({', '.join(f'{k} {n}' for k, n in kinds.items())}); "
        f"{len(workload.roles)} installs behind {len(set(workload.origins.values()))} origins; "
        f"{len(icon_votes)} crops voted by honest installs, {single} of them by one"
    )


# --- scoring -------------------------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100.0 * part / whole


def score(workload: Workload, decided: dict[str, dict[str, str | None]]) -> dict:
    """Score what a consensus hands to training: ``decided[kind][unit]`` is the accepted label of each scoring
    unit (None or absent: withheld). Correct % is over everything accepted (attacked units included); coverage
    is over the units honest installs voted on (a crop only a swarm sent has nothing to cover)."""
    honest_units: dict[str, set[str]] = {kind: set() for kind in KINDS}
    votes: Counter = Counter()
    for event in workload.events:
        kind, unit = workload.unit_of(event)
        votes[kind, unit] += 1
        if workload.roles[event.install_id] == "honest":
            honest_units[kind].add(unit)
    out: dict = {}
    for kind in KINDS:
        given = {unit: decided.get(kind, {}).get(unit) for unit in workload.truth[kind]}
        labelled = [unit for unit, label in given.items() if label is not None]
        right = sum(given[unit] == workload.truth[kind][unit] for unit in labelled)
        withheld = [unit for unit in honest_units[kind] if given[unit] is None]
        attacked = workload.attacked[kind]
        safe = sum(given[unit] in (None, workload.truth[kind][unit]) for unit in attacked)
        out[kind] = {
            "correct": _share(right, len(labelled)),
            "coverage": _share(len(honest_units[kind]) - len(withheld), len(honest_units[kind])),
            "withheld": len(withheld),
            "withheld_one_vote": sum(votes[kind, unit] == 1 for unit in withheld),
            "labelled": len(labelled),
            "wrong": len(labelled) - right,
            "voted": len(honest_units[kind]),
            "attacked": len(attacked),
            "attacked_safe": _share(safe, len(attacked)),
        }
    icon = decided.get(ICON, {})
    farmed = [unit for unit, attack in workload.attacked[ICON].items() if attack == "farming"]
    out["farming_safe"] = _share(
        sum(icon.get(unit) in (None, workload.truth[ICON][unit]) for unit in farmed), len(farmed)
    )
    planted = {name: 0 for name, *_ in swarm_names()}
    for unit, (label, swarm) in workload.planted.items():
        planted[swarm] += icon.get(unit) == label
    out["planted"] = planted
    out["planted_total"] = sum(planted.values())
    out["planted_crops"] = len(workload.planted)
    return out


def planted_breakdown(planted: dict[str, int]) -> dict[str, int]:
    """Planted labels accepted per swarm size, origin mode and target (from the per-swarm counts)."""
    parts: dict[str, int] = {}
    for name, size, mode, target in swarm_names():
        accepted = planted.get(name, 0)
        for part in (f"{size} installs", mode, target):
            parts[part] = parts.get(part, 0) + accepted
    return parts
