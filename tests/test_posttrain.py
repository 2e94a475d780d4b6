"""The shared post-training layer on hand-made tensors and a micro model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from methods.posttrain.loops import (
    SFTObjective,
    greedy_accuracy,
    group_advantages,
    train_demos,
    train_grpo,
)
from methods.posttrain.models import check_same_tokenizer, load_model
from methods.posttrain.rewards import (
    RewardStats,
    correctness_reward,
    demonstration,
    extract_answer,
    load_problems,
)
from methods.posttrain.sampling import sample
from methods.posttrain.tokens import (
    encode_pairs,
    entropy_from_logits,
    kl_from_logits,
    masked_mean,
    per_token_stats,
    token_logprobs,
)
from tests.posttrain_fixtures import (
    micro_tokenizer,
    problems,
    save_micro_model,
    scale_file,
    write_problems,
)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "lm"
    save_micro_model(d)
    return load_model(d)


def test_extract_answer_and_format_failures():
    assert extract_answer(" 132") == 132
    assert extract_answer(" First, 2 + 3 = 5. So the answer is 42.") == 42
    assert extract_answer(" -7 apples") == -7
    assert extract_answer(" no number here") is None
    assert extract_answer("") is None
    assert extract_answer(None) is None  # type: ignore[arg-type]
    stats = RewardStats()
    r, fails = correctness_reward([" 5", " six", " So the answer is 7.", ""], [5, 6, 8, 1], stats)
    assert r == [1.0, 0.0, 0.0, 0.0]
    assert fails == [False, True, False, True]
    assert (stats.n, stats.correct, stats.format_failures) == (4, 1, 2)
    with pytest.raises(ValueError):
        correctness_reward([" 1"], [1, 2])


def test_load_problems_and_demonstration(tmp_path):
    path = write_problems(tmp_path / "a.jsonl", problems(10))
    rows = load_problems(path, families=["add"])
    assert rows and all(r["family"] == "add" for r in rows)
    p, c = demonstration(rows[0], "short")
    assert p.endswith("Answer:") and c == " " + rows[0]["short"] + "\n"
    with pytest.raises(ValueError, match="form"):
        demonstration(rows[0], "medium")
    with pytest.raises(FileNotFoundError, match="data rule"):
        load_problems(tmp_path / "missing.jsonl")


def test_encode_pairs_masks_prompt_and_padding():
    tok = micro_tokenizer()
    b = encode_pairs(tok, ["Question: What is 1 + 2?\nAnswer:", "Q"], [" 3\n", " 12345\n"])
    for i, (p, c) in enumerate([("Question: What is 1 + 2?\nAnswer:", " 3\n"), ("Q", " 12345\n")]):
        n_p = len(tok(p, add_special_tokens=False)["input_ids"])
        n_c = len(tok(c, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        assert b.loss_mask[i, :n_p].sum() == 0
        assert b.loss_mask[i, n_p : n_p + n_c].sum() == n_c
        assert b.loss_mask[i, n_p + n_c :].sum() == 0  # padding
        assert b.attention_mask[i].sum() == n_p + n_c
        assert b.input_ids[i, n_p + n_c - 1] == tok.eos_token_id


def test_token_logprobs_match_manual_and_ignore_padding(micro):
    model, tok = micro
    b = encode_pairs(tok, ["Question: What is 1 + 2?\nAnswer:", "Q"], [" 3\n", " 12345\n"])
    lp = token_logprobs(model, b)
    single = encode_pairs(tok, ["Q"], [" 12345\n"])
    with torch.no_grad():
        logits = model(input_ids=single.input_ids).logits[0]
    manual = torch.log_softmax(logits[:-1], -1).gather(-1, single.input_ids[0, 1:, None])[:, 0]
    n = single.input_ids.shape[1]
    assert torch.allclose(lp[1, 1:n], manual, atol=1e-5)  # row 1 is right-padded in ``b``
    assert lp.shape == b.input_ids.shape


def test_entropy_kl_on_hand_made_logits():
    uniform = torch.zeros(1, 4)
    assert torch.allclose(entropy_from_logits(uniform), torch.log(torch.tensor([4.0])))
    p = torch.tensor([[2.0, 0.0, -1.0]])
    assert kl_from_logits(p, p).abs().item() < 1e-7
    q = torch.tensor([[0.0, 0.0, 0.0]])
    pp = torch.softmax(p, -1)
    assert torch.allclose(
        kl_from_logits(p, q), (pp * (pp.log() - torch.log(torch.tensor(1 / 3)))).sum(-1)
    )
    assert masked_mean(torch.tensor([1.0, 5.0]), torch.tensor([1.0, 0.0])) == 1.0


def test_per_token_stats_under_several_models(micro, tmp_path):
    model, tok = micro
    save_micro_model(tmp_path / "other", seed=1, tok=tok)
    other, _ = load_model(tmp_path / "other")
    b = encode_pairs(tok, ["Q"], [" 12\n"])
    st = per_token_stats({"a": model, "b": other, "a2": model}, b)
    assert set(st) == {
        "logp_a",
        "entropy_a",
        "logp_b",
        "entropy_b",
        "kl_b",
        "logp_a2",
        "entropy_a2",
        "kl_a2",
    }
    assert st["kl_a2"].abs().max() < 1e-6 and st["kl_b"][0, 1:].min() > 0


def test_different_tokenizer_is_refused(micro):
    _, tok = micro
    from methods.lm.tokenizer import train_tokenizer

    other = train_tokenizer(["zzz yyy xxx"] * 5, 280)
    with pytest.raises(ValueError, match="teacher: tokenizer differs"):
        check_same_tokenizer(tok, other, "teacher")
    check_same_tokenizer(tok, micro_tokenizer(), "teacher")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a causal-LM artifact"):
        load_model(tmp_path / "nope")


def test_sampling_kv_cache_greedy_and_seeded(micro):
    model, tok = micro
    prompts = ["Question: What is 1 + 2?\nAnswer:", "Question: What is 9 - 4?\nAnswer:"]
    g = sample(model, tok, prompts, greedy=True, max_new_tokens=6)
    # greedy with the KV cache picks the arg-max token under a full (no-cache) forward
    lp_full = model(input_ids=g.batch.input_ids, attention_mask=g.batch.attention_mask).logits
    for i in range(2):
        pos = g.batch.loss_mask[i].nonzero()[:, 0]
        for t in pos.tolist():
            assert lp_full[i, t - 1].argmax().item() == g.batch.input_ids[i, t].item()
    s1 = sample(model, tok, prompts, n=3, max_new_tokens=6, seed=5)
    s2 = sample(model, tok, prompts, n=3, max_new_tokens=6, seed=5)
    assert s1.texts == s2.texts and s1.prompt_index == [0, 0, 0, 1, 1, 1]
    assert len(s1.truncated) == 6


def test_group_advantages():
    a = group_advantages(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]), 4)
    assert torch.allclose(a[4:], torch.zeros(4))  # a constant group carries no signal
    assert a[:4].sum().abs() < 1e-5 and a[0] > 0 > a[2]


def test_sft_loop_learns_and_is_deterministic(micro, tmp_path):
    _, tok = micro
    rows = problems(32)
    pr, co = zip(*[demonstration(p, "short") for p in rows], strict=True)

    def run():
        save_micro_model(tmp_path / "s", tok=tok)
        m, _ = load_model(tmp_path / "s", trainable=True)
        m.requires_grad_(True)
        return train_demos(
            m, tok, list(pr), list(co), SFTObjective(), steps=30, minibatch=8, lr=1e-2
        )

    a, b = run(), run()
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert sum(r["loss"] for r in a[-5:]) < sum(r["loss"] for r in a[:5])
    assert all(r["tokens"] > 0 for r in a)


def test_grpo_counts_rewards_and_format_failures(micro, tmp_path):
    _, tok = micro
    save_micro_model(tmp_path / "g", tok=tok)
    m, _ = load_model(tmp_path / "g", trainable=True)
    m.requires_grad_(True)
    rows, stats = train_grpo(
        m, tok, problems(8), steps=2, prompts_per_step=2, n=4, lr=1e-3, max_new_tokens=4
    )
    assert stats.n == 16 and len(rows) == 2
    assert stats.format_failures == sum(r["format_failures"] for r in rows)
    with pytest.raises(ValueError, match="n >= 2"):
        train_grpo(m, tok, problems(8), steps=1, prompts_per_step=1, n=1, lr=1e-3)


def _job(tmp_path, sft: dict, variant: str, *extra: str) -> list[str]:
    sf = scale_file(tmp_path / "tiny.yaml", "gopd", {"student_sft": sft})
    return [
        "sft",
        *["--scale", "tiny", "--scale-file", str(sf), "--paper", "gopd"],
        *["--variant", variant, "--out", str(tmp_path / variant), *extra],
    ]


def test_sft_job_trains_and_evaluates_in_bfloat16(tmp_path):
    """One SFT job end to end through the entry point in bfloat16 on CPU: bf16 weights saved,
    finite losses, dtype in the record's provenance, and the saved model evaluates in bf16."""
    from safetensors.torch import load_file

    from claimbench.records import load_run_record
    from methods.posttrain.cli import main

    save_micro_model(tmp_path / "start")
    tr = write_problems(tmp_path / "train.jsonl", problems(32))
    va = write_problems(tmp_path / "valid.jsonl", problems(8, seed=1))
    sft = {"form": "short", "steps": 6, "minibatch": 4, "lr": 1e-2, "max_new_tokens": 4}
    main(
        [
            *_job(tmp_path, sft, "student", "--dtype", "bfloat16", "--device", "cpu"),
            *["--settings", "student_sft", "--start", str(tmp_path / "start")],
            *["--train", str(tr), "--valid", str(va), "--record", str(tmp_path / "rec.json")],
        ]
    )
    out = tmp_path / "student"
    weights = load_file(out / "model.safetensors")
    start = load_file(tmp_path / "start" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert any(not torch.equal(weights[k].float(), start[k].float()) for k in start)  # trained
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    rec = load_run_record(tmp_path / "rec.json")
    assert rec["provenance"]["dtype"] == "bfloat16" and rec["provenance"]["device"] == "cpu"
    assert rec["config"] == sft  # as the scale file states it (run id); defaults filled apart
    assert (rec["variant"], rec["paper"], rec["method"]) == ("student", "gopd", "sft")
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["dtype"], meta["name"], meta["scale"]) == ("bfloat16", "student", "tiny")
    acc = {m["metric"]: m for m in rec["metrics"] if m["task"] == "valid"}
    assert acc["greedy_exact_match"]["n"] == 8 and 0.0 <= acc["greedy_exact_match"]["value"] <= 1
    # the saved artifact, loaded back in bf16, scores finitely and reproduces the recorded
    # greedy accuracy exactly (same bf16 weights, greedy decoding)
    model, tok = load_model(out, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    b = encode_pairs(
        tok, *map(list, zip(*[demonstration(p, "short") for p in problems(4)], strict=True))
    )
    lp = token_logprobs(model, b)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    again = greedy_accuracy(model, tok, load_problems(va), sft["max_new_tokens"])
    assert again["accuracy"] == acc["greedy_exact_match"]["value"]
    assert again["format_failures"] == acc["format_failures"]["value"]
    # and the evaluation suite (lm-eval's hf model) scores it in bf16 too, as the eval rule would
    from benchmarks.lm_eval_suite import main as lm_eval_main

    (tmp_path / "data" / "arith").mkdir(parents=True)
    write_problems(tmp_path / "data" / "arith" / "test_id.jsonl", problems(8, seed=2))
    sf = scale_file(tmp_path / "tiny.yaml", "gopd", {"student_sft": sft})
    lm_eval_main(
        [*["--scale", "tiny", "--scale-file", str(sf), "--paper", "gopd", "--variant", "student"]]
        + ["--dtype", "bfloat16", "--device", "cpu", "--out", str(tmp_path / "lm_eval.json")]
        + ["--artifact", str(out), "--data-dir", str(tmp_path / "data"), "--tasks", "arith_id"]
        + ["--max-gen-toks", "4", "--batch-size", "4"]
    )
    ev = load_run_record(tmp_path / "lm_eval.json")
    assert ev["provenance"]["dtype"] == "bfloat16" and ev["config"]["dtype"] == "bfloat16"
    (em,) = [m for m in ev["metrics"] if m["metric"] == "exact_match"]
    assert em["n"] == 8 and 0.0 <= em["value"] <= 1.0


def test_settings_errors_name_the_key(tmp_path, capsys):
    from methods.posttrain.cli import main

    save_micro_model(tmp_path / "start")
    tr = write_problems(tmp_path / "train.jsonl", problems(8))
    common = ["--start", str(tmp_path / "start"), "--train", str(tr)]
    sft = {"form": "short", "steps": 1, "minibatch": 2, "lr": 1e-2}
    with pytest.raises(SystemExit) as err:
        main([*_job(tmp_path, sft, "a"), "--settings", "student_sft.nope", *common])
    assert err.value.code == 2
    assert "--settings student_sft.nope: papers.gopd of the tiny scale has no key 'nope'" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as err:  # an SFT job on GRPO settings (no form, no minibatch)
        main([*_job(tmp_path, sft, "b"), "--settings", "teacher_grpo", *common])
    assert err.value.code == 2 and "papers.gopd.teacher_grpo (sft settings)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_task_hash_of_a_family_subset_names_the_subset(tmp_path):
    """Two runs on different family subsets of one file are not the same documents: their
    task hashes differ; without a filter the hash is the file's sha256 (pairing reads it)."""
    from claimbench.io import sha256_file
    from methods.posttrain.cli import file_task_hash

    f = tmp_path / "valid.jsonl"
    f.write_text('{"family": "add"}\n{"family": "sub"}\n')
    whole = file_task_hash(str(f), None)
    assert whole == sha256_file(f) == file_task_hash(str(f), [])
    add, sub = file_task_hash(str(f), ["add"]), file_task_hash(str(f), ["sub"])
    assert len({whole, add, sub}) == 3
    assert file_task_hash(str(f), ["sub", "add"]) == file_task_hash(str(f), ["add", "sub"])
