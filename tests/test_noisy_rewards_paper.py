"""The paper scale's noisy-rewards setting: math-verify reads the rollouts' \\boxed{} answers in
the reward and in the greedy evaluation; the tiny scorer is unchanged; bad settings fail."""

from __future__ import annotations

import pytest

from methods.noisy_rewards.rewards import RewardFunction, correctness, scorer


def test_math_verify_answers_in_the_reward():
    texts = [
        "so the answer is \\boxed{\\frac{1}{2}}",
        "\\boxed{0.25}",
        "no box here",
        "draft \\boxed{3} then \\boxed{4}",
    ]
    out = RewardFunction({"kind": "correct", "answers": "math_verify"})(
        texts, ["0.5", "0.5", "1", "4"], n=2, step=0
    )
    assert out["rewards"] == [1.0, 0.0, 0.0, 1.0]
    assert out["fails"] == [False, False, True, False]
    # the arithmetic scorer (tiny, small) reads none of these as correct answers to 1/2
    assert scorer("arith") is correctness
    assert RewardFunction({"kind": "correct"}).answers == "arith"


def test_unknown_scorer_fails_before_anything_runs():
    with pytest.raises(ValueError, match="answers 'regex': not one of"):
        RewardFunction({"kind": "correct", "answers": "regex"})


def test_paper_config_names_the_papers_data_prompt_scorer_and_stop():
    from claimbench.config import load_scale

    rl = load_scale("paper")["papers"]["noisy_rewards"]["rl"]
    assert (rl["dataset"], rl["valid_dataset"], rl["prompt_format"]) == (
        "deepscaler_40k",
        "math500",
        "orz",
    )
    assert (rl["answers"], rl["stop"]) == ("math_verify", "eos")
    for scale in ("tiny", "small"):  # the arithmetic world, unchanged
        rl = load_scale(scale)["papers"]["noisy_rewards"]["rl"]
        assert "dataset" not in rl and rl.get("answers", "arith") == "arith"
