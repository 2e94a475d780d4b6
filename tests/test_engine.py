"""The distributed engine of the post-training papers (methods/posttrain/engine.py).

For each objective (SFT, PSFT, TrRa, GRPO, G-OPD, PPO) one engine step with 2 processes (gloo,
``torchrun --nproc_per_node 2``, 2 micro-batches per process) gives the same loss, grad norm
and parameter update (plain SGD, so the update is the gradient itself) as 1 process on the
same global batch in one micro-batch; and the engine path gives the loss of the plain loops.

Run as a script (``torchrun ... tests/test_engine.py OUT MICRO``) it is the worker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("sft", "psft", "trra", "grpo", "gopd", "ppo")
GLOBAL_ROWS = 8
GROUP = 2


def _models(tmp: Path):
    from claimbench.micro import micro_lm

    return {
        name: micro_lm(tmp / name, arch="llama", seed=seed)
        for name, seed in (("policy", 0), ("ref", 1), ("aligned", 2), ("teacher", 3))
    }


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _batch(tok):
    from methods.posttrain.tokens import encode_pairs

    prompts = [f"Problem {i}: what is {i} plus {2 * i}?" for i in range(GLOBAL_ROWS)]
    # completions of different lengths, so token weighting across micro-batches matters
    comps = [" The answer is" + f" {3 * i}." * (1 + i % 3) for i in range(GLOBAL_ROWS)]
    return encode_pairs(tok, prompts, comps)


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def run_objectives(paths: dict, micro_batch: int, names=OBJECTIVES, engine=None) -> dict:
    """One engine step of each objective from the same start; returns per objective the loss,
    grad norm and the parameter update (on every process, identical after the step)."""
    from transformers import AutoTokenizer

    from methods.noisy_rewards.ppo import Critic
    from methods.posttrain.engine import (
        Engine,
        demo_snapshots,
        demo_step,
        gopd_step,
        grpo_step,
        ppo_step,
    )
    from methods.posttrain.loops import SFTObjective
    from methods.psft.objective import PSFTObjective
    from methods.realign.train import TrRaObjective

    engine = engine or Engine({"kind": "accelerate", "micro_batch": micro_batch}, device="cpu")
    engine.cfg = type(engine.cfg)(**{**engine.cfg.__dict__, "micro_batch": micro_batch})
    tok = AutoTokenizer.from_pretrained(paths["policy"])
    batch = _batch(tok).to(engine.device)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    out = {}
    for name in names:
        torch.manual_seed(0)
        model = _load(paths["policy"])
        before = _flat(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        model, opt = engine.prepare(model, opt)
        model.train()
        kw = {"grad_clip": 1e9}
        if name in ("sft", "psft", "trra"):
            obj = {
                "sft": lambda: SFTObjective(),
                "psft": lambda: PSFTObjective(0.2, 0.28),
                "trra": lambda: TrRaObjective(
                    engine.prepare_frozen(_load(paths["ref"])),
                    engine.prepare_frozen(_load(paths["aligned"])),
                    lam=1.5,
                ),
            }[name]()
            if name == "psft":  # a stale pi_old so that the ratio is not 1
                snaps = demo_snapshots(
                    engine, engine.prepare_frozen(_load(paths["ref"])), batch, obj
                )
            else:
                snaps = demo_snapshots(engine, model, batch, obj)
            row = demo_step(engine, model, opt, batch, obj, snaps, **kw)
        elif name == "grpo":
            row = grpo_step(engine, model, opt, batch, rewards, GROUP, **kw)
        elif name == "gopd":
            teacher = engine.prepare_frozen(_load(paths["teacher"]))
            ref = engine.prepare_frozen(_load(paths["ref"]))
            names_ = ["teacher"] * GLOBAL_ROWS
            row = gopd_step(engine, model, opt, batch, {"teacher": teacher}, names_, ref, 1.5, **kw)
        else:
            torch.manual_seed(0)
            critic = Critic(engine.unwrap(model))
            torch.nn.init.normal_(critic.head.weight, std=0.1)  # values not all zero
            copt = torch.optim.SGD(critic.parameters(), lr=0.5)
            critic, copt = engine.prepare(critic, copt)
            cfg = {
                "gamma": 1.0,
                "lam": 1.0,
                "value_clip": 0.5,
                "clip_ratio": 0.2,
                "entropy_coef": 0.001,
                "grad_clip": 1e9,
            }
            row = ppo_step(engine, model, opt, critic, copt, batch, rewards, cfg)
            row["loss"] = row["actor_loss"]
        delta = _flat(engine.unwrap(model)) - before
        out[name] = {
            "loss": row["loss"],
            "grad_norm": row.get("grad_norm"),
            "delta": delta.tolist(),
            "world": engine.world,
        }
        if name == "ppo":
            out[name]["value_loss"] = row["value_loss"]
            out[name]["pg_loss"] = row["pg_loss"]
        if name == "gopd":
            keys = ("entropy", "length", "adv_mean", "adv_abs_max", "frac_adv_gt5")
            out[name]["stats"] = {k: row[k] for k in (*keys, "implicit_reward")}
    return out


def _torchrun(models: Path, tmp: Path, nproc: int, micro: int, names=OBJECTIVES) -> dict:
    out = tmp / f"out-{nproc}.json"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [torchrun, "--nproc_per_node", str(nproc), "--master_port", str(_free_port())]
    cmd += [str(Path(__file__)), str(models), str(out), str(micro), ",".join(names)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return _models(tmp_path_factory.mktemp("engine"))


@pytest.fixture(scope="module")
def one_process(paths):
    return run_objectives(paths, micro_batch=GLOBAL_ROWS)


def _same(a: dict, b: dict, name: str) -> None:
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), name
    if a["grad_norm"] is not None:
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), name
    da, db = torch.tensor(a["delta"]), torch.tensor(b["delta"])
    assert db.abs().max() > 1e-4, f"{name}: the step changed nothing"
    torch.testing.assert_close(da, db, rtol=1e-4, atol=1e-6, msg=name)


def test_two_processes_equal_one_process(paths, one_process, tmp_path):
    """2 gloo processes x 2 micro-batches of 2 rows == 1 process x 1 micro-batch of 8 rows."""
    two = _torchrun(paths["policy"].parent, tmp_path, nproc=2, micro=2)
    for name in OBJECTIVES:
        assert two[name]["world"] == 2
        _same(two[name], one_process[name], name)
    assert two["ppo"]["value_loss"] == pytest.approx(one_process["ppo"]["value_loss"], rel=1e-5)
    assert two["gopd"]["stats"] == pytest.approx(one_process["gopd"]["stats"], rel=1e-5)


def test_micro_batches_equal_one_batch(paths, one_process):
    """Gradient accumulation over micro-batches of unequal token counts (1 process, micro 3)."""
    from methods.posttrain.engine import Engine

    eng = Engine({"kind": "accelerate"}, device="cpu")
    got = run_objectives(paths, micro_batch=3, names=("sft", "grpo", "gopd"), engine=eng)
    for name in got:
        _same(got[name], one_process[name], name)


def test_weighting_error_would_be_caught(paths, one_process):
    """The equality above can fail: an unweighted mean of micro-batch losses differs."""
    from methods.posttrain.engine import Engine

    eng = Engine({"kind": "accelerate"}, device="cpu")
    orig = eng.step

    def step(model, opt, batch, loss_fn, **kw):  # every micro-batch weighted equally
        kw["reduction"] = "sequence"
        return orig(model, opt, batch, loss_fn, **kw)

    eng.step = step
    got = run_objectives(paths, micro_batch=3, names=("sft",), engine=eng)
    with pytest.raises(AssertionError):
        _same(got["sft"], one_process["sft"], "sft")


def test_engine_gopd_ppo_equal_the_plain_step(paths):
    """G-OPD and PPO: the engine step (micro-batches of 3 rows) gives the loss and update of the
    plain loops' step on the whole batch (methods/gopd/train.py, methods/noisy_rewards/ppo.py)."""
    from transformers import AutoTokenizer

    from methods.gopd.objective import gopd_advantage, gopd_loss
    from methods.noisy_rewards.ppo import (
        Critic,
        clipped_surrogate,
        clipped_value_loss,
        gae,
        masked_whiten,
        terminal_rewards,
    )
    from methods.posttrain.engine import Engine
    from methods.posttrain.tokens import (
        entropy_from_logits,
        gather_logp,
        masked_mean,
        shifted_logits,
        token_logprobs,
    )

    eng = Engine({"kind": "accelerate"}, device="cpu")
    got = run_objectives(paths, micro_batch=3, names=("gopd", "ppo"), engine=eng)
    tok = AutoTokenizer.from_pretrained(paths["policy"])
    b = _batch(tok)
    mask = b.loss_mask
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])

    def sgd_step(model, loss):
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.5 * p.grad

    # G-OPD, as train_gopd's step
    student = _load(paths["policy"]).train()
    before = _flat(student)
    with torch.no_grad():
        old = token_logprobs(student, b)
        t_lp = token_logprobs(_load(paths["teacher"]), b)
        r_lp = token_logprobs(_load(paths["ref"]), b)
    adv = gopd_advantage(t_lp, old, r_lp, 1.5) * mask
    loss = gopd_loss(gather_logp(shifted_logits(student, b), b.input_ids), adv, mask)
    sgd_step(student, loss)
    assert got["gopd"]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert got["gopd"]["stats"]["adv_mean"] == pytest.approx(
        float(masked_mean(adv, mask)), rel=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(got["gopd"]["delta"]), _flat(student) - before, rtol=1e-4, atol=1e-6
    )

    # PPO, as train_rl's step (critic, then actor)
    actor = _load(paths["policy"]).train()
    before = _flat(actor)
    torch.manual_seed(0)
    critic = Critic(actor)
    torch.nn.init.normal_(critic.head.weight, std=0.1)
    with torch.no_grad():
        old_logp = token_logprobs(actor, b)
        v_old = critic(b) * mask
        adv, returns = gae(terminal_rewards(rewards, mask), v_old, mask, 1.0, 1.0)
        adv = masked_whiten(adv, mask)
    vloss = clipped_value_loss(critic(b), v_old, returns, mask, 0.5)
    sgd_step(critic, vloss)
    logits = shifted_logits(actor, b)
    pg, _ = clipped_surrogate(gather_logp(logits, b.input_ids), old_logp, adv, mask, 0.2)
    loss = pg - 0.001 * masked_mean(entropy_from_logits(logits), mask)
    sgd_step(actor, loss)
    assert got["ppo"]["value_loss"] == pytest.approx(float(vloss.detach()), rel=1e-5)
    assert got["ppo"]["pg_loss"] == pytest.approx(float(pg.detach()), rel=1e-5, abs=1e-7)
    assert got["ppo"]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(
        torch.tensor(got["ppo"]["delta"]), _flat(actor) - before, rtol=1e-4, atol=1e-6
    )


