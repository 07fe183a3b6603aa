"""Chi-square homogeneity test of two samples of categories (no scipy needed)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Homogeneity:
    statistic: float
    df: int
    p_value: float
    table: dict[Hashable, tuple[int, int]]


def homogeneity(a: Sequence[Hashable], b: Sequence[Hashable], min_expected: float = 5.0) -> Homogeneity:
    """Pearson's chi-square test that ``a`` and ``b`` come from one distribution.

    Categories whose expected count is below ``min_expected`` on either side are
    pooled into one (with the next-rarest until the pool reaches it)."""
    ca, cb = Counter(a), Counter(b)
    na, nb = len(a), len(b)
    cells = sorted(set(ca) | set(cb), key=lambda k: ca[k] + cb[k], reverse=True)
    table: dict[Hashable, tuple[int, int]] = {}
    pool = [0, 0]
    for k in cells:
        total = ca[k] + cb[k]
        if min(na, nb) * total / (na + nb) >= min_expected:
            table[k] = (ca[k], cb[k])
        else:
            pool[0] += ca[k]
            pool[1] += cb[k]
    if pool[0] + pool[1] > 0:
        if min(na, nb) * (pool[0] + pool[1]) / (na + nb) < min_expected and table:
            rarest = min(table, key=lambda k: sum(table[k]))
            x, y = table.pop(rarest)
            pool = [pool[0] + x, pool[1] + y]
        table["<pooled>"] = (pool[0], pool[1])
    stat = 0.0
    for x, y in table.values():
        total = x + y
        for observed, n in ((x, na), (y, nb)):
            expected = n * total / (na + nb)
            stat += (observed - expected) ** 2 / expected
    df = max(len(table) - 1, 1)
    return Homogeneity(stat, df, chi2_sf(stat, df), table)


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X chi-square with ``df`` degrees of freedom."""
    return _upper_gamma_q(df / 2.0, x / 2.0)


def _upper_gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x)."""
    if x <= 0.0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:  # the series of P(a, x)
        term = total = 1.0 / a
        n = a
        for _ in range(1000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # the continued fraction of Q(a, x) (modified Lentz)
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(log_prefix) * h
