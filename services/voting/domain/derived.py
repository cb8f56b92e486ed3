"""Rules for the derived artifacts: OCR correction map, community anchors, screen-type capping."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from services.voting.domain.items import KEY_SEPARATOR, ocr_read_text

ANCHOR_FIELDS = ("x0_rel", "y_rel", "w_rel", "h_rel", "step_rel")


def ocr_corrections(accepted: Mapping[str, str]) -> dict[str, str]:
    """{raw OCR text: corrected name} for accepted OCR items whose winning correction differs from the raw text."""
    corrections = {}
    for key, corrected in accepted.items():
        raw = ocr_read_text(key)
        if corrected != raw:
            corrections[raw] = corrected
    return corrections


def anchor_consensus(
    group: str, grids: Iterable[Mapping[str, Any]], min_contributors: int
) -> dict[str, Any] | None:
    """Per slot, the median of each coordinate across contributors; None below ``min_contributors``."""
    grids = list(grids)
    if len(grids) < min_contributors:
        return None
    build_type, aspect = group.split(KEY_SEPARATOR, 1)
    slot_names = Counter(name for grid in grids for name in grid["slots"])
    slots: dict[str, dict[str, float | int]] = {}
    for name, seen in sorted(slot_names.items()):
        if seen * 2 < len(grids):  # a slot most contributors do not have is noise
            continue
        entries = [grid["slots"][name] for grid in grids if name in grid["slots"]]
        merged: dict[str, float | int] = {}
        for field in ANCHOR_FIELDS:
            values = [entry[field] for entry in entries if entry.get(field) is not None]
            if values:
                merged[field] = round(statistics.median(values), 6)
        counts = [entry["count"] for entry in entries if entry.get("count") is not None]
        if counts:
            merged["count"] = int(statistics.median_low(counts))
        slots[name] = merged
    return {
        "type": build_type,
        "aspect": None if aspect == "none" else float(aspect),
        "res": Counter(grid["resolution"] for grid in grids).most_common(1)[0][0],
        "slots": slots,
        "n_contributors": len(grids),
    }


def cap_screen_types(accepted: Mapping[str, str], keep_all_up_to: int = 30, cap: int = 150) -> dict[str, str]:
    """Keep every screenshot of a type up to ``keep_all_up_to``; beyond that keep ``cap`` of them (a stable
    choice: the smallest sha256s), so stable UI screens do not bloat the data set."""
    by_type: dict[str, list[str]] = {}
    for sha, screen_type in accepted.items():
        by_type.setdefault(screen_type, []).append(sha)
    kept = {}
    for screen_type, shas in by_type.items():
        chosen = sorted(shas) if len(shas) <= keep_all_up_to else sorted(shas)[:cap]
        kept.update(dict.fromkeys(chosen, screen_type))
    return kept
