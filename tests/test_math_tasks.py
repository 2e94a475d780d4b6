"""The local competition-math lm-eval tasks (benchmarks/lm_eval_tasks/math_answer_utils.py):
each data set's field layout is read, asked with lm-eval's aime prompt and scored with its
exact match, end to end through lm-eval's task loader on a local copy of each task."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "benchmarks" / "lm_eval_tasks"

# each task's documents in its data set's real field layout, a right and a wrong answer
LAYOUTS = {
    "hmmt25_feb": (
        {"problem_idx": 1, "problem": "Compute $1+1$.", "answer": "2", "problem_type": ["Algebra"]},
        "so \\boxed{2}",
        "\\boxed{3}",
    ),
    "hmmt25_nov": (
        {"problem_idx": 4, "problem": "Find $x$.", "answer": "\\frac{9\\sqrt{23}}{23}"},
        "thus $x = \\boxed{\\frac{9\\sqrt{23}}{23}}$",
        "\\boxed{\\frac{9}{23}}",
    ),
    "amc": (
        {"id": 0, "problem": "How many?", "answer": 142.0, "url": "https://x"},
        "The count is \\boxed{142}.",
        "\\boxed{142.5}",
    ),
    "olympiadbench": (
        {
            "id": 7,
            "question": "Find the area.",
            "final_answer": ["$\\frac{1}{2}$"],
            "is_multiple_answer": False,
            "unit": None,
        },
        "area \\boxed{\\frac12}",
        "\\boxed{2}",
    ),
    "minervamath": (
        {"question": "What is the energy in eV?", "answer": "1.5"},
        "E = \\boxed{1.5}",
        "\\boxed{15}",
    ),
}


@pytest.fixture(scope="module")
def utils():
    sys.path.insert(0, str(TASK_DIR))
    try:
        import math_answer_utils
    finally:
        sys.path.pop(0)
    return math_answer_utils


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"answer": "204"}, "204"),
        ({"Answer": 204}, "204"),
        ({"answer": 142.0}, "142"),
        ({"answer": 0.5}, "0.5"),
        ({"final_answer": ["$\\frac{1}{2}$"]}, "\\frac{1}{2}"),
        ({"final_answer": ["$3$", "$5$"]}, "3, 5"),
        ({"answer": " $x+1$ "}, "x+1"),
    ],
)
def test_target_reads_every_layout(utils, doc, expected):
    assert utils.target(doc) == expected


def test_missing_fields_name_what_is_there(utils):
    with pytest.raises(KeyError, match="fields"):
        utils.target({"solution": "x"})
    with pytest.raises(KeyError, match="problem"):
        utils.problem({"answer": "1"})


def test_scoring_is_lm_evals_aime_exact_match(utils):
    from lm_eval.tasks.aime.utils import process_results

    for gen in ["\\boxed{2}", "$2$", "the answer is 3", "\\boxed{\\frac{4}{2}}"]:
        ours = utils.process_results({"problem": "p", "answer": 2.0}, [gen])
        assert ours == process_results({"Answer": "2"}, [gen])
    assert utils.process_results({"answer": "2"}, ["\\boxed{2}"]) == {"exact_match": 1}


def _loader():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return Loader


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_task_files_use_aimes_protocol(name):
    cfg = yaml.load((TASK_DIR / f"{name}.yaml").read_text(), Loader=_loader())
    aime_dir = Path(__import__("lm_eval").__file__).parent / "tasks" / "aime"
    aime = yaml.load((aime_dir / "aime24.yaml").read_text(), Loader=_loader())
    assert cfg["task"] == name and cfg["num_fewshot"] == 0 and cfg["repeats"] == 1
    assert cfg["generation_kwargs"] == aime["generation_kwargs"]
    assert cfg["process_results"] == "math_answer_utils.process_results"
    assert [m["metric"] for m in cfg["metric_list"]] == ["exact_match"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_tasks_load_and_score_through_lm_eval(name, tmp_path):
    from lm_eval.tasks import TaskManager

    doc, right, wrong = LAYOUTS[name]
    cfg_text = (TASK_DIR / f"{name}.yaml").read_text()
    cfg = yaml.load(cfg_text, Loader=_loader())
    split = cfg["test_split"]
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(doc) + "\n" + json.dumps(doc) + "\n")
    local = [
        line
        for line in cfg_text.splitlines()
        if not line.startswith(("dataset_path:", "dataset_name:"))
    ]
    local += ["dataset_path: json", f"dataset_kwargs: {{data_files: {{{split}: {data}}}}}"]
    (tmp_path / f"{name}.yaml").write_text("\n".join(local) + "\n")
    shutil.copy(TASK_DIR / "math_answer_utils.py", tmp_path)
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    task = tm.load([name])["tasks"][name]  # as benchmarks/lm_eval_suite.py loads tasks
    docs = list(task.test_docs())
    assert len(docs) == 2
    text = task.doc_to_text(docs[0])
    assert text.startswith("Question: ") and text.endswith("\nAnswer:")
    assert (doc.get("problem") or doc.get("question")) in text
    assert task.process_results(docs[0], [right]) == {"exact_match": 1}
    assert task.process_results(docs[0], [wrong]) == {"exact_match": 0}
