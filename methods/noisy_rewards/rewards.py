"""Rewards of the noisy-rewards paper on the arithmetic world (methods/noisy_rewards/README.md).

* ``extract_final``: the world's analog of the paper's last ``\\boxed{}``: the integer after the
  last ``answer is``. No such phrase = a *format failure* (reward 0, never flipped).
* ``flip_group_rewards``: r' = 1 - r for every rollout of a question with probability p, decided
  once per group of n consecutive rollouts, never applied to format failures.
* ``ReasoningPatternReward`` (RPR): min(cap, weight x #distinct phrases present)
  minus the n-gram repetition penalty, floored at 0; 0 without an extractable answer.
* ``SimulatedRM`` (README: simulated RM): with ``variance`` (the paper's RMs, Section 5), a
  continuous score in [0, 1] whose *pairwise* accuracy (a correct output scores above a wrong
  one) is ``accuracy`` and whose variance is the paper's; without it, the two-point score whose
  side of 0.5 agrees with correctness with probability ``accuracy``; ``calibrate``: s < tau ->
  min(1, s + alpha RPR).
* ``shuffle_rewards``: the null reward: the batch's rewards permuted over its rollouts (the
  reward rate kept, its link to the output cut).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence

FINAL_RE = re.compile(r"answer is\s*(-?\d+)")
# The world's reasoning markers (benchmarks/data/arith.py MARKERS), lower-cased for matching.
WORLD_PHRASES = ("first", "carry", "borrow", "then", "check", "so")


def extract_final(text: str) -> int | None:
    """The integer after the last ``answer is`` or None (a format failure). Never raises."""
    if not isinstance(text, str):
        return None
    found = FINAL_RE.findall(text)
    return int(found[-1]) if found else None


def check_probability(p: float, what: str = "flip probability p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= p <= 1.0):
        raise ValueError(f"{what} must be in [0, 1], got {p!r}")
    return float(p)


def correctness(texts: Sequence[str], answers: Sequence[int]) -> tuple[list[float], list[bool]]:
    """Binary reward on the extracted final answer, and the format-failure flags."""
    if len(texts) != len(answers):
        raise ValueError(f"{len(texts)} completions but {len(answers)} answers")
    rewards, fails = [], []
    for t, a in zip(texts, answers, strict=True):
        got = extract_final(t)
        fails.append(got is None)
        rewards.append(1.0 if got is not None and got == int(a) else 0.0)
    return rewards, fails


def scorer(kind: str):
    """How a completion's correctness is read: ``arith`` (tiny, small: the arithmetic world's
    final answer) or ``math_verify`` (the paper scale: the last ``\\boxed{}`` checked by
    math-verify, methods/posttrain/rewards.py)."""
    if kind == "arith":
        return correctness
    if kind == "math_verify":
        from methods.posttrain.rewards import math_verify_reward

        return math_verify_reward
    raise ValueError(f"answers {kind!r}: not one of ['arith', 'math_verify']")


def flip_group_rewards(
    rewards: Sequence[float], fails: Sequence[bool], n: int, p: float, rng: random.Random
) -> tuple[list[float], list[bool]]:
    """Section 2.2: one Bernoulli(p) draw per group of ``n`` consecutive rollouts (one question);
    a flipped group gets r' = 1 - r on every rollout with an extractable answer; format failures
    keep their reward. Returns (rewards, per-group flip flags)."""
    check_probability(p)
    if n < 1 or len(rewards) % n:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of n={n}")
    if len(fails) != len(rewards):
        raise ValueError(f"{len(fails)} format flags for {len(rewards)} rewards")
    out, flips = list(map(float, rewards)), []
    for g in range(len(rewards) // n):
        flip = rng.random() < p  # decided once per group (i % n == 0 in the official code)
        flips.append(flip)
        if flip:
            for i in range(g * n, (g + 1) * n):
                if not fails[i]:
                    out[i] = 1.0 - out[i]
    return out, flips


def repetition_penalty(text: str, ngram: int) -> float:
    """(#distinct word n-grams occurring more than once) / (#n-grams); 0 without any n-gram."""
    words = text.split()
    grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(1 for c in counts.values() if c > 1) / len(grams)


class ReasoningPatternReward:
    """RPR: lower-case substring presence of each phrase, counted once, times the
    per-phrase ``weight`` (the paper's 1/n by default), clipped to ``cap``, minus the repetition
    penalty over word ``ngram``-grams, floored at 0; 0 when no final answer is extractable."""

    def __init__(
        self,
        phrases: Sequence[str] = WORLD_PHRASES,
        weight: float | None = None,
        cap: float = 1.0,
        ngram: int = 5,
    ):
        phrases = [str(p).lower() for p in (phrases or [])]
        if not phrases or any(not p.strip() for p in phrases):
            raise ValueError(
                f"RPR phrase list must be non-empty with non-blank phrases, got {phrases!r}"
            )
        if weight is not None and not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"RPR per-phrase weight must be > 0, got {weight!r}")
        if not cap > 0:
            raise ValueError(f"RPR cap must be > 0, got {cap!r}")
        if int(ngram) < 1:
            raise ValueError(f"RPR repetition n-gram must be >= 1, got {ngram!r}")
        self.phrases = list(dict.fromkeys(phrases))
        self.weight = float(weight) if weight is not None else 1.0 / len(self.phrases)
        self.cap, self.ngram = float(cap), int(ngram)

    def count(self, text: str) -> int:
        low = text.lower()
        return sum(1 for p in self.phrases if p in low)

    def __call__(self, text: str, require_answer: bool = True) -> float:
        if require_answer and extract_final(text) is None:
            return 0.0
        score = min(self.cap, self.weight * self.count(text))
        return max(0.0, score - repetition_penalty(text, self.ngram))


