"""Noisy rewards: exact unit tests of the rewards and losses (methods/noisy_rewards/README.md) and a micro
pipeline run."""

from __future__ import annotations

import random

import pytest
import torch
import yaml

from methods.noisy_rewards.ppo import (
    clipped_surrogate,
    clipped_value_loss,
    gae,
    masked_whiten,
    terminal_rewards,
)
from methods.noisy_rewards.rewards import (
    ReasoningPatternReward,
    RewardFunction,
    SimulatedRM,
    calibrate,
    correctness,
    extract_final,
    flip_group_rewards,
    repetition_penalty,
)
from methods.posttrain.loops import group_advantages


def test_flip_is_per_group_consistent_and_never_on_format_failures():
    n = 4
    rewards = [1.0, 0.0, 0.0, 1.0] * 50
    fails = [False, False, True, False] * 50  # the third rollout of each question is unformatted
    out, flips = flip_group_rewards(rewards, fails, n, 0.4, random.Random(0))
    assert len(flips) == 50 and 5 < sum(flips) < 45
    for g, flipped in enumerate(flips):
        grp = out[g * n : (g + 1) * n]
        assert grp[2] == 0.0  # format failure keeps reward 0 even in a flipped group
        assert grp == ([0.0, 1.0, 0.0, 0.0] if flipped else [1.0, 0.0, 0.0, 1.0])
    # p = 0 never flips, p = 1 flips every group
    assert flip_group_rewards(rewards, fails, n, 0.0, random.Random(0))[0] == rewards
    assert all(flip_group_rewards(rewards, fails, n, 1.0, random.Random(0))[1])


def test_flip_rate_matches_p_and_reward_function_flips_groups_together():
    rf = RewardFunction({"kind": "correct", "flip_p": 0.3}, seed=1)
    texts = ["So the answer is 5.", "So the answer is 4.", "no answer", "answer is 5"] * 250
    out = rf(texts, [5] * len(texts), n=4, step=0)
    assert abs(sum(out["flips"]) / 250 - 0.3) < 0.1
    for g, f in enumerate(out["flips"]):
        assert out["rewards"][4 * g : 4 * g + 4] == ([0, 1, 0, 0] if f else [1, 0, 0, 1])
    assert out["fails"][:4] == [False, False, True, False]


def test_grpo_group_flip_identity():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (64,), generator=g).float()
    r[:4] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a group with one correct rollout
    a, a_flip = group_advantages(r, 4), group_advantages(1 - r, 4)
    assert torch.allclose(a_flip, -a, atol=1e-6)
    rc = torch.rand(32, generator=g)  # also for continuous rewards in [0, 1]
    assert torch.allclose(group_advantages(1 - rc, 8), -group_advantages(rc, 8), atol=1e-6)


def test_extraction_and_format_failures():
    assert extract_final("First, 2 + 3 = 5. So the answer is 5.") == 5
    assert extract_final("answer is 3 ... the answer is -12") == -12
    assert extract_final("First, 2 + 3 = 5.") is None  # no final answer: a format failure
    assert extract_final(None) is None
    assert correctness(["the answer is 5", "5", "answer is 6"], [5, 5, 5]) == (
        [1.0, 0.0, 0.0],
        [False, True, False],
    )


def test_rpr_counts_each_phrase_once_on_hand_made_strings():
    rpr = ReasoningPatternReward(["first", "carry", "then", "so"], weight=0.25, ngram=5)
    text = "First, 7 + 5 = 12, write 2 and carry 1. Then first then so. So the answer is 12."
    assert rpr.count(text) == 4  # "first" and "then" twice, "so" twice: each counted once
    assert rpr(text) == pytest.approx(1.0)
    assert rpr.count("FIRST and Carry") == 2  # lower-case substring match
    assert rpr("First, carry. Then so.") == 0.0  # no extractable answer -> 0
    # default weight is 1/n (the paper's r = 1/40 for n = 40)
    assert ReasoningPatternReward(["a", "b", "c", "d", "e"]).weight == pytest.approx(0.2)


def test_rpr_repetition_penalty_cap_and_floor():
    # words: a b c a b c a b ; 3-grams: abc bca cab abc bca cab -> 6 grams, 3 distinct repeated
    assert repetition_penalty("a b c a b c a b", 3) == pytest.approx(3 / 6)
    assert repetition_penalty("a b", 3) == 0.0
    assert repetition_penalty("x y z w", 2) == 0.0
    rpr = ReasoningPatternReward(["first", "then"], weight=0.8, cap=1.0, ngram=3)
    # 2 phrases x 0.8 = 1.6 -> clipped to 1
    assert rpr("First then the answer is 3") == pytest.approx(1.0)
    text = "then then then then then the answer is 1"  # 7 3-grams, one repeated
    pen = repetition_penalty(text, 3)
    assert pen == pytest.approx(1 / 7)
    assert rpr(text) == pytest.approx(0.8 - 1 / 7)
    low = ReasoningPatternReward(["then"], weight=0.3, ngram=1)
    # unigrams: 8, four distinct ones repeated -> penalty 0.5 > 0.3 -> floored at 0
    assert repetition_penalty("then answer is 1 then answer is 1", 1) == pytest.approx(0.5)
    assert low("then answer is 1 then answer is 1") == 0.0


