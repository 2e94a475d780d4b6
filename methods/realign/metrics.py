"""Realignment metrics: exact match, output length and the paper's token reduction.

Token reduction (README.md, Eq. 5, checked on Table 1's lambda = 0.5 row): per benchmark the
relative reduction of the mean output length versus the reference, then the plain average over
benchmarks, in percent:  100 * mean_b (1 - len_variant,b / len_ref,b).
Here a "benchmark" is one arithmetic family of the test set.
"""

from __future__ import annotations

import math


def token_reduction(lengths: dict[str, float], ref_lengths: dict[str, float]) -> float:
    """Percent; benchmarks are the keys of ``ref_lengths`` (all must be present in ``lengths``)."""
    if not ref_lengths:
        raise ValueError("token reduction needs the reference's lengths on at least one benchmark")
    missing = sorted(set(ref_lengths) - set(lengths))
    if missing:
        raise ValueError(f"token reduction: no lengths for benchmark(s) {missing}")
    for b, v in ref_lengths.items():
        if not v > 0:
            raise ValueError(f"token reduction: reference length on {b!r} is {v}, must be > 0")
    return 100.0 * sum(1.0 - lengths[b] / ref_lengths[b] for b in ref_lengths) / len(ref_lengths)


def mean_se(xs: list[float]) -> tuple[float, float | None]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def monotone_violations(values: list[float]) -> tuple[int, float]:
    """For a sequence meant to be non-increasing: the number of increases and the largest one
    relative to the previous value (0 when monotone)."""
    count, worst = 0, 0.0
    for a, b in zip(values, values[1:], strict=False):
        if b > a:
            count += 1
            worst = max(worst, (b - a) / a if a > 0 else math.inf)
    return count, worst
