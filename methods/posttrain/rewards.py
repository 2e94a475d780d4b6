"""Verifiable rewards on the arithmetic world, read from its data files (never imported from
``benchmarks``: methods and suites meet in files).

A completion states its answer after the last ``answer is`` (the long step-by-step form) or as
its first integer (the short form). A completion that states no integer is a *format failure*:
it scores 0 and is counted, never raised.

At the paper scale the papers' math answers are the last ``\\boxed{}`` of a completion, checked
against the reference with math-verify (``parse`` + ``verify``): :func:`math_verify_reward`, with
the same contract (a completion without a closed ``\\boxed{}`` is a format failure).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

ANSWER_RE = re.compile(r"answer is\s*(-?\d+)")
INT_RE = re.compile(r"-?\d+")


def extract_answer(text: str) -> int | None:
    """The integer a completion states, or None (a format failure). Never raises."""
    if not isinstance(text, str):
        return None
    found = ANSWER_RE.findall(text)
    if found:
        return int(found[-1])
    first = INT_RE.search(text)
    return int(first.group()) if first else None


@dataclass
class RewardStats:
    """Running counts of one reward function: calls, correct answers, format failures."""

    n: int = 0
    correct: int = 0
    format_failures: int = 0
    history: list[int] = field(default_factory=list)

    @property
    def format_failure_rate(self) -> float:
        return self.format_failures / self.n if self.n else 0.0


def correctness_reward(
    completions: list[str], answers: list[int], stats: RewardStats | None = None
) -> tuple[list[float], list[bool]]:
    """Binary reward 1.0 if the stated answer equals the true one; also the format-failure flags."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    rewards, fails = [], []
    for text, ans in zip(completions, answers, strict=True):
        got = extract_answer(text)
        fail = got is None
        ok = (not fail) and got == int(ans)
        rewards.append(1.0 if ok else 0.0)
        fails.append(fail)
        if stats is not None:
            stats.n += 1
            stats.correct += int(ok)
            stats.format_failures += int(fail)
    if stats is not None:
        stats.history.append(sum(fails))
    return rewards, fails


def load_problems(path: str | Path, families: list[str] | None = None, limit: int | None = None):
    """Problems from an arithmetic-world JSONL file (keys: prompt, short, long, answer, family)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"arithmetic data not found: {path} (was the data rule run?)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if families is None or r["family"] in families:
                rows.append(r)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path}: no problems (families={families})")
    return rows


def demonstration(problem: dict, form: str) -> tuple[str, str]:
    """(prompt, completion) in the layout the base models were trained on: ``prompt + " " +
    form + "\\n"`` (the EOS is appended by the encoder)."""
    if form not in ("short", "long"):
        raise ValueError(f"form must be 'short' or 'long', got {form!r}")
    return problem["prompt"], " " + problem[form] + "\n"


# Boxes whose value is too costly to compute (a power tower of numerals, a 7-digit exponent, a
# 4-digit factorial or a factorial chain): sympy would hold the GIL for minutes, and outside the
# main thread no timeout can stop it. Such a box states an answer that is scored wrong.
COSTLY_RE = re.compile(r"\d\s*\^\s*\{?\s*\d+\s*\^|\^\s*\{?\s*\d{7,}|\d{4,}\s*!|!\s*!")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def verify_boxed(text: str, gold: str) -> tuple[bool, bool]:
    """(correct, format_failure) of one completion against a reference answer.

    The answer is the content of the completion's last ``\\boxed{}`` (earlier boxes are drafts),
    parsed and compared by math-verify; the reference is parsed as if it were boxed (a plain
    ``0.5``, ``\\frac{1}{2}`` or ``1,000`` alike). math-verify's timeouts use ``signal.alarm``,
    which works only in the main thread: elsewhere they are off (``None``).
    """
    from math_verify import parse, verify

    from methods.posttrain.data import last_boxed

    inner = last_boxed(text)
    if inner is None or not inner.strip():
        return False, True
    if COSTLY_RE.search(inner):
        return False, False
    kw = {} if _main_thread() else {"parsing_timeout": None}
    pred = parse("\\boxed{" + inner + "}", **kw)
    if not pred:
        return False, True  # a box math-verify cannot read states no answer
    gold_text = str(gold).strip()
    ref = last_boxed(gold_text)
    ref = parse("\\boxed{" + (ref if ref is not None else gold_text) + "}", **kw)
    if not ref:
        return False, False
    timeout = {} if _main_thread() else {"timeout_seconds": None}
    return bool(verify(ref, pred, **timeout)), False


def math_verify_reward(
    completions: list[str], answers: list[str], stats: RewardStats | None = None
) -> tuple[list[float], list[bool]]:
    """Binary reward 1.0 when the last ``\\boxed{}`` equals the reference (math-verify); also the
    format-failure flags. Same contract as :func:`correctness_reward`."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    rewards, fails = [], []
    for text, ans in zip(completions, answers, strict=True):
        ok, fail = verify_boxed(text, ans)
        rewards.append(1.0 if ok else 0.0)
        fails.append(fail)
        if stats is not None:
            stats.n += 1
            stats.correct += int(ok)
            stats.format_failures += int(fail)
    if stats is not None:
        stats.history.append(sum(fails))
    return rewards, fails


REWARDS = {"arith": correctness_reward, "math_verify": math_verify_reward}


def reward_function(kind: str):
    """The reward of a scale: ``arith`` (tiny, small: "answer is N") or ``math_verify`` (paper)."""
    if kind not in REWARDS:
        raise ValueError(f"reward {kind!r}: not one of {sorted(REWARDS)}")
    return REWARDS[kind]
