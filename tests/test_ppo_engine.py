"""The noisy-rewards PPO loop through the engine (methods/posttrain/engine.py): the plain
loop's rows and weights, and a run cut after a checkpoint resumes to an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

CFG = {
    "algo": "ppo",
    "steps": 3,
    "prompts_per_step": 2,
    "n": 2,
    "max_new_tokens": 6,
    "temperature": 1.0,
    "actor_lr": 1e-2,
    "critic_lr": 1e-2,
    "critic_warmup": 1,
    "clip_ratio": 0.2,
    "value_clip": 0.5,
    "entropy_coef": 0.001,
    "gamma": 1.0,
    "lam": 1.0,
    "grad_clip": 1.0,
    "eval_every": 2,
}
PROBLEMS = [
    {"prompt": f"Problem {i}: what is {i} plus 1?", "answer": i + 1, "family": "add"}
    for i in range(5)
]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from claimbench.micro import micro_lm

    return micro_lm(tmp_path_factory.mktemp("ppo_engine") / "p", arch="llama", seed=0)


def _run(path, steps, engine=None, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.noisy_rewards.ppo import train_rl
    from methods.noisy_rewards.rewards import RewardFunction

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    reward = RewardFunction({"kind": "correct"}, seed=0)
    rows, evals = train_rl(
        model,
        tok,
        PROBLEMS,
        PROBLEMS[:3],
        reward,
        dict(CFG, steps=steps),
        seed=5,
        engine=engine,
        **kw,
    )
    return rows, evals, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _engine(**cfg):
    from methods.posttrain.engine import Engine

    return Engine({"kind": "accelerate", "micro_batch": 3, **cfg}, device="cpu")


def test_engine_ppo_loop_gives_the_plain_loops_rows(policy):
    plain, ev_plain, w_plain = _run(policy, 2)
    eng, ev_eng, w_eng = _run(policy, 2, engine=_engine())
    for a, b in zip(eng, plain, strict=True):
        assert (a["step"], a["reward"], a["length"]) == (b["step"], b["reward"], b["length"])
        assert a["value_loss"] == pytest.approx(b["value_loss"], rel=1e-4, abs=1e-6)
    assert "pg_loss" in eng[1] and eng[1]["pg_loss"] == pytest.approx(plain[1]["pg_loss"], abs=1e-5)
    assert [e["step"] for e in ev_eng] == [e["step"] for e in ev_plain] == [0, 2]
    torch.testing.assert_close(w_eng, w_plain, rtol=1e-4, atol=1e-6)


def test_engine_refuses_grpo_and_several_epochs(policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.noisy_rewards.ppo import train_rl
    from methods.noisy_rewards.rewards import RewardFunction

    model = AutoModelForCausalLM.from_pretrained(policy)
    tok = AutoTokenizer.from_pretrained(policy)
    reward = RewardFunction({"kind": "correct"}, seed=0)
    for bad in ({"algo": "grpo"}, {"ppo_epochs": 2}):
        with pytest.raises(ValueError, match="engine: runs PPO with one epoch"):
            train_rl(model, tok, PROBLEMS, PROBLEMS, reward, dict(CFG, **bad), engine=_engine())


def test_a_cut_ppo_run_resumes_from_its_checkpoint(policy, tmp_path):
    whole, ev_whole, w_whole = _run(policy, 3, engine=_engine(checkpoint_every=1))
    ckpt, meta = tmp_path / "ckpt", {}
    _run(policy, 2, engine=_engine(checkpoint_every=1), ckpt_dir=ckpt, meta={})
    resumed, ev_res, w_res = _run(
        policy, 3, engine=_engine(checkpoint_every=1), ckpt_dir=ckpt, meta=meta
    )
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert meta["segments"][-1]["start_step"] == 2
    assert [e["step"] for e in ev_res] == [e["step"] for e in ev_whole] == [0, 2, 3]
    torch.testing.assert_close(w_res, w_whole, rtol=1e-5, atol=1e-7)
