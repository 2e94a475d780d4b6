"""G-OPD's training loop through the engine (methods/posttrain/engine.py): the plain loop's
rows, and a run cut after a checkpoint resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

CFG = {
    "steps": 3,
    "prompts_per_step": 2,
    "n": 2,
    "lr": 1e-2,
    "max_new_tokens": 6,
    "temperature": 1.0,
}
PROBLEMS = [{"prompt": f"Problem {i}: what is {i} plus 1?", "answer": i + 1} for i in range(5)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from claimbench.micro import micro_lm

    tmp = tmp_path_factory.mktemp("gopd_engine")
    return {n: micro_lm(tmp / n, arch="llama", seed=s) for n, s in (("s", 0), ("t", 3), ("r", 1))}


def _run(paths, steps, engine=None, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.gopd.train import train_gopd

    def load(p):
        return AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)

    student = load(paths["s"])
    tok = AutoTokenizer.from_pretrained(paths["s"])
    teachers = {"teacher": load(paths["t"]).eval()}
    rows, _ = train_gopd(
        student,
        tok,
        teachers,
        load(paths["r"]).eval(),
        PROBLEMS,
        1.25,
        dict(CFG, steps=steps),
        7,
        engine=engine,
        **kw,
    )
    flat = torch.cat([p.detach().reshape(-1) for p in student.parameters()])
    return rows, flat


def _engine(**cfg):
    from methods.posttrain.engine import Engine

    return Engine({"kind": "accelerate", "micro_batch": 3, **cfg}, device="cpu")


def test_engine_loop_gives_the_plain_loops_rows(paths):
    plain, w_plain = _run(paths, 2)
    eng, w_eng = _run(paths, 2, engine=_engine())
    assert len(eng) == len(plain) == 2
    for a, b in zip(eng, plain, strict=True):
        assert (a["step"], a["reward"], a["length"]) == (b["step"], b["reward"], b["length"])
        assert a["adv_mean"] == pytest.approx(b["adv_mean"], rel=1e-4, abs=1e-6)
        assert a["implicit_reward"] == pytest.approx(b["implicit_reward"], rel=1e-4, abs=1e-6)
    # float32 summation order through AdamW: measured up to 3.1e-6 on an AVX512 CPU (3 weights of
    # 114,368), within 1e-6 on an AVX2 one; two steps at lr 1e-2 move weights far more (checked)
    torch.testing.assert_close(w_eng, w_plain, rtol=1e-4, atol=1e-5)
    _, w_start = _run(paths, 0)
    assert (w_plain - w_start).abs().max() > 100 * 1e-5  # the tolerance is far below the motion


def test_a_cut_run_resumes_from_its_checkpoint(paths, tmp_path):
    whole, w_whole = _run(paths, 3, engine=_engine(checkpoint_every=1))
    ckpt, meta = tmp_path / "ckpt", {}
    _run(paths, 2, engine=_engine(checkpoint_every=1), ckpt_dir=ckpt, meta={})  # "killed" at 2
    resumed, w_resumed = _run(
        paths, 3, engine=_engine(checkpoint_every=1), ckpt_dir=ckpt, meta=meta
    )
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert [s["start_step"] for s in meta["segments"]][-1] == 2  # this run trained step 3 only
    assert resumed[-1]["reward"] == whole[-1]["reward"]
    torch.testing.assert_close(w_resumed, w_whole, rtol=1e-5, atol=1e-7)
