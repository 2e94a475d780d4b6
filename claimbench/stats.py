"""Standard errors and rank statistics used by suites, methods and the claims checker (one
implementation of each)."""

from __future__ import annotations

import math
from collections.abc import Sequence

LN2 = math.log(2)


def mean_stderr(values: Sequence[float]) -> tuple[float, float] | None:
    """(mean, standard error of the mean); None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def ratio_stderr(pairs: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Delta-method stderr of the ratio estimator R = -sum(ll) / sum(w) over documents.

    This is how lm-eval aggregates perplexities (total log-likelihood over total words or
    bytes), for which it reports no stderr: se(R) = sqrt(var(-ll_i - R w_i) / n) / mean(w).
    Returns (R, se) or None for fewer than 2 documents.
    """
    n = len(pairs)
    if n < 2:
        return None
    total_ll = sum(p[0] for p in pairs)
    total_w = sum(p[1] for p in pairs)
    r = -total_ll / total_w
    resid = [-ll - r * w for ll, w in pairs]
    mean_resid = sum(resid) / n
    var = sum((x - mean_resid) ** 2 for x in resid) / (n - 1)
    return r, math.sqrt(var / n) / (total_w / n)


def rolling_metric(name: str, r: float, se_r: float) -> tuple[float, float]:
    """Value and stderr of an lm-eval rolling metric from R (nats per word or byte)."""
    if name == "bits_per_byte":
        return r / LN2, se_r / LN2
    return math.exp(r), math.exp(r) * se_r  # word_perplexity, byte_perplexity


def paired_diff(
    a: dict[object, tuple[float, float | None]], b: dict[object, tuple[float, float | None]]
) -> tuple[float, float, int] | None:
    """Paired difference a - b over the documents both have, with its standard error.

    Values are (score, weight): weight None for per-document means (accuracy, exact match),
    or (log-likelihood, words/bytes) for rolling perplexity metrics, where the difference is
    taken on R = -sum(ll)/sum(w) (nats per unit; same sign as the perplexity difference).
    Returns (diff, se, n) or None when fewer than 2 documents are shared.
    """
    docs = sorted(set(a) & set(b), key=str)
    if len(docs) < 2:
        return None
    if a[docs[0]][1] is None:
        d = mean_stderr([a[k][0] - b[k][0] for k in docs])
        return (d[0], d[1], len(docs)) if d else None
    # rolling: ll differences over identical weights (the same documents were scored)
    pairs = [(a[k][0] - b[k][0], a[k][1]) for k in docs]
    r = ratio_stderr(pairs)
    return (r[0], r[1], len(docs)) if r else None


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho; 0.0 when either side is constant (no ranking to compare).

    Constancy is tested exactly (max == min): the float std of thirty equal values can be 2e-16,
    not 0, and scipy returns nan for a constant input.
    """
    import numpy as np
    from scipy.stats import spearmanr

    a, b = np.ravel(np.asarray(a, dtype=float)), np.ravel(np.asarray(b, dtype=float))
    if len(a) != len(b):
        raise ValueError(f"spearman: the two score lists differ in length ({len(a)} vs {len(b)})")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


Z_POWER80 = 0.8416  # Φ⁻¹(0.8): the one-sided z of 80% power


def normal_two_sided_alpha(z: float) -> float:
    """P(|N(0,1)| > z): the two-sided level that a z-bar of ``z`` stands for (0.05 at 1.96)."""
    return math.erfc(z / math.sqrt(2.0))


def mde(se: float | None, z: float) -> float | None:
    """Minimum detectable effect: the smallest true gap that a test at ``z`` detects with 80%
    power at this standard error, (z + 0.8416)·se."""
    return None if se is None else (z + Z_POWER80) * se


def n_needed(n: int | None, se: float | None, z: float, effect: float | None) -> int | None:
    """The n (documents or seeds) at which 80% power detects ``effect``, assuming se ∝ 1/√n:
    ceil(n·((z + 0.8416)·se / effect)²)."""
    if n is None or se is None or not effect:
        return None
    return math.ceil(n * ((z + Z_POWER80) * se / abs(effect)) ** 2 - 1e-9)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value on the discordant pairs: b documents right only in one
    run, c only in the other; under no difference b ~ Binomial(b + c, 1/2)."""
    from fractions import Fraction

    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))
