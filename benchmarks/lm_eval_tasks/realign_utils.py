"""Scoring of the Flexible Realignment paper's reasoning benchmarks (Table 1; methods/realign/
README.md, "Paper scale"): ``repeats: 8`` samples per problem, Pass@1 = the mean accuracy over
the samples, answer = the last ``\\boxed{}`` of each sample compared with lm-eval's MATH
``is_equiv`` (the aime tasks' scorer). Token counts are not computed here (they need the
model's tokenizer): ``methods.realign.paper_tokens`` counts them from the stored samples."""

from __future__ import annotations

from lm_eval.tasks.aime.utils import is_equiv, last_boxed_only_string, remove_boxed


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{}`` (or ``\\fbox{}``) in ``text``; None without one."""
    box = last_boxed_only_string(text or "")
    if box is None:
        return None
    try:
        return remove_boxed(box)
    except (AssertionError, IndexError):
        return None


def _target(doc: dict) -> str:
    return str(doc[next(k for k in doc if k.lower() == "answer")])


def pass_at_1(doc: dict, results: list[str]) -> dict[str, float]:
    """Pass@1 over the problem's samples (the paper's 8): the fraction whose boxed answer is
    equivalent to the target; a sample without ``\\boxed{}`` counts as wrong."""
    if not results:
        raise ValueError("no samples for a problem (repeats must be >= 1)")
    target = _target(doc)
    right = [(a := boxed_answer(r)) is not None and is_equiv(a, target) for r in results]
    return {"pass_at_1": sum(right) / len(right)}
