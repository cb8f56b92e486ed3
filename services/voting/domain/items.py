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

KEY_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Ballot:
    item_kind: str
    item_key: str
    label: str | None
    value: dict[str, Any] | None
    image_sha256: str | None
    image: bytes | None


def anchor_group(build_type: str, aspect: float | None) -> str:
    return f"{build_type}{KEY_SEPARATOR}{'none' if aspect is None else f'{aspect:.2f}'}"


def ballot_of(event: Contribution) -> Ballot:
    match event:
        case IconCropContributed():
            value = {"slot": event.slot, "model_guess": event.model_guess}
            return Ballot("icon", event.crop_sha256, event.label, value, event.crop_sha256, event.png)
        case OcrCorrectionContributed():
            key = f"{event.slot}{KEY_SEPARATOR}{event.raw_text}"
            return Ballot("ocr", key, event.corrected_text, None, event.crop_sha256, event.png)
        case KnowledgeContributed():
            value = {
                "wrong_name": event.wrong_name,
                "confirmed": event.confirmed,
                "crop_sha256": event.crop_sha256,
            }
            return Ballot("knowledge", event.phash, event.item_name, value, event.crop_sha256, event.png)
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
    )
