"""Noisy rewards, faithful setups (methods/noisy_rewards/README.md): the validation-selected
checkpoint, the shuffled-reward null, N5's premise, and the paper's continuous reward model whose
RPR calibration can move a judgement across tau."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
import yaml

from methods.noisy_rewards.rewards import (
    RewardFunction,
    SimulatedRM,
    calibrate,
    rm_score_law,
    shuffle_rewards,
)
from methods.noisy_rewards.train import BestCheckpoint, select

PAPER_RMS = {0.65: 0.0672, 0.75: 0.1161, 0.85: 0.1937}  # pairwise accuracy: score variance


@pytest.mark.parametrize(("acc", "var"), sorted(PAPER_RMS.items()))
def test_continuous_rm_has_the_papers_pairwise_accuracy_and_variance(acc, var):
    d, sigma = rm_score_law(acc, var)
    assert sigma**2 + d**2 >= var  # before clipping to [0, 1]
    rng = random.Random(1)
    n = 20000
    rm = SimulatedRM(acc, var)
    good = rm.score([1.0] * n, [False] * n, rng)
    bad = rm.score([0.0] * n, [False] * n, rng)
    pairwise = sum((g > b) + 0.5 * (g == b) for g, b in zip(good, bad, strict=True)) / n
    assert abs(pairwise - acc) < 0.015  # ties (both clipped to 0 or 1) count half
    assert statistics.pvariance(good + bad) == pytest.approx(var, rel=0.03)  # after clipping
    assert rm.score([1.0], [True], rng) == [0.0]  # malformed output scores 0


def test_calibration_moves_judgements_across_tau_only_with_the_continuous_rm():
    """The paper's calibration (s < tau -> s + alpha RPR) matters when a false negative lies
    within alpha of tau. The two-point RM puts every score at 0.5 +- 0.15 (65%), so alpha = 0.1
    can lift none across tau = 0.5 (the old N6 could not decide); the continuous RM can."""
    n, rpr = 5000, 1.0
    correct = [1.0] * n
    for var, moved in ((None, False), (PAPER_RMS[0.65], True)):
        s = SimulatedRM(0.65, var).score(correct, [False] * n, random.Random(0))
        cal = [calibrate(x, rpr, 0.5, 0.1) for x in s]
        crossed = sum(x < 0.5 <= y for x, y in zip(s, cal, strict=True))
        assert (crossed > 0.05 * n) is moved
        assert all(y == x for x, y in zip(s, cal, strict=True) if x >= 0.5)
    # a false negative at 0.45 with full RPR now beats a wrong answer the RM scored 0.52
    assert calibrate(0.45, 1.0) > 0.52 > 0.45


def test_reward_function_reads_the_rm_variance():
    texts = ["First, carry 1. Then, so the answer is 3."] * 400
    rf = RewardFunction({"kind": "rm", "rm_accuracy": 0.65, "rm_variance": 0.0672}, seed=0)
    out = rf(texts, [3] * 400, n=4, step=0)
    assert len(set(out["rewards"])) > 100  # continuous, not the two-point score
    two = RewardFunction({"kind": "rm", "rm_accuracy": 0.65}, seed=0)(texts, [3] * 400, 4, 0)
    assert {round(r, 9) for r in two["rewards"]} <= {0.35, 0.65}


def test_shuffled_null_keeps_the_reward_rate_and_cuts_the_link_to_the_output():
    rf = RewardFunction({"kind": "shuffled"}, seed=3)
    texts = [f"So the answer is {i % 2}." for i in range(4000)]
    out = rf(texts, [0] * 4000, n=4, step=7)
    assert out["correct"] == [float(i % 2 == 0) for i in range(4000)]
    assert sorted(out["rewards"]) == sorted(out["correct"])  # same rate
    agree = sum(r == c for r, c in zip(out["rewards"], out["correct"], strict=True)) / 4000
    assert abs(agree - 0.5) < 0.04  # independent of correctness (a correct reward agrees 100%)
    assert sorted(shuffle_rewards([1, 0, 0, 1], random.Random(0))) == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="reward kind"):
        RewardFunction({"kind": "nonsense"})


def test_validation_selected_checkpoint_is_restored():
    model = torch.nn.Linear(2, 1)
    keep = BestCheckpoint(model)
    start = model.weight.detach().clone()
    evals = [{"step": 0, "accuracy": 0.3}]
    trained = {}
    for step, acc in ((5, 0.5), (10, 0.7), (15, 0.7), (20, 0.4)):
        with torch.no_grad():
            model.weight.fill_(step)
        trained[step] = model.weight.detach().clone()
        keep({"step": step, "eval_accuracy": acc})
        keep({"step": step + 1})  # rows without an evaluation are ignored
        evals.append({"step": step, "accuracy": acc})
    assert select(evals) == 2  # the earliest of the two best
    assert keep.restore(evals) == 10
    assert torch.equal(model.weight, trained[10])
    # the start is selected when nothing beats it (ties go to the earlier evaluation)
    assert keep.restore([{"step": 0, "accuracy": 0.7}, *evals[1:]]) == 0
    assert torch.equal(model.weight, start)


def test_n5_needs_a_weak_base_less_accurate_than_b():
    from methods.noisy_rewards.summary import summarise

    def rec(variant, start, peak):
        return {
            "variant": variant,
            "seed": 0,
            "base_model": "b",
            "metrics": [
                {"metric": "start_accuracy", "value": start},
                {"metric": "peak_accuracy", "value": peak},
                {"metric": "final_accuracy", "value": peak},
            ],
            "series": [{"name": "greedy accuracy", "x": [0, 5], "y": [start, peak]}],
        }

    def n5(weak_start):
        recs = [
            rec("p0.0", 0.475, 0.655),
            rec("p0.4", 0.475, 0.568),
            rec("weak_p0.0", weak_start, 0.598),
            rec("weak_p0.4", weak_start, 0.573),
        ]
        return {(x["task"], x["metric"]): x["value"] for x in summarise(recs)[0]}

    held = n5(0.30)  # premise holds: B_weak starts below B
    assert held[("weak", "n5_premise_gap")] == pytest.approx(0.175)
    assert held[("weak", "n5_gap_difference")] == pytest.approx(0.025 - 0.087)
    broken = n5(0.555)  # the small scale's setup: B_weak (55.5) above B (47.5)
    assert broken[("weak", "n5_premise_gap")] == pytest.approx(-0.08)
    assert ("weak", "n5_gap_difference") not in broken


def test_shuffled_and_long_arms_in_the_pipeline(tmp_path):
    from claimbench.records import load_run_record
    from methods.noisy_rewards.train import main
    from tests.posttrain_fixtures import problems, save_micro_model, write_problems

    save_micro_model(tmp_path / "start")
    tr = write_problems(tmp_path / "train.jsonl", problems(32))
    va = write_problems(tmp_path / "valid.jsonl", problems(8, seed=1))
    cfg = {
        "steps": 2,
        "prompts_per_step": 2,
        "n": 2,
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "max_new_tokens": 6,
        "eval_every": 2,
    }
    data = yaml.safe_load(open("config/scales/tiny.yaml"))
    data["papers"]["noisy_rewards"]["rl"] = cfg
    scale = tmp_path / "scale.yaml"
    scale.write_text(yaml.safe_dump(data))
    args = [
        *["--scale", "tiny", "--scale-file", str(scale), "--paper", "noisy_rewards"],
        *["--variant", "shuffled", "--out", str(tmp_path / "out"), "--threads", "1"],
        *["--start", str(tmp_path / "start"), "--train", str(tr), "--valid", str(va)],
        *["--record", str(tmp_path / "rec.json"), "--algo", "ppo"],
    ]
    main([*args, "--reward", "shuffled", "--steps-factor", "2"])
    rec = load_run_record(tmp_path / "rec.json")
    assert rec["config"]["reward"]["kind"] == "shuffled"
    assert (
        rec["config"]["rl"]["steps"] == 4 and rec["config"]["checkpoint"] == "validation-selected"
    )
    x = [p for s in rec["series"] if s["name"] == "greedy accuracy" for p in s["x"]]
    assert x == [0, 2, 4]
    with pytest.raises(SystemExit) as e:
        main([*args, "--reward", "shuffled", "--flip-p", "0.4"])
    assert e.value.code != 0
