"""Intervals for the rates spard reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


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


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Cohen's kappa of two binary raters: ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement
    and ``p_e = p_a p_b + (1 - p_a)(1 - p_b)`` the agreement expected by chance from each rater's own
    rate of "yes". 1 is perfect agreement, 0 is chance; ``nan`` when chance agreement is 1 (both raters
    constant and equal)."""
    if len(a) != len(b):
        raise ValueError(f"kappa needs paired ratings, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(map(bool, a)) / n, sum(map(bool, b)) / n
    p_e = pa * pb + (1 - pa) * (1 - pb)
    return math.nan if p_e >= 1 else (p_o - p_e) / (1 - p_e)


def bootstrap_interval(statistic: Callable[[Sequence[int]], float], n: int, *, resamples: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``resamples`` draws of ``n`` indices
    with replacement (seeded, so a report regenerates exactly); resamples where the statistic is
    undefined (nan) are dropped."""
    import numpy as np

    if n <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, size=n).tolist()) for _ in range(resamples)]
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def proportion_ratio_interval(k1: int, n1: int, k2: int, n2: int, *, draws: int = 20000, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float, float]:
    """``(r, low, high)`` for the ratio ``r = (k1/n1) / (k2/n2)`` of two proportions measured on different
    items, with an interval from their Jeffreys posteriors.

    Each proportion gets ``p_i ~ Beta(k_i + 1/2, n_i - k_i + 1/2)`` (independent); the interval is the
    ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of ``p_1 / p_2`` over ``draws`` seeded draws. Unlike a
    percentile bootstrap it does not collapse to ``[0, 0]`` at ``k1 = 0`` (0 of 48 is not evidence of a rate
    of exactly 0): its upper end there is about the Jeffreys upper bound of ``p_1`` over ``k2/n2``. ``nan``
    when either ``n`` is 0 or ``k2`` is 0 (the ratio is undefined)."""
    import numpy as np

    if n1 <= 0 or n2 <= 0 or k2 <= 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    ratio = rng.beta(k1 + 0.5, n1 - k1 + 0.5, draws) / rng.beta(k2 + 0.5, n2 - k2 + 0.5, draws)
    tail = (1 - level) / 2
    return (k1 / n1) / (k2 / n2), float(np.quantile(ratio, tail)), float(np.quantile(ratio, 1 - tail))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: ``b`` items where only the first
    rater (or method) is right, ``c`` where only the second is; under H0 the ``b + c`` discordant items
    split as Binomial(b + c, 1/2), so ``p = min(1, 2 P(X <= min(b, c)))``. 1.0 when nothing is discordant."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)
