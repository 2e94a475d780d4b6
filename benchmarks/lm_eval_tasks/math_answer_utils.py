"""Competition-math tasks that lm-eval does not register (HMMT25 for G-OPD's Table 3; AMC,
OlympiadBench and the Minerva set for PSFT's Table 1), asked and scored exactly as lm-eval's
own ``aime24`` / ``aime25`` tasks are, so that a mean over registered and local tasks is one
protocol: the prompt ``Question: <problem>\\nAnswer:``, one greedy answer, and exact match of
the last ``\\boxed{}`` (else the text between the first and last ``$``) against the answer
with lm-eval's MATH ``is_equiv`` (``lm_eval.tasks.aime.utils.process_results``).

The data sets name their fields differently (``problem`` / ``question``, ``answer`` /
``final_answer``), store numeric answers as floats (AMC: ``142.0``) or as a list of LaTeX
strings in ``$...$`` (OlympiadBench); :func:`target` reads all of them."""

from __future__ import annotations

from lm_eval.tasks.aime.utils import process_results as _aime_results

PROBLEM_KEYS = ("problem", "Problem", "question", "Question")
ANSWER_KEYS = ("answer", "Answer", "final_answer")


def _first(doc: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in doc and doc[key] is not None:
            return doc[key]
    raise KeyError(f"none of the fields {list(keys)} in the document (fields: {sorted(doc)})")


def _clean(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def problem(doc: dict) -> str:
    """The problem statement of a document."""
    return str(_first(doc, PROBLEM_KEYS)).strip()


def target(doc: dict) -> str:
    """The reference answer as a string: integer-valued floats without ``.0``, ``$...$``
    stripped, a list of answers (OlympiadBench's multi-answer problems) joined by ", "."""
    value = _first(doc, ANSWER_KEYS)
    if isinstance(value, (list, tuple)):
        return ", ".join(_clean(v) for v in value)
    return _clean(value)


def doc_to_text(doc: dict) -> str:
    """lm-eval's aime prompt."""
    return f"Question: {problem(doc)}\nAnswer:"


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    """lm-eval's aime exact match of the answer against :func:`target`."""
    return _aime_results({"answer": target(doc)}, results)
