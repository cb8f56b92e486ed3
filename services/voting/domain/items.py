"""What a contribution votes on: (item kind, item key) and the label or value it votes for."""

from __future__ import annotations

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
