"""PSFT's out-of-domain multiple-choice benchmarks as generated answers (PSFT, Table 1;
methods/psft/README.md): the prompt with lettered options, the option-letter extraction, the
per-question option order, and the six task YAMLs loaded through lm-eval over tiny local files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TASK_DIR = ROOT / "benchmarks" / "lm_eval_tasks"
sys.path.insert(0, str(TASK_DIR))
try:
    import choice_utils as cu
finally:
    sys.path.pop(0)


def _gpqa(i: int) -> dict:
    return {
        "Question": f"Which particle is number {i}?",
        "Correct Answer": f"right {i}",
        "Incorrect Answer 1": f"wrong {i}a",
        "Incorrect Answer 2": f"wrong {i}b",
        "Incorrect Answer 3": f"wrong {i}c",
    }


def _arc(i: int) -> dict:
    return {
        "id": f"arc-{i}",
        "question": f"What does a plant need, case {i}?",
        "choices": {"text": ["rocks", "light", "sand", "salt"], "label": ["1", "2", "3", "4"]},
        "answerKey": "2",
    }


def _truthfulqa(i: int) -> dict:
    return {
        "question": f"What happens if you crack your knuckles, version {i}?",
        "mc1_targets": {
            "choices": [f"nothing in particular {i}", "arthritis", "weak bones", "gout"],
            "labels": [1, 0, 0, 0],
        },
    }


def _mmlu_pro(i: int) -> dict:
    opts = [f"{k} apples" for k in range(10)]
    return {
        "question": f"How many apples, case {i}?",
        "options": opts,
        "answer": "H",
        "answer_index": 7,
    }


def _supergpqa(i: int) -> dict:
    opts = [f"option {k}" for k in range(6)]
    return {
        "question": f"Which option, case {i}?",
        "options": opts,
        "answer_letter": "F",
        "answer": "option 5",
    }


def _headqa(i: int) -> dict:
    answers = [{"aid": k, "atext": f"drug {k}"} for k in range(1, 5)]
    return {"qtext": f"Which drug treats case {i}?", "answers": answers, "ra": 3}


# name (of the choice_utils hooks) -> (task, its split, a doc in the source's layout, view)
DATASETS = {
    "gpqa": ("psft_gpqa_diamond", "train", _gpqa, cu.gpqa_view),
    "arc": ("psft_arc_challenge", "test", _arc, cu.arc_view),
    "truthfulqa_mc1": ("psft_truthfulqa_mc1", "validation", _truthfulqa, cu.truthfulqa_mc1_view),
    "mmlu_pro": ("psft_mmlu_pro", "test", _mmlu_pro, cu.mmlu_pro_view),
    "supergpqa": ("psft_supergpqa", "train", _supergpqa, cu.supergpqa_view),
    "headqa": ("psft_headqa_en", "test", _headqa, cu.headqa_view),
}
SOURCES = {
    "psft_gpqa_diamond": ("Idavidrein/gpqa", "gpqa_diamond"),
    "psft_arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"),
    "psft_truthfulqa_mc1": ("truthfulqa/truthful_qa", "multiple_choice"),
    "psft_mmlu_pro": ("TIGER-Lab/MMLU-Pro", None),
    "psft_supergpqa": ("m-a-p/SuperGPQA", None),
    "psft_headqa_en": ("EleutherAI/headqa", "en"),
}


@pytest.mark.parametrize(
    "text,n,expected",
    [
        ("Let me think. B looks odd.\nAnswer: C", 4, "C"),
        ("Answer: A\nWait, that is wrong.\nAnswer: D", 4, "D"),
        ("The answer is (B).", 4, "B"),
        ("so the answer is B", 4, "B"),
        ("**Answer:** C", 4, "C"),
        ("The final answer is **J**", 10, "J"),
        ("answer: c", 4, "C"),
        ("the answer is (d)", 4, "D"),
        ("Answer: E", 4, None),  # beyond the question's 4 options
        ("Answer: E", 5, "E"),
        ("Answer: B\nAnswer: K", 10, "B"),  # K is no option: the last valid letter
        ("I think it is C.", 4, None),  # no stated answer: no guessing
        ("", 4, None),
        ("The answer is a good question to ask.", 4, None),  # the article, not option A
        ("The answer isn't obvious. C", 4, None),
        ("Answer: Because", 4, None),
    ],
)
def test_extract_letter(text, n, expected):
    assert cu.extract_letter(text, n) == expected


def test_prompt_lists_lettered_options_then_the_instruction():
    assert cu.prompt(" Why? ", ["x", " y "]) == (
        "Why?\n\nA. x\nB. y\n\nAnswer with the letter of the correct option. End your reply with "
        '"Answer: X".'
    )
    with pytest.raises(ValueError, match="2 to 26 options"):
        cu.prompt("Why?", ["only one"])


@pytest.mark.parametrize(
    "name,options,correct",
    [
        ("arc", ["rocks", "light", "sand", "salt"], "B"),
        ("mmlu_pro", [f"{k} apples" for k in range(10)], "H"),
        ("supergpqa", [f"option {k}" for k in range(6)], "F"),
        ("headqa", [f"drug {k}" for k in range(1, 5)], "C"),
    ],
)
def test_fixed_order_sources_keep_their_order(name, options, correct):
    task, _, build, view = DATASETS[name]
    doc = build(0)
    text = getattr(cu, f"{name}_prompt")(doc)
    lines = [f"{x}. {o}" for x, o in zip(cu.LETTERS, options, strict=False)]
    assert "\n".join(lines) in text and text.endswith(cu.INSTRUCTION)
    assert f"{cu.LETTERS[len(options)]}. " not in text  # no letter beyond the options
    assert getattr(cu, f"{name}_target")(doc) == correct
    results = getattr(cu, f"{name}_results")
    assert results(doc, [f"Reasoning...\nAnswer: {correct}"]) == {"acc": 1.0}
    wrong = "A" if correct != "A" else "B"
    assert results(doc, [f"Answer: {wrong}"]) == {"acc": 0.0}
    assert results(doc, ["no letter stated"]) == {"acc": 0.0}


@pytest.mark.parametrize("name", ["gpqa", "truthfulqa_mc1"])
def test_shuffled_sources_move_the_correct_answer_deterministically(name):
    _, _, build, view = DATASETS[name]
    prompt_of = getattr(cu, f"{name}_prompt")
    results = getattr(cu, f"{name}_results")
    letters = set()
    for i in range(8):
        doc = build(i)
        right = doc["Correct Answer"] if name == "gpqa" else doc["mc1_targets"]["choices"][0]
        question, options, letter = view(doc)
        assert view(build(i)) == (question, options, letter)  # same order on every call
        source = [v for k, v in doc.items() if "Answer" in k] if name == "gpqa" else None
        source = source or doc["mc1_targets"]["choices"]
        assert sorted(options) == sorted(source) and options[ord(letter) - 65] == right
        text = prompt_of(doc)
        assert f"\n{letter}. {right}\n" in text  # prompt and scorer use the same order
        assert results(doc, [f"Answer: {letter}"]) == {"acc": 1.0}
        other = next(x for x in "ABCD" if x != letter)
        assert results(doc, [f"Answer: {other}"]) == {"acc": 0.0}
        letters.add(letter)
    assert len(letters) >= 2  # the correct answer is not always at the same letter


def test_stable_order_is_a_fixed_sha256_permutation():
    # pinned values: another hash (or Python's salted hash()) would move the letters between runs
    assert cu.stable_order("Which particle is number 0?", 4) == [1, 3, 0, 2]
    assert cu.stable_order("q", 13) == [0, 6, 11, 1, 10, 5, 8, 3, 7, 9, 4, 2, 12]


def test_bad_docs_name_the_problem():
    doc = _truthfulqa(0)
    doc["mc1_targets"]["labels"] = [1, 1, 0, 0]
    with pytest.raises(ValueError, match="exactly one label 1"):
        cu.truthfulqa_mc1_view(doc)
    with pytest.raises(ValueError, match="answerKey"):
        cu.arc_view({**_arc(0), "answerKey": "E"})
    with pytest.raises(ValueError, match="not a letter of 6 options"):
        cu.supergpqa_view({**_supergpqa(0), "answer_letter": "G"})
    with pytest.raises(ValueError, match="ra=9"):
        cu.headqa_view({**_headqa(0), "ra": 9})
    with pytest.raises(ValueError, match="repeats: 1"):
        cu.gpqa_results(_gpqa(0), ["Answer: A", "Answer: B"])


def _load_yaml(path: Path) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=Loader)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_yaml_has_the_papers_protocol(name):
    task, split, _, _ = DATASETS[name]
    cfg = _load_yaml(TASK_DIR / f"{task}.yaml")
    assert cfg["task"] == task and cfg["output_type"] == "generate_until"
    assert (cfg["dataset_path"], cfg.get("dataset_name")) == SOURCES[task]
    assert cfg["test_split"] == split
    assert cfg["repeats"] == 1 and cfg["num_fewshot"] == 0
    assert cfg["generation_kwargs"] == {
        "until": [],
        "do_sample": False,
        "temperature": 0.0,
        "max_gen_toks": 10240,
    }
    assert cfg["metric_list"] == [
        {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
    ]
    for key, hook in [
        ("doc_to_text", "prompt"),
        ("doc_to_target", "target"),
        ("process_results", "results"),
    ]:
        assert cfg[key] == f"choice_utils.{name}_{hook}"
        assert callable(getattr(cu, f"{name}_{hook}"))
    assert (TASK_DIR / f"{task}.yaml").read_text().startswith("# PSFT, Table 1")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_task_runs_through_lm_eval_on_local_docs(name, tmp_path, monkeypatch):
    """The YAML as lm-eval loads it, over a 3-doc json file in the source's field layout."""
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    task, split, build, view = DATASETS[name]
    docs = [build(i) for i in range(3)]
    data = tmp_path / "docs.json"
    data.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    text = (TASK_DIR / f"{task}.yaml").read_text()
    lines = [
        ln for ln in text.splitlines() if not ln.startswith(("dataset_path:", "dataset_name:"))
    ]
    lines.append("dataset_path: json")
    lines.append(f"dataset_kwargs: {{data_files: {{{split}: {json.dumps(str(data))}}}}}")
    (tmp_path / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    shutil.copy(TASK_DIR / "choice_utils.py", tmp_path / "choice_utils.py")

    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    loaded = tm.load([task])["tasks"][task]
    got = list(loaded.test_docs())
    assert len(got) == 3
    for doc in got:
        question, options, letter = view(doc)
        assert loaded.doc_to_text(doc) == cu.prompt(question, options)
        assert loaded.doc_to_target(doc) == letter
        assert loaded.process_results(doc, [f"...\nAnswer: {letter}"]) == {"acc": 1.0}
        other = next(x for x in "ABCD" if x != letter)
        assert loaded.process_results(doc, [f"Answer: {other}"]) == {"acc": 0.0}
        assert loaded.process_results(doc, ["I cannot tell."]) == {"acc": 0.0}
    assert loaded.config.generation_kwargs["max_gen_toks"] == 10240
    assert loaded.config.repeats == 1


def test_prefetch_finds_the_six_local_tasks():
    from claimbench.prefetch import task_datasets

    found = task_datasets(sorted(SOURCES))
    for task, (path, name) in SOURCES.items():
        assert found[task] == [(path, {"name": name})], task