def calibrate(score: float, rpr: float, tau: float = 0.5, alpha: float = 0.1) -> float:
    """RPR calibration: s < tau -> min(1, s + alpha * RPR); s >= tau is returned unchanged."""
    return score if score >= tau else min(1.0, score + alpha * rpr)


def rm_score_law(accuracy: float, variance: float) -> tuple[float, float]:
    """(d, sigma) of the continuous simulated RM: scores clip(N(0.5 + d, sigma^2), 0, 1) for
    correct and clip(N(0.5 - d, sigma^2), 0, 1) for wrong outputs, solved so that on the
    *clipped* scores the pairwise accuracy P(correct above wrong) + P(tie) / 2 is ``accuracy``
    (the paper's RM accuracy is pairwise, Section 5) and the variance over a balanced mix is
    ``variance`` (the paper's RMs: 0.0672 / 0.1161 / 0.1937 at 65 / 75 / 85%)."""
    if not 0.5 < accuracy < 1.0:
        raise ValueError(f"RM accuracy must be in (0.5, 1) for a score law, got {accuracy}")
    if not (0 < variance < 0.25):
        raise ValueError(
            f"RM score variance must be in (0, 0.25) for scores in [0, 1], got {variance!r}"
        )

    def d_for(sigma: float) -> float:
        lo, hi = 0.0, 0.5 + 6 * sigma
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _clipped_pairwise(mid, sigma) < accuracy else (lo, mid)
        return (lo + hi) / 2

    lo, hi = 1e-3, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if _clipped_mix_variance(d_for(mid), mid) < variance:
            lo = mid
        else:
            hi = mid
    sigma = (lo + hi) / 2
    d = d_for(sigma)
    if abs(_clipped_mix_variance(d, sigma) - variance) > 1e-3:
        raise ValueError(
            f"no RM score law in [0, 1] has pairwise accuracy {accuracy} and variance {variance}"
        )
    return d, sigma


def _cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _clipped_pairwise(d: float, sigma: float, grid: int = 200) -> float:
    """P(Y_good > Y_bad) + P(Y_good = Y_bad) / 2 for Y = clip(N(0.5 +- d, sigma^2), 0, 1)."""
    mg, mb = 0.5 + d, 0.5 - d
    g0, g1 = _cdf(-mg / sigma), 1.0 - _cdf((1.0 - mg) / sigma)
    b0, b1 = _cdf(-mb / sigma), 1.0 - _cdf((1.0 - mb) / sigma)
    inner, h = 0.0, 1.0 / grid
    for i in range(grid):  # the good score inside (0, 1): above the bad one's mass below it
        x0, x1 = i * h, (i + 1) * h
        mass = _cdf((x1 - mg) / sigma) - _cdf((x0 - mg) / sigma)
        inner += mass * _cdf(((x0 + x1) / 2 - mb) / sigma)
    return inner + g1 * (1.0 - b1) + 0.5 * (g0 * b0 + g1 * b1)


def _clipped_moments(mu: float, sigma: float) -> tuple[float, float]:
    """(E[Y], E[Y^2]) of Y = clip(X, 0, 1), X ~ N(mu, sigma^2)."""
    a, b = -mu / sigma, (1.0 - mu) / sigma
    cdf = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    pdf = lambda x: math.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi)  # noqa: E731
    inside = cdf(b) - cdf(a)
    m1 = mu * inside + sigma * (pdf(a) - pdf(b)) + (1.0 - cdf(b))
    m2 = (
        (mu * mu + sigma * sigma) * inside
        + 2.0 * mu * sigma * (pdf(a) - pdf(b))
        + sigma * sigma * (a * pdf(a) - b * pdf(b))
        + (1.0 - cdf(b))
    )
    return m1, m2


