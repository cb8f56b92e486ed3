"""What a contribution votes on: (item kind, item key) and the label or value it votes for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.events import (
    AnchorGridContributed,
    Contribution,
    IconCropContributed,
    KnowledgeContributed,
    OcrCorrectionContributed,
    ScreenTypeContributed,
)
from shared.imagekeys import keys_of_png

KEY_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Ballot:
    item_kind: str
    item_key: str
    label: str | None
    value: dict[str, Any] | None
    image_sha256: str | None
    image: bytes | None
    model_guess: str | None = None  # what the client's own model said, when the contribution tells
    phash: str | None = None  # icon crops: the perceptual hash (visual families)


def ocr_read_text(key: str) -> str:
    """The raw text OCR read, from an OCR item's key (slot, separator, raw text)."""
    return key.partition(KEY_SEPARATOR)[2]


def anchor_group(build_type: str, aspect: float | None) -> str:
    return f"{build_type}{KEY_SEPARATOR}{'none' if aspect is None else f'{aspect:.2f}'}"


def ballot_of(event: Contribution) -> Ballot:
    match event:
        case IconCropContributed():
            # the item is the crop's pixels as the client's model sees them: a re-encoded PNG is the same item
            pixels, phash = event.pixels_sha256, event.phash
            if pixels is None or phash is None:  # an event from before ingest computed them
                keys = keys_of_png(event.png)
                pixels, phash = keys.pixels_sha256, keys.phash
            value = {"slot": event.slot, "model_guess": event.model_guess}
            guess = event.model_guess or None
            return Ballot("icon", pixels, event.label, value, event.crop_sha256, event.png, guess, phash)
        case OcrCorrectionContributed():
            key = f"{event.slot}{KEY_SEPARATOR}{event.raw_text}"  # read back by ocr_read_text
            # the raw text is what the client's OCR read: a correction equal to it confirms it
            guess = event.raw_text or None
            return Ballot("ocr", key, event.corrected_text, None, event.crop_sha256, event.png, guess)
        case KnowledgeContributed():
            value = {
                "wrong_name": event.wrong_name,
                "confirmed": event.confirmed,
                "crop_sha256": event.crop_sha256,
            }
            # an empty wrong name: the user confirmed what the client's model said
            guess = event.wrong_name or (event.item_name if event.confirmed else None)
            return Ballot(
                "knowledge", event.phash, event.item_name, value, event.crop_sha256, event.png, guess
            )
        case ScreenTypeContributed():
            return Ballot(
                "screen", event.image_sha256, event.screen_type, None, event.image_sha256, event.png
            )
        case AnchorGridContributed():
            slots = {name: slot.model_dump(exclude_none=True) for name, slot in event.slots.items()}
            value = {"resolution": event.resolution, "slots": slots}
            return Ballot("anchor", anchor_group(event.build_type, event.aspect), None, value, None, None)
    raise TypeError(f"not a contribution event: {type(event).__name__}")


VoteKey = tuple[str, str, str]  # (item kind, item key, install)


@dataclass(frozen=True)
class BallotBatch:
    """One batch of contributions as stored: each contribution once, the images they carry, and per install
    and item only its latest vote (by the contribution's time, then message id)."""

    contributions: dict[str, tuple[Contribution, Ballot]]
    votes: dict[VoteKey, tuple[Contribution, Ballot]]
    images: dict[str, bytes]
    phashes: dict[str, str]  # icon item key -> its pHash


def batch_of(events: Sequence[Contribution]) -> BallotBatch:
    ballots = [(event, ballot_of(event)) for event in events]
    latest: dict[VoteKey, tuple[Contribution, Ballot]] = {}
    for event, ballot in ballots:
        key = (ballot.item_kind, ballot.item_key, event.install_id)
        held = latest.get(key)
        if held is None or (event.occurred_at, event.message_id) > (held[0].occurred_at, held[0].message_id):
            latest[key] = (event, ballot)
    return BallotBatch(
        contributions={event.message_id: (event, ballot) for event, ballot in ballots},
        votes=latest,
        images={b.image_sha256: b.image for _, b in ballots if b.image_sha256 and b.image is not None},
        phashes={b.item_key: b.phash for _, b in ballots if b.item_kind == "icon" and b.phash},
    )
