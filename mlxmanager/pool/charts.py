"""The pool page's small history charts, drawn server-side as SVG coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 320
HEIGHT = 64
WINDOW_S = 3600.0  # the worker keeps an hour of samples
MIN_WINDOW_S = 60.0


@dataclass(frozen=True)
class Series:
    title: str
    line: str  # SVG polyline points
    area: str  # SVG polygon points: the line closed along the bottom edge
    top_label: str  # what the top edge stands for
    now_label: str  # the latest value
    since_label: str  # how far back the left edge is

    @property
    def empty(self) -> bool:
        return not self.line


def _size(n: float) -> str:
    mb = n / (1 << 20)
    if mb >= 1024:
        return f"{mb / 1024:.1f} GB"
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _ago(seconds: float) -> str:
    if seconds >= 3600 - 1:
        return "1 h ago"
    return f"{max(1, round(seconds / 60))} min ago"


def _series(
    title: str,
    points: Sequence[tuple[float, float]],
    *,
    now: float,
    window: float,
    top: float,
    top_label: str,
    fmt: str,
) -> Series:
    """`points` are (unix time, value); x spans `window` seconds up to `now`, y spans 0..`top`."""
    shown = [(t, v) for t, v in points if now - window <= t <= now + 1]
    latest = fmt.format(shown[-1][1]) if shown else "—"
    if len(shown) < 2:
        return Series(title, "", "", top_label, latest, _ago(window))
    top = top or 1.0
    coords = []
    for t, v in shown:
        x = min(WIDTH, (t - (now - window)) / window * WIDTH)
        y = HEIGHT - min(max(v / top, 0.0), 1.0) * (HEIGHT - 2)
        coords.append((x, y))
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    area = f"{coords[0][0]:.1f},{HEIGHT} {line} {coords[-1][0]:.1f},{HEIGHT}"
    return Series(title, line, area, top_label, latest, _ago(window))


def history_charts(
    history: Sequence[Sequence[float]], *, now: float, current: tuple[float, int] | None = None
) -> list[Series]:
    """Tokens/s and weight memory, each scaled to its peak.

    `history` holds (unix time, tokens/s, weight bytes) samples; `current` (tokens/s, bytes)
    adds a point for `now`. The charts span the last hour, or less while the worker is young.
    """
    samples = [(float(s[0]), float(s[1]), float(s[2])) for s in history if len(s) >= 3]
    if current is not None:
        samples.append((now, float(current[0]), float(current[1])))
    first = min((t for t, _, _ in samples), default=now)
    window = min(WINDOW_S, max(MIN_WINDOW_S, now - first))
    rates = [(t, r) for t, r, _ in samples]
    memory = [(t, b / (1 << 20)) for t, _, b in samples]
    peak = max((v for _, v in rates), default=0.0)
    top_rate = max(1.0, peak * 1.1)
    # Scaled to the hour's peak, not the limit: small models would draw a flat line at zero.
    top_mb = max(1.0, max((v for _, v in memory), default=0.0) * 1.1)
    return [
        _series(
            "Tokens/s",
            rates,
            now=now,
            window=window,
            top=top_rate,
            top_label=f"{top_rate:.0f} tok/s",
            fmt="{:.1f} tok/s",
        ),
        _series(
            "Memory used",
            memory,
            now=now,
            window=window,
            top=top_mb,
            top_label=_size(top_mb * (1 << 20)),
            fmt="{:.1f} MB",
        ),
    ]
