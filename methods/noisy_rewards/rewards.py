"""Rewards of the noisy-rewards paper on the arithmetic world (methods/noisy_rewards/README.md).

* ``extract_final``: the world's analog of the paper's last ``\\boxed{}``: the integer after the
  last ``answer is``. No such phrase = a *format failure* (reward 0, never flipped).
* ``flip_group_rewards``: r' = 1 - r for every rollout of a question with probability p, decided
  once per group of n consecutive rollouts, never applied to format failures.
* ``ReasoningPatternReward`` (RPR): min(cap, weight x #distinct phrases present)
  minus the n-gram repetition penalty, floored at 0; 0 without an extractable answer.
* ``SimulatedRM`` (README: simulated RM): a score in [0, 1] whose side of 0.5 agrees with
  correctness with probability ``accuracy``; ``calibrate``: s < tau -> min(1, s + alpha RPR).
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


class SimulatedRM:
    """A reward model of controlled accuracy on the arithmetic world (README: simulated RM).

    The RM's verdict agrees with correctness with probability ``accuracy``; its score is
    0.5 + kappa (+1 if it judges the output correct, -1 otherwise) with kappa = accuracy - 0.5,
    so the score variance shrinks toward 0.5 as accuracy drops (as the paper's RMs' variances do).
    Malformed outputs (no final answer) score 0 (the paper multiplies their RM score by 0)."""

    def __init__(self, accuracy: float):
        check_probability(accuracy, "RM accuracy")
        if accuracy < 0.5:
            raise ValueError(f"RM accuracy must be >= 0.5 (better than chance), got {accuracy}")
        self.accuracy, self.kappa = float(accuracy), float(accuracy) - 0.5

    def score(
        self, correct: Sequence[float], fails: Sequence[bool], rng: random.Random
    ) -> list[float]:
        out = []
        for c, f in zip(correct, fails, strict=True):
            agree = rng.random() < self.accuracy
            verdict = (c > 0.5) if agree else (c <= 0.5)
            out.append(0.0 if f else 0.5 + self.kappa * (1.0 if verdict else -1.0))
        return out


class RewardFunction:
    """The training reward of one run: ``kind`` correct | rpr | rm, optional group flips with
    probability ``flip_p``, optional RPR calibration of the RM. Seeded per step."""

    def __init__(self, cfg: dict, seed: int = 0):
        self.kind = cfg.get("kind", "correct")
        if self.kind not in ("correct", "rpr", "rm"):
            raise ValueError(f"reward kind must be correct, rpr or rm, got {self.kind!r}")
        self.p = check_probability(cfg.get("flip_p", 0.0))
        r = cfg.get("rpr", {})
        self.rpr = ReasoningPatternReward(
            r.get("phrases", WORLD_PHRASES), r.get("weight"), r.get("cap", 1.0), r.get("ngram", 5)
        )
        self.rm = SimulatedRM(cfg["rm_accuracy"]) if self.kind == "rm" else None
        self.calibrated = bool(cfg.get("calibrate", False))
        self.tau, self.alpha = float(cfg.get("tau", 0.5)), float(cfg.get("alpha", 0.1))
        self.seed = seed

    def __call__(self, texts, answers, n: int, step: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + step)
        correct, fails = correctness(texts, answers)
        if self.kind == "correct":
            rewards = list(correct)
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
