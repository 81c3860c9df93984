"""Intervals for the rates spard reports."""

from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% by default); ``(nan, nan)`` when n = 0.

    ``centre +- half`` with ``centre = (p + z^2/2n) / (1 + z^2/n)`` and
    ``half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)``; unlike the normal interval it stays inside
    [0, 1] and is not empty at k = 0 or k = n."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clamped so that the interval always holds p (rounding leaves centre + half a hair below 1 at k = n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def rate_with_interval(k: int, n: int) -> dict[str, float | int | None]:
    """``{"rate", "low", "high", "k", "n"}`` for ``k`` of ``n`` (Wilson 95%)."""
    low, high = wilson_interval(k, n)
    return {"rate": k / n if n else None, "low": low if n else None, "high": high if n else None, "k": k, "n": n}


def format_rate(r: dict) -> str:
    """``"12.3% [10.4, 14.5] (114/929)"``."""
    if not r.get("n"):
        return "n/a"
    return f"{100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}] ({r['k']}/{r['n']})"
