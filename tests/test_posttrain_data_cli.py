"""The posttrain entry point on a named data set (the paper scale's path) with a micro model:
prompts through the chat template, ``\\boxed{}`` answers scored by math-verify, rollouts that run
past newlines; the arithmetic path (``--train``) is unchanged and the options are checked."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.posttrain_fixtures import save_micro_model, scale_file

ROWS = [
    {"q": f"What is {a} + {b}?", "sol": f"{a} + {b} = {a + b}\nSo \\boxed{{{a + b}}}", "ans": a + b}
    for a in range(6)
    for b in range(3)
]


def _setup(tmp_path, settings_key: str, settings: dict):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "micro_math"))
    sf = scale_file(tmp_path / "tiny.yaml", "gopd", {settings_key: settings})
    data = yaml.safe_load(sf.read_text())
    data["datasets"] = {
        "micro_math": {
            "role": "train",
            "papers": ["gopd"],
            "path": str(tmp_path / "micro_math"),
            "split": "train",
            "columns": {"prompt": "q", "answer": "ans", "completion": "sol"},
        }
    }
    sf.write_text(yaml.safe_dump(data, sort_keys=False))
    save_micro_model(tmp_path / "start")
    return ["--scale", "tiny", "--scale-file", str(sf), "--paper", "gopd", "--device", "cpu"]


def test_sft_on_a_named_set_with_chat_prompts_and_boxed_scoring(tmp_path):
    from claimbench.records import load_run_record
    from methods.posttrain.cli import main
    from methods.posttrain.data import BOXED_INSTRUCTION

    sft = {"form": "short", "steps": 3, "minibatch": 4, "lr": 1e-2, "max_new_tokens": 6}
    job = _setup(tmp_path, "student_sft", sft)
    rec_path = tmp_path / "rec.json"
    main(
        ["sft", *job, "--variant", "s", "--out", str(tmp_path / "s"), "--settings", "student_sft"]
        + ["--start", str(tmp_path / "start"), "--train-set", "micro_math"]
        + ["--valid-set", "micro_math", "--prompt-format", "boxed_system"]
        + ["--reward", "math_verify", "--stop", "eos", "--record", str(rec_path)]
    )
    rec = load_run_record(rec_path)
    acc = {m["metric"]: m for m in rec["metrics"] if m["task"] == "valid"}
    assert acc["greedy_exact_match"]["n"] == len(ROWS)
    # an untrained micro model writes no \boxed{}: every answer is a format failure
    assert acc["format_failures"]["value"] == len(ROWS)
    assert set(rec["task_hashes"]) == {"train", "valid"}
    assert rec["task_hashes"]["train"] == rec["task_hashes"]["valid"]
    samples = [
        json.loads(x) for x in rec_path.with_suffix(".samples.jsonl").read_text().split("\n") if x
    ]
    assert len(samples) == len(ROWS)
    first = json.dumps(samples[0])
    assert BOXED_INSTRUCTION.replace("\\", "\\\\") in first and "<|im_start|>assistant" in first
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert "datasets.micro_math" in meta["inputs"]
    log = [json.loads(x) for x in (tmp_path / "s" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3


def test_grpo_on_a_named_set_uses_the_math_verify_reward(tmp_path):
    from claimbench.records import load_run_record
    from methods.posttrain.cli import main

    grpo = {"steps": 2, "prompts_per_step": 2, "n": 2, "lr": 1e-3, "max_new_tokens": 4}
    job = _setup(tmp_path, "teacher_grpo", grpo)
    main(
        ["grpo", *job, "--variant", "g", "--out", str(tmp_path / "g")]
        + ["--settings", "teacher_grpo", "--start", str(tmp_path / "start")]
        + ["--train-set", "micro_math", "--prompt-format", "plain", "--reward", "math_verify"]
        + ["--record", str(tmp_path / "rec.json")]
    )
    rec = load_run_record(tmp_path / "rec.json")
    ffr = {m["metric"]: m for m in rec["metrics"]}["format_failure_rate"]
    # 4 rollouts of at most 4 tokens from a random model: no closed \boxed{}, all failures
    assert ffr["n"] == 8 and ffr["value"] == 1.0


@pytest.mark.parametrize(
    "argv, said",
    [
        ([], "no training data: give --train, --train-set or a settings 'dataset'"),
        (["--train", "x.jsonl", "--train-set", "micro_math"], "at most one of --train"),
        (["--train-set", "micro_math", "--valid", "v.jsonl", "--valid-set", "x"], "at most one"),
        (["--train-set", "micro_math"], "need --prompt-format"),
        (["--train-set", "nope", "--prompt-format", "plain"], "tiny.yaml: datasets.nope: no such"),
    ],
)
def test_data_options_are_checked_in_one_line(tmp_path, capsys, argv, said):
    from methods.posttrain.cli import main

    sft = {"form": "short", "steps": 1, "minibatch": 2, "lr": 1e-2}
    job = _setup(tmp_path, "student_sft", sft)
    capsys.readouterr()  # the set-up's progress bars
    with pytest.raises(SystemExit) as e:
        main(
            ["sft", *job, "--variant", "x", "--out", str(tmp_path / "x")]
            + ["--settings", "student_sft", "--start", str(tmp_path / "start"), *argv]
        )
    err = capsys.readouterr().err.split("\n")[-2]  # after the model loader's progress bar
    assert e.value.code == 2 and err.startswith("error: ") and said in err
    assert not (tmp_path / "x").exists()


def test_the_settings_name_the_set_prompt_and_reward():
    """A paper section may state ``dataset`` / ``valid_dataset`` / ``prompt_format`` / ``reward``
    / ``stop`` in the job's settings (where its schema allows them): they apply unless an option
    says otherwise, and the rule's arithmetic ``--train`` / ``--valid`` files are then not read."""
    from types import SimpleNamespace

    from methods.posttrain.cli import data_options

    opts = dict(train="a.jsonl", valid="v.jsonl", train_set="", valid_set="", prompt_format="")
    args = SimpleNamespace(**opts, reward="", stop="")
    st = {"dataset": "deepmath_103k_d6", "prompt_format": "qwen3_nothink", "reward": "math_verify"}
    d = data_options(args, {**st, "stop": "eos"})
    assert (d.train_set, d.train, d.valid_set, d.valid) == ("deepmath_103k_d6", "", "", "")
    assert (d.prompt_format, d.reward, d.stop) == ("qwen3_nothink", "math_verify", "eos")
    over = {**opts, "train": "", "train_set": "x"}
    d = data_options(SimpleNamespace(**over, reward="arith", stop=""), st)
    assert (d.train_set, d.reward, d.stop) == ("x", "arith", "newline")  # options win
    d = data_options(args, {"valid_dataset": "aime24", "prompt_format": "plain"})
    assert (d.train, d.valid_set, d.valid) == ("a.jsonl", "aime24", "")
    d = data_options(args, {})  # tiny and small: the arithmetic world, as before
    assert (d.train, d.valid, d.reward, d.stop) == ("a.jsonl", "v.jsonl", "arith", "newline")
