import math

from claimbench.stats import paired_diff, ratio_stderr, rolling_metric


def test_ratio_estimator_and_stderr():
    # Equal weights: ratio estimator = mean, se = sample sd / sqrt(n) / w.
    r, se = ratio_stderr([(-2.0, 1.0), (-4.0, 1.0), (-6.0, 1.0)])
    assert r == 4.0
    assert math.isclose(se, 2.0 / math.sqrt(3))
    # Identical per-unit rates give zero spread.
    r, se = ratio_stderr([(-3.0, 1.0), (-6.0, 2.0), (-9.0, 3.0)])
    assert r == 3.0 and se == 0.0
    assert ratio_stderr([(-1.0, 1.0)]) is None


def test_rolling_metric_units():
    v, se = rolling_metric("bits_per_byte", math.log(2), 0.1)
    assert math.isclose(v, 1.0) and math.isclose(se, 0.1 / math.log(2))
    v, se = rolling_metric("word_perplexity", math.log(10), 0.1)
    assert math.isclose(v, 10.0) and math.isclose(se, 1.0)


def test_paired_diff_cancels_shared_document_difficulty():
    # Document difficulty varies a lot, but b is always exactly 0.1 worse: paired se is 0.
    a = {i: (float(i % 2), None) for i in range(10)}
    b = {i: (float(i % 2) - 0.1, None) for i in range(10)}
    diff, se, n = paired_diff(a, b)
    assert math.isclose(diff, 0.1) and se < 1e-12 and n == 10
    # rolling: log-likelihoods with equal weights
    a = {i: (-2.0 * (i + 1), 1.0 * (i + 1)) for i in range(5)}
    b = {i: (-3.0 * (i + 1), 1.0 * (i + 1)) for i in range(5)}
    diff, se, n = paired_diff(a, b)
    assert math.isclose(diff, -1.0) and se < 1e-12
    assert paired_diff({1: (1.0, None)}, {1: (0.0, None)}) is None