def test_engine_matches_plain_loops(paths):
    """train_demos / train_grpo with ``engine: {kind: accelerate}`` give the plain loops' rows."""
    from transformers import AutoTokenizer

    from methods.posttrain.loops import SFTObjective, train_demos, train_grpo
    from methods.psft.objective import PSFTObjective, WarmupPSFTObjective

    tok = AutoTokenizer.from_pretrained(paths["policy"])
    prompts = [f"Problem {i}: what is {i} plus {i}?" for i in range(6)]
    comps = [f" The answer is {2 * i}." for i in range(6)]
    kw = dict(steps=4, minibatch=4, inner_steps=2, lr=1e-2, warmup_steps=2, seed=3)
    # PSFT with warm-up counts optimiser steps in its loss calls (one per step, not micro-batch)
    for obj in (SFTObjective, PSFTObjective, lambda: WarmupPSFTObjective(2, 2)):
        plain = train_demos(_load(paths["policy"]), tok, prompts, comps, obj(), **kw)
        eng = train_demos(
            _load(paths["policy"]),
            tok,
            prompts,
            comps,
            obj(),
            engine={"kind": "accelerate", "micro_batch": 3},
            **kw,
        )
        assert [r["step"] for r in eng] == [r["step"] for r in plain]
        for a, b in zip(eng, plain, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a
            assert a.get("phase_sft") == b.get("phase_sft")
            assert a["tokens"] == b["tokens"]
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    problems = [{"prompt": f"Problem {i}: what is {i} plus 1?", "answer": i + 1} for i in range(5)]
    gk = dict(steps=2, prompts_per_step=2, n=2, lr=1e-2, max_new_tokens=6, seed=1)
    plain, _ = train_grpo(_load(paths["policy"]), tok, problems, **gk)
    eng, _ = train_grpo(_load(paths["policy"]), tok, problems, engine={"kind": "accelerate"}, **gk)
    for a, b in zip(eng, plain, strict=True):
        assert a["reward"] == b["reward"] and a["length"] == b["length"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)


def test_engine_config_errors():
    from methods.posttrain.engine import EngineConfig
    from methods.posttrain.loops import _engine_on

    assert not _engine_on(None) and not _engine_on({"kind": "loop"})
    assert _engine_on({"kind": "accelerate", "mixed_precision": "bf16"})
    for bad, key in (
        ({"kind": "verl"}, "engine.kind"),
        ({"micro_batch": 0}, "engine.micro_batch"),
        ({"rollouts": "sglang"}, "engine.rollouts"),
        ({"bogus": 1}, "unknown key"),
    ):
        with pytest.raises(ValueError, match=key):
            EngineConfig.from_dict(bad)


def test_vllm_rollouts_are_refused_without_vllm():
    pytest.importorskip("accelerate")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed")
    except ImportError:
        pass
    from methods.posttrain.engine import Engine

    with pytest.raises(RuntimeError, match="needs vLLM"):
        Engine({"kind": "accelerate", "rollouts": "vllm"}, device="cpu")


if __name__ == "__main__":  # the torchrun worker
    tmp, out, micro, names = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    res = run_objectives(
        {n: tmp / n for n in ("policy", "ref", "aligned", "teacher")},
        micro,
        names=tuple(names.split(",")),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps(res))


def test_job_engine_kwargs_follow_the_scale(tmp_path):
    """Tiny / small (no ``engine:``) get the plain loops; the paper scale gets the engine."""
    from types import SimpleNamespace

    from claimbench.config import load_scale
    from methods.posttrain.engine import Engine, checkpoint_dir, job_engine_kwargs

    meta: dict = {}
    for scale in ("tiny", "small"):
        job = SimpleNamespace(scale_config=load_scale(scale), out=tmp_path / "a", device="cpu")
        assert job_engine_kwargs(job, meta) == {}
    paper = load_scale("paper")
    assert paper["engine"]["kind"] == "accelerate"
    cfg = {**paper["engine"], "mixed_precision": "no"}  # one accelerator per test process
    job = SimpleNamespace(scale_config={"engine": cfg}, out=tmp_path / "a", device="cpu")
    kw = job_engine_kwargs(job, meta)
    assert isinstance(kw["engine"], Engine) and kw["meta"] is meta
    assert kw["ckpt_dir"] == checkpoint_dir(tmp_path / "a") == tmp_path / "a.ckpt"
    assert (ROOT / paper["engine"]["launcher"]).is_file()


def test_vllm_result_layout():
    """TRL's ``generate`` result (per-prompt prompt ids, n completions each) as Rollouts."""
    from methods.posttrain.engine_vllm import layout

    class Tok:
        pad_token_id = 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    out = {"prompt_ids": [[5, 6], [7]], "completion_ids": [[8, 2], [9, 9, 9], [4], [3, 2]]}
    ro = layout(Tok(), out, n_prompts=2, n=2, max_new=3, stop_ids=[2])
    assert ro.batch.input_ids[0].tolist() == [5, 6, 8, 2, 0]
    assert ro.batch.loss_mask[0].tolist() == [0, 0, 1, 1, 0]
    assert ro.batch.loss_mask[2].tolist() == [0, 1, 0, 0, 0]
    assert ro.texts == ["8", "9 9 9", "4", "3"]
    assert ro.truncated == [False, True, False, False]
    assert ro.prompt_index == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="3 completions"):
        layout(Tok(), {"prompt_ids": [[1]] * 3, "completion_ids": [[2]] * 3}, 2, 2, 3, [2])


def test_gpu_smoke_engine_area_on_cpu(tmp_path):
    """``make gpu-smoke`` area ``engine`` (methods/posttrain/smoke.py) passes with DEVICE=cpu."""
    from methods.posttrain.smoke import OBJECTIVES as SMOKED
    from methods.posttrain.smoke import gpu_smoke

    lines = gpu_smoke("cpu", "float32", tmp_path)
    assert set(SMOKED) == set(OBJECTIVES)
    for name in OBJECTIVES:
        assert any(line.startswith(f"engine: {name} ") for line in lines), name
    assert any("checkpoint save / resume restores" in line for line in lines)
