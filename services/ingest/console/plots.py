"""Server-rendered SVG charts for the console: plain values in, markup out (no script, no inline style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

# One colour per series, distinguishable in grey scale too (the legend names each one as well).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _frame(title: str, width: int, height: int, left: int, top: int, plot_h: float, peak: str) -> list[str]:
    """The opening of a chart: the SVG element with its accessible name, the title, the x axis, the y range."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" font-size="12">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{escape(peak)}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]


def stacked_bars(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[int]],
    *,
    width: int = 720,
    height: int = 200,
) -> str:
    """Stacked bars, one column per label; ``series`` maps a name to one value per label."""
    left, bottom, top = 44, 28, 22
    plot_w, plot_h = width - left - 8, height - bottom - top
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    peak = max(totals, default=0) or 1
    step = plot_w / max(len(labels), 1)
    parts = _frame(title, width, height, left, top, plot_h, str(peak))
    for index, label in enumerate(labels):
        base = top + plot_h
        for number, (name, values) in enumerate(series.items()):
            bar = values[index] / peak * plot_h
            if bar > 0:
                parts.append(
                    f'<rect x="{left + index * step + 1:.1f}" y="{base - bar:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{bar:.1f}" fill="{PALETTE[number % len(PALETTE)]}">'
                    f"<title>{escape(label)} {escape(name)}: {values[index]}</title></rect>"
                )
                base -= bar
        if index % max(len(labels) // 8, 1) == 0:
            parts.append(
                f'<text x="{left + index * step:.1f}" y="{height - 10}" font-size="10">{escape(label)}</text>'
            )
    x = left + 7 * len(title) + 24  # the legend after the title
    for number, name in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="5" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="14" font-size="11">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def epoch_lines(
    title: str, series: Mapping[str, Sequence[Any]], *, width: int = 720, height: int = 180
) -> str:
    """One line per model of held-out accuracy (0 to 1) by epoch, from training.progress reports."""
    left, bottom, top = 44, 24, 22
    plot_w, plot_h = width - left - 8, height - bottom - top
    last_epoch = max((report.epoch for reports in series.values() for report in reports), default=1) or 1
    parts = _frame(title, width, height, left, top, plot_h, "1.0") + [
        f'<text x="{width - 8}" y="{height - 8}" font-size="10" text-anchor="end">epoch {last_epoch}</text>',
    ]
    for number, (name, reports) in enumerate(series.items()):
        points = [
            (left + r.epoch / last_epoch * plot_w, top + plot_h - r.val_accuracy * plot_h)
            for r in reports
            if r.val_accuracy is not None
        ]
        colour = PALETTE[number % len(PALETTE)]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(
            f'<text x="{left + 200 + 80 * number}" y="14" font-size="11" fill="{colour}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
