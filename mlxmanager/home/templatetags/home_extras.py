"""Labels for the home dashboard's numbers."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def ms(value: float | None) -> str:
    """850.4 -> '850 ms', 1234 -> '1.23 s', None -> '—'."""
    if value is None:
        return "—"
    value = float(value)
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.2f} s" if value < 10_000 else f"{value / 1000:.1f} s"


@register.filter
def rate(value: float | None) -> str:
    """A per-second or per-minute rate: '0', '0.42', '3.5', '128'."""
    if value is None:
        return "—"
    value = float(value)
    if value == 0:
        return "0"
    if value < 1:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


@register.filter
def tokens(value: int | None) -> str:
    """1234 -> '1.2k', 3400000 -> '3.4M'."""
    if not value:
        return "0"
    for limit, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if value >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    return str(value)
