"""The arithmetic reasoning world: verifiable problems in several operation families.

Every problem has a known integer answer and is rendered in two forms:

* ``short``: the direct answer, e.g. ``"132"``;
* ``long``: a step-by-step trace whose steps use a fixed set of reasoning markers
  (``First``, ``carry``, ``borrow``, ``Then``, ``Check``, ``So``) and which always ends with
  ``"So the answer is 132."``.

Prompts are ``"Question: <question>\\nAnswer:"``; a completion is ``" " + form``. In-domain
families appear in training; out-of-domain families are held out entirely (their questions,
templates and answers never appear in the training file) and only used for evaluation.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
ANSWER_RE = re.compile(r"answer is\s*(-?\d+)")
INT_RE = re.compile(r"-?\d+")
MARKERS = ("First", "carry", "borrow", "Then", "Check", "So")


@dataclass(frozen=True)
class Problem:
    id: str
    family: str
    question: str
    answer: int
    short: str
    long: str

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(question=self.question)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["prompt"] = self.prompt
        return d


def extract_answer(text: str) -> int | None:
    """The answer a completion states: after the last "answer is", else the first integer.

    Returns None when the text states no integer (a format failure, counted by callers).
    """
    found = ANSWER_RE.findall(text)
    if found:
        return int(found[-1])
    first = INT_RE.search(text)
    return int(first.group()) if first else None


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


def _num(rng: random.Random, max_digits: int, min_value: int = 0) -> int:
    d = rng.randint(1, max_digits)
    lo = max(min_value, 0 if d == 1 else 10 ** (d - 1))
    return rng.randint(lo, 10**d - 1)


def _column_step(i: int, term: str, value: int) -> str:
    """One column of a written addition or multiplication: write the digit, carry the rest."""
    word = "First" if i == 0 else "Then"
    if value >= 10:
        return f"{word}, {term} = {value}, write {value % 10} and carry {value // 10}."
    return f"{word}, {term} = {value}, write {value}."


def _add_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        s = x + y + carry
        steps.append(_column_step(i, f"{x} + {y}" + (f" + {carry}" if carry else ""), s))
        carry = s // 10
    if carry:
        steps.append("Then write the carry 1.")
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x = da[i] - borrow
        y = db[i] if i < len(db) else 0
        word = "First" if i == 0 else "Then"
        if x < y:
            steps.append(f"{word}, {x + 10} - {y} = {x + 10 - y}, borrow 1.")
            borrow = 1
        else:
            steps.append(f"{word}, {x} - {y} = {x - y}.")
            borrow = 0
    return steps


def gen_add(rng: random.Random, max_digits: int) -> tuple[str, int, list[str]]:
    a, b = _num(rng, max_digits), _num(rng, max_digits)
    c = a + b
    return f"What is {a} + {b}?", c, [*_add_steps(a, b), f"Check: {c} - {b} = {a}."]


def gen_sub(rng: random.Random, max_digits: int) -> tuple[str, int, list[str]]:
    a, b = _num(rng, max_digits), _num(rng, max_digits)
    a, b = max(a, b), min(a, b)
    c = a - b
    return f"What is {a} - {b}?", c, [*_sub_steps(a, b), f"Check: {c} + {b} = {a}."]


def gen_mul(rng: random.Random, max_digits: int) -> tuple[str, int, list[str]]:
    a, b = rng.randint(2, 9), _num(rng, max_digits)
    steps, carry = [], 0
    for i, y in enumerate(_digits(b)):
        p = a * y + carry
        steps.append(_column_step(i, f"{a} x {y}" + (f" + {carry}" if carry else ""), p))
        carry = p // 10
    if carry:
        steps.append(f"Then write the carry {carry}.")
    return f"What is {a} x {b}?", a * b, steps


def gen_compare(rng: random.Random, max_digits: int) -> tuple[str, int, list[str]]:
    a, b = _num(rng, max_digits), _num(rng, max_digits)
    while a == b:
        b = _num(rng, max_digits)
    big, small = max(a, b), min(a, b)
    steps = [f"First, compare {a} and {b}.", f"Then, {big} is more than {small}."]
    return f"Which is larger, {a} or {b}?", big, steps


_NAMES = ("Ann", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana")
_THINGS = ("apples", "coins", "books", "marbles", "pens", "shells")


def gen_word2(rng: random.Random, max_digits: int) -> tuple[str, int, list[str]]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = _num(rng, max_digits, 1), _num(rng, max_digits, 1)
    c = rng.randint(1, a + b)
    s = a + b
    q = (
        f"{name} has {a} {thing}, gets {b} more, then gives away {c}. "
        f"How many {thing} does {name} have?"
    )
    steps = [f"First, {a} + {b} = {s}.", f"Then, {s} - {c} = {s - c}."]
    return q, s - c, steps


def gen_add3(rng: random.Random, max_digits: int) -> tuple[str, int, list[str]]:
    a, b, c = (_num(rng, max_digits) for _ in range(3))
    steps = [f"First, {a} + {b} = {a + b}.", f"Then, {a + b} + {c} = {a + b + c}."]
    return f"What is {a} + {b} + {c}?", a + b + c, steps


FAMILIES: dict[str, Callable[[random.Random, int], tuple[str, int, list[str]]]] = {
    "add": gen_add,
    "sub": gen_sub,
    "mul": gen_mul,
    "compare": gen_compare,
    "word2": gen_word2,
    "add3": gen_add3,
}


def _family_rng(seed: int, family: str, stream: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{family}/{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_problem(family: str, rng: random.Random, max_digits: int, pid: str) -> Problem:
    if family not in FAMILIES:
        raise ValueError(f"unknown arithmetic family {family!r} (known: {', '.join(FAMILIES)})")
    question, answer, steps = FAMILIES[family](rng, max_digits)
    long = " ".join([*steps, f"So the answer is {answer}."])
    return Problem(pid, family, question, answer, str(answer), long)


def generate_family(
    family: str,
    n: int,
    *,
    seed: int,
    max_digits: int,
    stream: str,
    exclude: set[str] | None = None,
    distinct: bool = True,
) -> list[Problem]:
    """``n`` problems of one family; questions in ``exclude`` are skipped.

    Evaluation sets are ``distinct``; training draws i.i.d. (repeats allowed, since a small
    family such as one-digit x two-digit multiplication has fewer problems than a training set).
    """
    rng = _family_rng(seed, family, stream)
    seen = set(exclude or ())
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"arith: family {family!r} with max_digits={max_digits} cannot yield {n} distinct "
                f"problems; lower n or raise max_digits"
            )
        p = make_problem(family, rng, max_digits, f"{family}-{stream}-{len(out):06d}")
        if p.question in seen:
            continue
        if distinct:
            seen.add(p.question)
        out.append(p)
    return out


def build_world(
    *,
    seed: int,
    id_families: Iterable[str],
    ood_families: Iterable[str],
    n_train_per_family: int,
    n_eval_per_family: int,
    max_digits: int,
) -> dict[str, list[Problem]]:
    """Splits: ``train``/``valid``/``test_id`` over in-domain families, ``test_ood`` held out.

    Evaluation questions are generated first and excluded from training, so no test question
    is ever seen in training.
    """
    id_families, ood_families = list(id_families), list(ood_families)
    overlap = set(id_families) & set(ood_families)
    if overlap:
        raise ValueError(f"arith: families {sorted(overlap)} are both in-domain and out-of-domain")
    splits: dict[str, list[Problem]] = {"train": [], "valid": [], "test_id": [], "test_ood": []}
    for fam in id_families:
        test = generate_family(fam, n_eval_per_family, seed=seed, max_digits=max_digits, stream="test")
        held = {p.question for p in test}
        valid = generate_family(
            fam, n_eval_per_family, seed=seed, max_digits=max_digits, stream="valid", exclude=held
        )
        held |= {p.question for p in valid}
        train = generate_family(
            fam,
            n_train_per_family,
            seed=seed,
            max_digits=max_digits,
            stream="train",
            exclude=held,
            distinct=False,
        )
        splits["train"] += train
        splits["valid"] += valid
        splits["test_id"] += test
    for fam in ood_families:
        splits["test_ood"] += generate_family(
            fam, n_eval_per_family, seed=seed, max_digits=max_digits, stream="test"
        )
    # Interleave families deterministically so any prefix of a split covers every family.
    shuffle = random.Random(seed)
    for name in splits:
        shuffle.shuffle(splits[name])
    return splits


def multiple_choice(problems: list[Problem], seed: int, n_choices: int = 4) -> list[dict]:
    """Multiple-choice items: the true answer among near-miss distractors (chance 1/n_choices)."""
    rng = random.Random(seed)
    items = []
    for p in problems:
        choices = {p.answer}
        offsets = [1, -1, 2, -2, 10, -10, 11, -11, 100, -100]
        while len(choices) < n_choices:
            cand = p.answer + rng.choice(offsets)
            if cand >= 0:
                choices.add(cand)
        ordered = sorted(choices)
        rng.shuffle(ordered)
        items.append(
            {
                "id": p.id,
                "family": p.family,
                "question": p.question,
                "choices": [str(c) for c in ordered],
                "label": ordered.index(p.answer),
            }
        )
    return items


def training_text(problem: Problem, use_long: bool) -> str:
    return f"{problem.prompt} {problem.long if use_long else problem.short}\n"
