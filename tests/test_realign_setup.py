"""Flexible Realignment, faithful setups (methods/realign/README.md): the check sentence after the
answer, the check-split diagnostic, and the paper scale's Pass@1-over-8-samples and token
reduction from the stored lm-eval samples."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from methods.realign.diagnose import banned_ids, check_split
from methods.realign.metrics import token_reduction
from methods.realign.paper_tokens import TASKS, mean_tokens, responses
from methods.realign.train import demonstration_form
from methods.realign.world import check_after, convert
from methods.realign.world import main as world_main

ROOT = Path(__file__).resolve().parent.parent
ADD = (
    "First, 7 + 5 = 12, write 2 and carry 1. Then, 1 + 1 = 2. Check: 32 - 15 = 17. "
    "So the answer is 32."
)


def test_check_after_puts_the_answer_before_the_check():
    moved = check_after(ADD)
    assert moved == (
        "First, 7 + 5 = 12, write 2 and carry 1. Then, 1 + 1 = 2. So the answer is 32. "
        "Check: 32 - 15 = 17."
    )
    # the answer is now stated before any token that contains it
    assert moved.index("answer is 32") < moved.index("32 - 15")
    assert check_after(moved) == moved  # idempotent
    mul = "First, 5 x 0 = 0, write 0. So the answer is 150."
    assert check_after(mul) == mul  # no check sentence: unchanged
    # the aligned model's no-check demonstrations are the same with either order
    row = {"prompt": "Question: What is 17 + 15?\nAnswer:", "long": ADD}
    moved_row = {**row, "long": moved}
    assert demonstration_form(row, "nocheck") == demonstration_form(moved_row, "nocheck")
    assert convert([row, {"prompt": "x"}]) == [moved_row, {"prompt": "x"}]


def test_world_cli_converts_a_file_and_names_a_bad_one(tmp_path, capsys):
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"long": ADD, "answer": 32}) + "\n")
    dest = tmp_path / "out.jsonl"
    world_main(["--src", str(src), "--dest", str(dest)])
    assert json.loads(dest.read_text())["long"].endswith("Check: 32 - 15 = 17.")
    src.write_text("{not json\n")
    with pytest.raises(SystemExit) as e:
        world_main(["--src", str(src), "--dest", str(dest)])
    assert e.value.code == 2 and str(src) in capsys.readouterr().err


def test_check_split_separates_accuracy_by_the_check_sentence():
    rows = [
        {
            "response": "First ... Check: 3 - 1 = 2. So the answer is 3.",
            "metrics": {"exact_match": 1},
        },
        {
            "response": "First ... Check: 4 - 1 = 3. So the answer is 4.",
            "metrics": {"exact_match": 1},
        },
        {"response": "First ... So the answer is 5.", "metrics": {"exact_match": 0}},
    ]
    out = check_split(rows)
    assert out["with_check"] == {"n": 2, "exact_match": 1.0}
    assert out["without_check"] == {"n": 1, "exact_match": 0.0}
    assert check_split([])["with_check"]["exact_match"] is None


def test_banned_ids_cover_every_way_to_start_check():
    vocab = ["C", " C", " Check", "heck", " Ch", "Chess", " so", "Checked"]

    class Tok:
        def __len__(self):
            return len(vocab)

        def decode(self, ids):
            return "".join(vocab[i] for i in ids)

    assert [vocab[i] for i in banned_ids(Tok())] == ["C", " C", " Check", " Ch", "Checked"]


def test_pass_at_1_is_the_mean_over_samples():
    sys.path.insert(0, str(ROOT / "benchmarks" / "lm_eval_tasks"))
    try:
        from realign_utils import boxed_answer, pass_at_1
    finally:
        sys.path.pop(0)
    samples = ["so \\boxed{\\frac12}", "\\boxed{3}", "no box at all", "\\boxed{\\frac{1}{2}}"]
    assert pass_at_1({"answer": "\\frac{1}{2}"}, samples) == {"pass_at_1": 0.5}
    assert pass_at_1({"Answer": 204}, ["\\boxed{204}"] * 7 + ["\\boxed{240}"])["pass_at_1"] == 7 / 8
    assert boxed_answer("a \\boxed{1} then \\boxed{2}") == "2"
    with pytest.raises(ValueError):
        pass_at_1({"answer": "1"}, [])


@pytest.mark.parametrize("name", ["realign_math500", "realign_aime24", "realign_aime25"])
def test_paper_tasks_sample_eight_times_at_the_papers_settings(name):
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    path = ROOT / "benchmarks" / "lm_eval_tasks" / f"{name}.yaml"
    cfg = yaml.load(path.read_text(), Loader=Loader)
    gen = cfg["generation_kwargs"]
    assert cfg["task"] == name and cfg["repeats"] == 8
    assert gen["do_sample"] is True and gen["temperature"] == 0.7 and gen["top_p"] == 0.95
    assert gen["max_gen_toks"] == 16384
    assert cfg["process_results"] == "realign_utils.pass_at_1"
    assert [m["metric"] for m in cfg["metric_list"]] == ["pass_at_1"]


def test_token_counts_and_reduction_from_samples(tmp_path):
    def write(path, lengths):
        rows = [
            {"task": t, "doc_id": i, "raw_response": [" ".join(["w"] * n) for n in per]}
            for t, docs in lengths.items()
            for i, per in enumerate(docs)
        ]
        rows.append({"task": "gsm8k", "doc_id": 0, "response": "ignored"})
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return path

    # Table 1's lambda = 0.5 row: reference lengths 12602 / 12278 / 4699, TrRa 10678 / 10254 / 3734
    ref = dict(zip(TASKS, [[[12602, 12602]], [[12278, 12278]], [[4699, 4699]]], strict=True))
    ours = dict(zip(TASKS, [[[10000, 11356]], [[10254, 10254]], [[3734, 3734]]], strict=True))
    count = lambda text: len(text.split())  # noqa: E731
    m_ref = mean_tokens(responses(write(tmp_path / "ref.jsonl", ref)), count)
    m_ours = mean_tokens(responses(write(tmp_path / "ours.jsonl", ours)), count)
    assert m_ours["realign_aime24"][0] == 10678
    red = token_reduction({t: v[0] for t, v in m_ours.items()}, {t: v[0] for t, v in m_ref.items()})
    assert red == pytest.approx(17.42, abs=0.01)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task": TASKS[0], "doc_id": 0, "response": "x"}) + "\n")
    with pytest.raises(ValueError, match="raw_response"):
        responses(bad)