def _clipped_mix_variance(d: float, sigma: float) -> float:
    (m1a, m2a), (m1b, m2b) = _clipped_moments(0.5 + d, sigma), _clipped_moments(0.5 - d, sigma)
    mean = (m1a + m1b) / 2.0
    return (m2a + m2b) / 2.0 - mean * mean


def _probit(p: float) -> float:
    """Inverse standard normal CDF (bisection on erf; exact to ~1e-12)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class SimulatedRM:
    """A reward model of controlled accuracy on the arithmetic world (README: simulated RM).

    With ``variance`` (the paper's reading, Section 5: an RM trained by MSE on binary labels
    gives a continuous score; its accuracy is pairwise): correct outputs score
    N(0.5 + d, sigma^2), wrong ones N(0.5 - d, sigma^2), clipped to [0, 1] (``rm_score_law``).
    Without it (the earlier two-point RM): the verdict agrees with correctness with probability
    ``accuracy`` and the score is 0.5 +- (accuracy - 0.5), so no score lies within
    accuracy - 0.5 of tau = 0.5 and a calibration of at most alpha can move none across it.
    Malformed outputs (no final answer) score 0 (the paper multiplies their RM score by 0)."""

    def __init__(self, accuracy: float, variance: float | None = None):
        check_probability(accuracy, "RM accuracy")
        if accuracy < 0.5:
            raise ValueError(f"RM accuracy must be >= 0.5 (better than chance), got {accuracy}")
        self.accuracy, self.kappa = float(accuracy), float(accuracy) - 0.5
        self.variance = None if variance is None else float(variance)
        self.law = None if variance is None else rm_score_law(self.accuracy, self.variance)

    def score(
        self, correct: Sequence[float], fails: Sequence[bool], rng: random.Random
    ) -> list[float]:
        out = []
        for c, f in zip(correct, fails, strict=True):
            if self.law is not None:
                d, sigma = self.law
                s = rng.gauss(0.5 + (d if c > 0.5 else -d), sigma)
                out.append(0.0 if f else min(1.0, max(0.0, s)))
                continue
            agree = rng.random() < self.accuracy
            verdict = (c > 0.5) if agree else (c <= 0.5)
            out.append(0.0 if f else 0.5 + self.kappa * (1.0 if verdict else -1.0))
        return out


def shuffle_rewards(rewards: Sequence[float], rng: random.Random) -> list[float]:
    """The null reward: the same rewards in a random order over the batch's rollouts."""
    out = list(map(float, rewards))
    rng.shuffle(out)
    return out


KINDS = ("correct", "rpr", "rm", "shuffled")


class RewardFunction:
    """The training reward of one run: ``kind`` correct | rpr | rm | shuffled (the null: the
    batch's correctness rewards permuted over its rollouts), optional group flips with
    probability ``flip_p``, optional RPR calibration of the RM. Seeded per step."""

    def __init__(self, cfg: dict, seed: int = 0):
        self.kind = cfg.get("kind", "correct")
        if self.kind not in KINDS:
            raise ValueError(f"reward kind must be one of {KINDS}, got {self.kind!r}")
        self.p = check_probability(cfg.get("flip_p", 0.0))
        r = cfg.get("rpr", {})
        self.rpr = ReasoningPatternReward(
            r.get("phrases", WORLD_PHRASES), r.get("weight"), r.get("cap", 1.0), r.get("ngram", 5)
        )
        self.rm = (
            SimulatedRM(cfg["rm_accuracy"], cfg.get("rm_variance")) if self.kind == "rm" else None
        )
        self.answers = cfg.get("answers", "arith")
        scorer(self.answers)  # an unknown scorer fails before any model is loaded
        self.calibrated = bool(cfg.get("calibrate", False))
        self.tau, self.alpha = float(cfg.get("tau", 0.5)), float(cfg.get("alpha", 0.1))
        self.seed = seed

    def __call__(self, texts, answers, n: int, step: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + step)
        correct, fails = scorer(self.answers)(texts, answers)
        if self.kind == "correct":
            rewards = list(correct)
        elif self.kind == "shuffled":  # null: correctness rewards, permuted over the batch
            rewards = shuffle_rewards(correct, rng)
        elif self.kind == "rpr":  # correctness never checked (RPR-only)
            rewards = [self.rpr(t) for t in texts]
        else:
            rewards = self.rm.score(correct, fails, rng)
            if self.calibrated:
                rewards = [
                    s if f else calibrate(s, self.rpr(t), self.tau, self.alpha)
                    for s, t, f in zip(rewards, texts, fails, strict=True)
                ]
        flips = []
        if self.p > 0:
            rewards, flips = flip_group_rewards(rewards, fails, n, self.p, rng)
        return {"rewards": rewards, "correct": correct, "fails": fails, "flips": flips}