def test_calibration_leaves_high_scores_untouched_and_caps_at_one():
    for s in (0.5, 0.6, 0.99, 1.0):
        assert calibrate(s, 1.0, tau=0.5, alpha=0.1) == s
    assert calibrate(0.35, 0.5, tau=0.5, alpha=0.1) == pytest.approx(0.40)
    assert calibrate(0.45, 1.0, tau=0.5, alpha=0.9) == 1.0


def test_simulated_rm_accuracy_and_variance():
    rng = random.Random(0)
    correct = [float(i % 2) for i in range(20000)]
    for acc in (0.65, 0.85):
        s = SimulatedRM(acc).score(correct, [False] * len(correct), rng)
        agree = sum((x > 0.5) == (c > 0.5) for x, c in zip(s, correct, strict=True)) / len(s)
        assert abs(agree - acc) < 0.02
    s65 = SimulatedRM(0.65).score(correct[:100], [False] * 100, rng)
    s85 = SimulatedRM(0.85).score(correct[:100], [False] * 100, rng)
    assert torch.tensor(s65).var() < torch.tensor(s85).var()
    assert SimulatedRM(0.85).score([1.0], [True], rng) == [0.0]  # malformed output scores 0
    rf = RewardFunction({"kind": "rm", "rm_accuracy": 0.65, "calibrate": True}, seed=0)
    out = rf(["First, then the answer is 3."] * 8, [3] * 8, n=4, step=0)
    assert all(r >= 0.5 + 0.15 - 1e-9 or 0.35 < r <= 0.45 for r in out["rewards"])


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.3"])
def test_bad_flip_probability_names_the_value(p):
    with pytest.raises(ValueError, match=r"flip probability p must be in \[0, 1\], got"):
        RewardFunction({"kind": "correct", "flip_p": p})


def test_empty_rpr_phrase_list_is_an_error():
    with pytest.raises(ValueError, match=r"RPR phrase list must be non-empty.*\[\]"):
        ReasoningPatternReward([])
    with pytest.raises(ValueError, match="RPR phrase list"):
        RewardFunction({"kind": "rpr", "rpr": {"phrases": []}})


def test_gae_lambda_gamma_one_is_reward_minus_value():
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    r = terminal_rewards(torch.tensor([1.0, 0.5]), mask)
    assert r.tolist() == [[0, 0, 0, 1], [0, 0, 0.5, 0]]
    v = torch.tensor([[9.0, 0.2, 0.4, 0.6], [9.0, 9.0, 0.1, 9.0]])
    adv, ret = gae(r, v * mask, mask, 1.0, 1.0)
    assert torch.allclose(adv, (torch.tensor([[1.0], [0.5]]) - v) * mask)
    assert torch.allclose(ret, torch.tensor([[0, 1.0, 1, 1], [0, 0, 0.5, 0]]))
    adv2, _ = gae(r, torch.zeros_like(v), mask, 0.5, 1.0)  # discounting
    assert torch.allclose(adv2[0, 1:], torch.tensor([0.25, 0.5, 1.0]))
    w = masked_whiten(adv, mask)
    m = mask.bool()
    assert abs(float(w[m].mean())) < 1e-6 and abs(float(w[m].var(unbiased=False)) - 1) < 1e-4


