"""Which published model answers a prediction request, and whether its answer can count as evidence.

Pure; ``handlers.Predictor`` does the I/O. A prediction counts for voting only from a model that did not train
on the item: the published release's training snapshot must not hold it (icons and screenshots by their item
key, knowledge crops by their pixels, which is the icon item they are)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MODEL_OF_KIND = {"icon": "icon", "knowledge": "icon", "screen": "screen"}


@dataclass(frozen=True)
class Wanted:
    """One item to predict: its kind and key, the blob to run the model on, and the snapshot key it would
    have been trained under."""

    item_kind: str
    item_key: str
    image_sha256: str

    @property
    def model(self) -> str:
        return MODEL_OF_KIND[self.item_kind]


def trained_ref(item_kind: str, item_key: str, pixels_key: str | None) -> tuple[str, str] | None:
    """The snapshot item a model would have learned this item from: the icon item a knowledge crop's pixels
    are, else the item itself; None when unknown (a knowledge crop that cannot be decoded)."""
    if item_kind == "knowledge":
        return None if pixels_key is None else ("icon", pixels_key)
    return (item_kind, item_key)


def by_model(items: Iterable[Wanted]) -> dict[str, list[Wanted]]:
    """The request's items once each (a repeated item is predicted once), grouped by the model that answers."""
    seen: dict[tuple[str, str], Wanted] = {}
    for item in items:
        seen.setdefault((item.item_kind, item.item_key), item)
    grouped: dict[str, list[Wanted]] = {}
    for item in seen.values():
        grouped.setdefault(item.model, []).append(item)
    return grouped


def chunks(items: Sequence[Wanted], size: int) -> list[Sequence[Wanted]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
