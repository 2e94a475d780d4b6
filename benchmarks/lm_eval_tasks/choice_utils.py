"""Multiple-choice questions asked as generated answers, PSFT's out-of-domain benchmarks (PSFT,
Table 1: GPQA, ARC-C, TruthfulQA, MMLU-Pro, SuperGPQA, HeadQA; methods/psft/README.md).

Every task asks the question with lettered options (``A. text``, one line each, as many letters
as options) and an instruction to end with ``Answer: X``, and scores ONE generated answer
(pass@1 of one greedy answer): the last ``Answer: X`` (or ``answer is (X)`` / ``answer is X``)
that names a letter of the question's options. A reply without one is wrong; stray letters are
never guessed from.

Each data set has a small *view* ``doc -> (question, options, correct letter)``; the task YAMLs
point at ``<name>_prompt``, ``<name>_target`` and ``<name>_results``. Sources that list the
correct answer in a fixed place (GPQA's ``Correct Answer`` field, TruthfulQA's mc1 choices,
where the correct one is always first) are put in a per-question order drawn from a SHA-256 of
the question text, so the correct letter varies between questions but never between calls (the
prompt and the scorer see the same order).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable

INSTRUCTION = 'Answer with the letter of the correct option. End your reply with "Answer: X".'
LETTERS = string.ascii_uppercase

# "Answer: C", "**Answer:** C", "answer is (C)", "The answer is **C**", "answer: c" ...
_ANSWER = re.compile(
    r"\banswer(?:\*\*)?(?:\s*:|\s+is\b\s*:?)\s*(?P<bold>\*\*)?\s*"
    r"(?P<open>[(\[])?\s*(?P<letter>[A-Za-z])\s*(?P<close>[)\]])?\s*(?P<bold_end>\*\*)?"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# what may follow a bare lowercase letter for it to count: punctuation, then end of line
_LINE_END = re.compile(r"[ \t]*[.!*)\]]*[ \t]*(?:\n|$)")

View = Callable[[dict], tuple[str, list[str], str]]


def letters(n: int) -> str:
    if not 2 <= n <= len(LETTERS):
        raise ValueError(f"a question needs 2 to {len(LETTERS)} options, got {n}")
    return LETTERS[:n]


def prompt(question: str, options: list[str]) -> str:
    """The question, one ``X. option`` line per option, then :data:`INSTRUCTION`."""
    lines = [f"{x}. {str(o).strip()}" for x, o in zip(letters(len(options)), options, strict=True)]
    return f"{str(question).strip()}\n\n" + "\n".join(lines) + f"\n\n{INSTRUCTION}"


def extract_letter(text: str, n_options: int) -> str | None:
    """The option letter the reply states last, or None without one.

    A stated answer is ``answer:`` or ``answer is`` (any case, optional bold) followed by one
    letter (optionally in parentheses or bold). An uppercase letter counts when it ends a word;
    a lowercase one only in parentheses or bold or at the end of its line ("answer is a good
    question" is not an answer). Letters beyond the question's options do not count."""
    valid = letters(n_options)
    found = None
    for m in _ANSWER.finditer(text or ""):
        letter = m["letter"]
        wrapped = (m["open"] and m["close"]) or (m["bold"] and m["bold_end"])
        if letter.islower() and not wrapped and not _LINE_END.match(text, m.end()):
            continue
        if letter.upper() in valid:
            found = letter.upper()
    return found


def stable_order(question: str, n: int) -> list[int]:
    """A permutation of ``range(n)`` fixed by the question text (SHA-256, not ``hash()``, which
    Python salts per process)."""

    def key(i: int) -> str:
        return hashlib.sha256(f"{question}\n{i}".encode()).hexdigest()

    return sorted(range(n), key=key)


def _shuffled(question: str, options: list[str], correct: int) -> tuple[str, list[str], str]:
    order = stable_order(question, len(options))
    return question, [options[i] for i in order], letters(len(options))[order.index(correct)]


def _checked(question: str, options: list[str], letter: str, where: str):
    letter = str(letter).strip().upper()
    if letter not in letters(len(options)):
        raise ValueError(f"{where}: answer {letter!r} is not a letter of {len(options)} options")
    return str(question), [str(o) for o in options], letter


def _clean(text) -> str:
    """lm-eval's GPQA clean-up of an answer text (lm_eval/tasks/gpqa/zeroshot/utils.py)."""
    return " " if text is None else text.strip().replace(" [title]", ". ").replace("  ", " ")


# --- per data set: doc -> (question, options in prompt order, correct letter) ----------------


def gpqa_view(doc: dict) -> tuple[str, list[str], str]:
    """Idavidrein/gpqa: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``."""
    options = [_clean(doc["Correct Answer"])]
    options += [_clean(doc[f"Incorrect Answer {i}"]) for i in (1, 2, 3)]
    return _shuffled(str(doc["Question"]).strip(), options, 0)


def arc_view(doc: dict) -> tuple[str, list[str], str]:
    """allenai/ai2_arc: ``question``, ``choices`` {text, label}, ``answerKey`` (labels may be
    "A".."E" or "1".."5": the options are lettered by position)."""
    labels = [str(x) for x in doc["choices"]["label"]]
    key = str(doc["answerKey"]).strip()
    if key not in labels:
        raise ValueError(f"ARC question {doc.get('id', '?')}: answerKey {key!r} not in {labels}")
    options = list(doc["choices"]["text"])
    return _checked(doc["question"], options, letters(len(options))[labels.index(key)], "ARC")


def truthfulqa_mc1_view(doc: dict) -> tuple[str, list[str], str]:
    """truthfulqa/truthful_qa multiple_choice: ``question``, ``mc1_targets`` {choices, labels},
    exactly one label 1 (always the first choice in the source)."""
    labels = list(doc["mc1_targets"]["labels"])
    if sorted(labels) != [0] * (len(labels) - 1) + [1]:
        raise ValueError(f"TruthfulQA mc1 needs exactly one label 1, got {labels}")
    question = str(doc["question"]).strip()
    return _shuffled(question, list(doc["mc1_targets"]["choices"]), labels.index(1))


def mmlu_pro_view(doc: dict) -> tuple[str, list[str], str]:
    """TIGER-Lab/MMLU-Pro: ``question``, ``options`` (up to 10), ``answer`` (letter)."""
    return _checked(doc["question"], list(doc["options"]), doc["answer"], "MMLU-Pro")


def supergpqa_view(doc: dict) -> tuple[str, list[str], str]:
    """m-a-p/SuperGPQA: ``question``, ``options`` (up to 10), ``answer_letter``."""
    return _checked(doc["question"], list(doc["options"]), doc["answer_letter"], "SuperGPQA")


def headqa_view(doc: dict) -> tuple[str, list[str], str]:
    """EleutherAI/headqa: ``qtext``, ``answers`` [{aid, atext}], ``ra`` (the aid of the right
    answer; lm-eval's headqa_en reads it as position ``ra - 1``)."""
    answers = list(doc["answers"])
    hits = [i for i, a in enumerate(answers) if int(a["aid"]) == int(doc["ra"])]
    if len(hits) != 1:
        raise ValueError(f"HeadQA: ra={doc['ra']} matches {len(hits)} of the answers' aids")
    options = [a["atext"] for a in answers]
    return _checked(doc["qtext"], options, letters(len(options))[hits[0]], "HeadQA")


# --- lm-eval hooks: doc_to_text, doc_to_target, process_results ------------------------------


def score(view: View, doc: dict, results: list[str]) -> dict[str, float]:
    """acc of the one generated answer: 1.0 when the letter it states is the correct one."""
    if len(results) != 1:
        raise ValueError(
            f"one generated answer per question expected (repeats: 1), got {len(results)}"
        )
    _, options, correct = view(doc)
    return {"acc": float(extract_letter(results[0], len(options)) == correct)}


def _hooks(view: View):
    def doc_prompt(doc: dict) -> str:
        question, options, _ = view(doc)
        return prompt(question, options)

    def doc_target(doc: dict) -> str:
        return view(doc)[2]

    def doc_results(doc: dict, results: list[str]) -> dict[str, float]:
        return score(view, doc, results)

    return doc_prompt, doc_target, doc_results


gpqa_prompt, gpqa_target, gpqa_results = _hooks(gpqa_view)
arc_prompt, arc_target, arc_results = _hooks(arc_view)
truthfulqa_mc1_prompt, truthfulqa_mc1_target, truthfulqa_mc1_results = _hooks(truthfulqa_mc1_view)
mmlu_pro_prompt, mmlu_pro_target, mmlu_pro_results = _hooks(mmlu_pro_view)
supergpqa_prompt, supergpqa_target, supergpqa_results = _hooks(supergpqa_view)
headqa_prompt, headqa_target, headqa_results = _hooks(headqa_view)
