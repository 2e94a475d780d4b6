"""Inline SVG charts generated in Python (no JS library): bar charts and line charts.

Every label is HTML-escaped here, so the returned strings can be inserted into a page as-is.
Coordinates are printed with one decimal and numbers with a fixed rule, so the same input
always gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# Colour-blind friendly palette (Okabe-Ito), used in order for bars and lines.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)

_MARGIN_L, _MARGIN_R, _MARGIN_T, _MARGIN_B = 64, 16, 28, 56


def fmt_num(x: float | None) -> str:
    """The one number format of the report: 4 significant digits; integers up to 1e7 in full.

    ``None`` becomes an en dash. Values in [1e4, 1e7) are rounded to an integer instead of
    switching to exponent notation (perplexities stay readable).
    """
    if x is None:
        return "–"
    x = float(x)
    if not math.isfinite(x):
        return "–"
    if 1e4 <= abs(x) < 1e7:
        return f"{x:.0f}"
    text = f"{x:.4g}"
    return "0" if text == "-0" else text


def _c(v: float) -> str:
    """A coordinate: one decimal, never '-0.0'."""
    text = f"{v:.1f}"
    return "0.0" if text == "-0.0" else text


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (lo < hi)."""
    span = hi - lo
    raw = span / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    k = 0
    while True:
        t = start + k * step
        if t > hi + step * 1e-9:
            break
        ticks.append(round(t, 12))
        k += 1
    if ticks and ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _range(values: Sequence[float], include_zero: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    ticks = nice_ticks(lo, hi)
    return min(ticks[0], lo), max(ticks[-1], hi)


def _svg_open(width: int, height: int, title: str) -> list[str]:
    t = escape(title)
    return [
        f'<svg class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{t}">',
        f"<title>{t}</title>",
        f'<text x="{_c(width / 2)}" y="16" text-anchor="middle" class="chart-title">{t}</text>',
    ]


def _y_axis(
    lo: float, hi: float, y_of, x0: float, x1: float, height: int, y_label: str
) -> list[str]:
    out = []
    for t in nice_ticks(lo, hi):
        if t < lo - 1e-12 or t > hi + 1e-12:
            continue
        y = _c(y_of(t))
        out.append(f'<line x1="{_c(x0)}" y1="{y}" x2="{_c(x1)}" y2="{y}" class="grid"/>')
        out.append(
            f'<text x="{_c(x0 - 4)}" y="{y}" text-anchor="end" dominant-baseline="middle" '
            f'class="tick">{escape(fmt_num(t))}</text>'
        )
    mid = (_MARGIN_T + height - _MARGIN_B) / 2
    out.append(
        f'<text x="14" y="{_c(mid)}" text-anchor="middle" class="axis-label" '
        f'transform="rotate(-90 14 {_c(mid)})">{escape(y_label)}</text>'
    )
    return out


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    errors: Sequence[float | None] | None = None,
    *,
    y_label: str = "value",
    x_label: str = "variant",
    width: int | None = None,
    height: int = 260,
) -> str:
    """Vertical bars, one per label, with optional symmetric error bars and printed values."""
    n = len(values)
    errors = list(errors) if errors is not None else [None] * n
    if n == 0:
        return ""
    width = width or max(240, _MARGIN_L + _MARGIN_R + 90 * n, 24 + 7 * len(title))
    spread = [v + s * e for v, e in zip(values, errors, strict=True) for s in (-1, 1) if e]
    lo, hi = _range(list(values) + spread, include_zero=True)
    x0, x1 = _MARGIN_L, width - _MARGIN_R
    y_top, y_bot = _MARGIN_T + 8, height - _MARGIN_B

    def y_of(v: float) -> float:
        return y_bot - (v - lo) / (hi - lo) * (y_bot - y_top)

    out = _svg_open(width, height, title)
    out += _y_axis(lo, hi, y_of, x0, x1, height, y_label)
    slot = (x1 - x0) / n
    bar_w = min(48.0, slot * 0.6)
    zero = y_of(0.0)
    for i, (label, v, e) in enumerate(zip(labels, values, errors, strict=True)):
        cx = x0 + slot * (i + 0.5)
        top, bot = sorted((y_of(v), zero))
        colour = PALETTE[i % len(PALETTE)]
        out.append(
            f'<rect x="{_c(cx - bar_w / 2)}" y="{_c(top)}" width="{_c(bar_w)}" '
            f'height="{_c(max(bot - top, 0.5))}" fill="{colour}">'
            f"<title>{escape(label)}: {escape(_value_text(v, e))}</title></rect>"
        )
        if e:
            ya, yb = _c(y_of(v - e)), _c(y_of(v + e))
            out.append(f'<line x1="{_c(cx)}" y1="{ya}" x2="{_c(cx)}" y2="{yb}" class="err"/>')
            for yy in (ya, yb):
                out.append(
                    f'<line x1="{_c(cx - 6)}" y1="{yy}" x2="{_c(cx + 6)}" y2="{yy}" class="err"/>'
                )
        # above the bar (positive) or above the zero line (negative): never on the axis labels
        label_y = min(top, y_of(v + e) if e else top) - 4
        out.append(
            f'<text x="{_c(cx)}" y="{_c(label_y)}" text-anchor="middle" class="value">'
            f"{escape(fmt_num(v))}</text>"
        )
        out.append(
            f'<text x="{_c(cx)}" y="{_c(y_bot + 14)}" text-anchor="middle" class="tick">'
            f"{escape(_short(label, 14))}</text>"
        )
    out.append(f'<line x1="{_c(x0)}" y1="{_c(zero)}" x2="{_c(x1)}" y2="{_c(zero)}" class="axis"/>')
    out.append(
        f'<text x="{_c((x0 + x1) / 2)}" y="{height - 8}" text-anchor="middle" '
        f'class="axis-label">{escape(x_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def line_chart(
    title: str,
    lines: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    x_label: str = "x",
    y_label: str = "y",
    width: int = 560,
    height: int = 300,
) -> str:
    """One polyline per (legend label, xs, ys); a legend on the right of the plot area."""
    lines = [(label, list(xs), list(ys)) for label, xs, ys in lines if xs]
    if not lines:
        return ""
    legend_w = 12 + 7 * min(24, max(len(_short(label)) for label, _, _ in lines)) + 20
    x0, x1 = _MARGIN_L, width - _MARGIN_R - legend_w
    y_top, y_bot = _MARGIN_T + 8, height - _MARGIN_B
    xlo, xhi = _range([v for _, xs, _ in lines for v in xs], include_zero=False)
    ylo, yhi = _range([v for _, _, ys in lines for v in ys], include_zero=False)

    def x_of(v: float) -> float:
        return x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)

    def y_of(v: float) -> float:
        return y_bot - (v - ylo) / (yhi - ylo) * (y_bot - y_top)

    out = _svg_open(width, height, title)
    out += _y_axis(ylo, yhi, y_of, x0, x1, height, y_label)
    for t in nice_ticks(xlo, xhi):
        if xlo - 1e-12 <= t <= xhi + 1e-12:
            out.append(
                f'<text x="{_c(x_of(t))}" y="{_c(y_bot + 14)}" text-anchor="middle" '
                f'class="tick">{escape(fmt_num(t))}</text>'
            )
    out.append(
        f'<line x1="{_c(x0)}" y1="{_c(y_bot)}" x2="{_c(x1)}" y2="{_c(y_bot)}" class="axis"/>'
    )
    out.append(
        f'<line x1="{_c(x0)}" y1="{_c(y_top)}" x2="{_c(x0)}" y2="{_c(y_bot)}" class="axis"/>'
    )
    for i, (label, xs, ys) in enumerate(lines):
        colour = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{_c(x_of(a))},{_c(y_of(b))}" for a, b in zip(xs, ys, strict=True))
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.8">'
            f"<title>{escape(label)}</title></polyline>"
        )
        if len(xs) <= 40:
            for a, b in zip(xs, ys, strict=True):
                out.append(
                    f'<circle cx="{_c(x_of(a))}" cy="{_c(y_of(b))}" r="2.5" fill="{colour}">'
                    f"<title>{escape(label)}: ({escape(fmt_num(a))}, {escape(fmt_num(b))})"
                    "</title></circle>"
                )
        ly = y_top + 4 + 16 * i
        lx = x1 + 12
        out.append(
            f'<line x1="{_c(lx)}" y1="{_c(ly)}" x2="{_c(lx + 14)}" y2="{_c(ly)}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
        out.append(
            f'<text x="{_c(lx + 18)}" y="{_c(ly)}" dominant-baseline="middle" class="legend">'
            f"{escape(_short(label))}</text>"
        )
    out.append(
        f'<text x="{_c((x0 + x1) / 2)}" y="{height - 8}" text-anchor="middle" '
        f'class="axis-label">{escape(x_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def _value_text(v: float, e: float | None) -> str:
    return fmt_num(v) + (f" ± {fmt_num(e)}" if e else "")


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def heatmap(
    title: str,
    row_labels: Sequence[str],
    grid: Sequence[Sequence[float]],
    *,
    x_label: str = "x",
    cell: int = 14,
) -> str:
    """A diverging heatmap (blue < 0 < red, scaled by max |value|), one row per label."""
    rows = [list(r) for r in grid]
    if not rows or not rows[0]:
        return ""
    n_cols = max(len(r) for r in rows)
    vmax = max((abs(v) for r in rows for v in r if math.isfinite(v)), default=1.0) or 1.0
    x0, y0 = 96, _MARGIN_T + 8
    width = max(x0 + n_cols * cell + 24, 8 * len(title) + 24)
    height = y0 + len(rows) * cell + 44
    out = _svg_open(width, height, title)
    for i, (label, r) in enumerate(zip(row_labels, rows, strict=True)):
        y = y0 + i * cell
        out.append(
            f'<text x="{x0 - 4}" y="{_c(y + cell * 0.75)}" text-anchor="end" '
            f'class="tick">{escape(_short(str(label), 14))}</text>'
        )
        for j, v in enumerate(r):
            a = min(1.0, abs(v) / vmax) if math.isfinite(v) else 0.0
            rgb = (
                (255, int(255 * (1 - a)), int(255 * (1 - a)))
                if v >= 0
                else (int(255 * (1 - a)), int(255 * (1 - a)), 255)
            )
            out.append(
                f'<rect x="{x0 + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                f'fill="rgb{rgb}"><title>{escape(str(label))}, {j}: {fmt_num(v)}</title></rect>'
            )
    for j in range(0, n_cols, 5):
        out.append(
            f'<text x="{_c(x0 + j * cell + cell / 2)}" y="{y0 + len(rows) * cell + 12}" '
            f'text-anchor="middle" class="tick">{j}</text>'
        )
    out.append(
        f'<text x="{_c(x0 + n_cols * cell / 2)}" y="{height - 8}" text-anchor="middle" '
        f'class="axis-label">{escape(x_label)} (colour: ±{fmt_num(vmax)})</text>'
    )
    out.append("</svg>")
    return "\n".join(out)
