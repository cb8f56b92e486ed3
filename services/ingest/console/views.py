"""Pure shaping of what the console's store reads into what its pages show; ``now`` is passed in."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

HOURS_SHOWN = 48
DAYS_SHOWN = 14


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def contribution_series(
    hourly: Iterable[Any], now: datetime
) -> tuple[tuple[list[str], dict[str, list[int]]], tuple[list[str], dict[str, list[int]]]]:
    """(per hour over the last ``HOURS_SHOWN``, per UTC day over the last ``DAYS_SHOWN``): labels and one
    count per label for each item kind, from rows of (hour, item_kind, n)."""
    counts: dict[tuple[datetime, str], int] = {}
    for row in hourly:
        counts[_hour(row.hour), row.item_kind] = counts.get((_hour(row.hour), row.item_kind), 0) + row.n
    kinds = sorted({kind for _, kind in counts})
    hours = [_hour(now) - timedelta(hours=h) for h in reversed(range(HOURS_SHOWN))]
    days = [(now - timedelta(days=d)).date() for d in reversed(range(DAYS_SHOWN))]
    per_day: Counter[tuple[Any, str]] = Counter()
    for (hour, kind), n in counts.items():
        per_day[hour.date(), kind] += n
    return (
        ([h.strftime("%d %Hh") for h in hours], {k: [counts.get((h, k), 0) for h in hours] for k in kinds}),
        ([d.strftime("%m-%d") for d in days], {k: [per_day[d, k] for d in days] for k in kinds}),
    )


def consensus_table(rows: Iterable[Any]) -> dict[str, dict[str, int]]:
    """{item kind: {status: items}}."""
    table: dict[str, dict[str, int]] = {}
    for row in rows:
        table.setdefault(row.item_kind, {})[row.status] = row.n
    return table


def vote_summary(votes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per label voted: how many installs, how many distinct origins, their summed trust."""
    lines: dict[str | None, dict[str, Any]] = {}
    for vote in votes:
        line = lines.setdefault(
            vote["label"], {"label": vote["label"], "installs": 0, "origins": set(), "trust": 0.0}
        )
        line["installs"] += 1
        if vote["origin"]:
            line["origins"].add(vote["origin"])
        line["trust"] += trust_weight(vote["trust"])
    return sorted(
        ({**line, "origins": len(line["origins"])} for line in lines.values()),
        key=lambda line: (-line["trust"], -line["installs"], str(line["label"])),
    )


def trust_weight(row: Mapping[str, Any] | None) -> float:
    """An install's weight as voting last estimated it (``weight`` of install_trust, else ``reliability``)."""
    if not row:
        return 0.0
    value = row.get("weight", row.get("reliability"))
    return float(value) if isinstance(value, int | float) else 0.0


def evidence_lines(item: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What voting says of an item beyond the label (its reason, and each part of its evidence when it keeps
    them), as (name, text) lines; the core columns are shown elsewhere."""
    lines = []
    if item.get("reason"):
        lines.append(("reason", str(item["reason"])))
    evidence = item.get("evidence")
    if isinstance(evidence, Mapping):
        lines += [(str(name), _compact(value)) for name, value in evidence.items()]
    elif evidence is not None:
        lines.append(("evidence", _compact(evidence)))
    return lines


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)[:600]


def model_guesses(votes: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """The client models' guesses for an item, most frequent first."""
    return Counter(v["model_guess"] for v in votes if v["model_guess"]).most_common(5)


def is_banned(ban: Mapping[str, Any] | None, requested: Mapping[str, Any] | None) -> bool | None:
    """Whether an install is shadow-banned: voting's record when it has one, else the console's last request
    (None: neither)."""
    if ban is not None:
        return bool(ban.get("shadow_banned", True))
    if requested is not None:
        return bool(requested["after"].get("shadow_banned"))
    return None


def per_class_rows(data: bytes | None) -> list[tuple[str, str]]:
    """A run's ``per_class_accuracy.json`` as (class, value) rows, worst first where values are numbers."""
    if data is None:
        return []
    try:
        table = json.loads(data)
    except ValueError:
        return [("(unreadable)", data[:80].decode(errors="replace"))]
    if not isinstance(table, Mapping):
        return [("(all)", _compact(table))]

    def accuracy(value: Any) -> float:
        if isinstance(value, Mapping):
            value = value.get("accuracy", value.get("acc"))
        return float(value) if isinstance(value, int | float) else float("inf")

    return [
        (str(name), _compact(value)) for name, value in sorted(table.items(), key=lambda kv: accuracy(kv[1]))
    ]