def test_ppo_losses_clip():
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, frac = clipped_surrogate(logp, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 1.0) / 3) and frac == pytest.approx(2 / 3)
    v, v_old, ret = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # unclipped error 0, clipped value 0.5 -> error 0.25 -> max -> 0.5 * 0.25
    assert clipped_value_loss(v, v_old, ret, torch.ones(1, 1), 0.5).item() == pytest.approx(0.125)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_micro_pipeline(tmp_path, algo):
    from claimbench.records import load_run_record
    from methods.noisy_rewards.train import main
    from tests.posttrain_fixtures import problems, save_micro_model, write_problems

    save_micro_model(tmp_path / "start")
    tr = write_problems(tmp_path / "train.jsonl", problems(32))
    va = write_problems(tmp_path / "valid.jsonl", problems(8, seed=1))
    cfg = {
        "steps": 3,
        "prompts_per_step": 2,
        "n": 2,
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "critic_warmup": 1,
        "max_new_tokens": 6,
        "eval_every": 2,
    }
    data = yaml.safe_load(open("config/scales/tiny.yaml"))
    data["papers"]["noisy_rewards"]["rl"] = cfg
    scale = tmp_path / "scale.yaml"
    scale.write_text(yaml.safe_dump(data))
    args = [
        *["--scale", "tiny", "--scale-file", str(scale), "--paper", "noisy_rewards"],
        *["--variant", "p0.4", "--out", str(tmp_path / "out"), "--threads", "1"],
        "--start",
        str(tmp_path / "start"),
        "--train",
        str(tr),
        "--valid",
        str(va),
        "--record",
        str(tmp_path / "rec.json"),
        "--algo",
        algo,
    ]
    main([*args, "--reward", "correct", "--flip-p", "0.4"])
    rec = load_run_record(tmp_path / "rec.json")
    names = {m["metric"] for m in rec["metrics"]}
    assert {"peak_accuracy", "final_accuracy", "final_truncation_rate", "reward_final"} <= names
    assert {s["name"] for s in rec["series"]} >= {"greedy accuracy", "training reward"}
    assert [p for s in rec["series"] if s["name"] == "greedy accuracy" for p in s["x"]] == [0, 2, 3]
    # the RL settings are the scale's rl section with the schema's defaults, the arm's algo
    assert rec["method"] == algo and rec["config"]["rl"]["algo"] == algo
    assert {k: rec["config"]["rl"][k] for k in cfg} == cfg
    assert rec["config"]["rl"]["clip_ratio"] == 0.2 and "ppo_epochs" not in rec["config"]["rl"]
    rpr = data["papers"]["noisy_rewards"]["rpr"]
    assert rec["config"]["reward"] == {"kind": "correct", "flip_p": 0.4, "rpr": rpr}
    assert (tmp_path / "out" / "meta.json").is_file()
    for bad in (["--flip-p", "1.2"], ["--rm-accuracy", "0.7"], []):
        with pytest.raises(SystemExit) as e:
            main([*args, "--reward", "correct", *bad])
        assert e.value.code != 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.update(flip_ps=[0.0, 1.5]),
            r"scale\.yaml: papers\.noisy_rewards: flip_ps\.1: 1\.5 is greater than the maximum of 1",
        ),
        (
            lambda s: s["rpr"].update(phrases=[]),
            r"papers\.noisy_rewards: rpr\.phrases: \[\] should be non-empty",
        ),
    ],
)
def test_bad_scale_values_name_file_and_key(tmp_path, edit, message):
    from claimbench.config import load_scale
    from claimbench.errors import ConfigError
    from tests.test_config import bad_scale

    path = bad_scale(tmp_path, lambda d: edit(d["papers"]["noisy_rewards"]))
    with pytest.raises(ConfigError, match=message):
        load_scale("tiny", path)


def test_summary_steps_to_threshold_and_derived_metrics():
    from methods.noisy_rewards.summary import monotone_violations, steps_to_threshold, summarise

    def rec(variant, curve, seed=0):
        y = [a for _, a in curve]
        return {
            "variant": variant,
            "seed": seed,
            "base_model": "b",
            "metrics": [
                {"metric": "start_accuracy", "value": y[0]},
                {"metric": "peak_accuracy", "value": max(y)},
                {"metric": "final_accuracy", "value": y[-1]},
            ],
            "series": [{"name": "greedy accuracy", "x": [s for s, _ in curve], "y": y}],
        }

    steps = [0, 5, 10, 15, 20]
    recs = [
        rec("p0.0", list(zip(steps, [0.2, 0.3, 0.4, 0.4, 0.4], strict=True))),
        rec("p0.4", list(zip(steps, [0.2, 0.25, 0.3, 0.38, 0.39], strict=True))),
        rec("p0.5", list(zip(steps, [0.2, 0.2, 0.21, 0.2, 0.2], strict=True))),
        rec("rpr", list(zip(steps, [0.2, 0.3, 0.35, 0.3, 0.25], strict=True))),
        rec("weak_p0.0", list(zip(steps, [0.1, 0.2, 0.3, 0.3, 0.3], strict=True))),
        rec("weak_p0.4", list(zip(steps, [0.1, 0.1, 0.15, 0.15, 0.15], strict=True))),
    ]
    m = {(x["task"], x["metric"]): x["value"] for x in summarise(recs)[0]}
    # threshold 0.2 + 0.9 * 0.2 = 0.38: clean at step 10, p=0.4 at 15, p=0.5 never (20 + 5)
    assert m[("base", "steps_to_threshold@p0.0")] == 10
    assert m[("base", "steps_to_threshold@p0.4")] == 15
    assert m[("base", "steps_to_threshold@p0.5")] == 25
    assert m[("base", "n3_monotone_violations")] == 0
    assert m[("base", "n4_rpr_gain_fraction")] == pytest.approx(0.15 / 0.2)
    assert m[("weak", "n5_gap_difference")] == pytest.approx(0.15 - 0.01)
    assert monotone_violations([10, 15, 12, 30]) == 1
    assert steps_to_threshold([0, 5], [0.9, 0.1], 0.5, 10) == 10  # step 0 never counts
