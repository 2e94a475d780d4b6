"""GPU smoke run of the post-training engine (``make gpu-smoke``, area ``engine``).

On micro Qwen2 models (``claimbench.micro``, the real ``Qwen2ForCausalLM``), one engine step
(``methods.posttrain.engine``) of each objective the paper-scale jobs train with: SFT, PSFT's
clipped ratio, TrRa's fused target, GRPO, G-OPD (lambda 1.5 with the reference's correction)
and PPO (critic and actor). The policy keeps float32 master weights under the engine's bf16
autocast when ``dtype`` is bfloat16; reference / teacher models are loaded in ``dtype``. Then a
checkpoint round trip: save, perturb, resume, same weights. Every loss must be finite and every
step must move the weights.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

OBJECTIVES = ("sft", "psft", "trra", "grpo", "gopd", "ppo")


def gpu_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from claimbench import checkpoint
    from claimbench.micro import micro_lm
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
    from methods.posttrain.tokens import encode_pairs
    from methods.psft.objective import PSFTObjective
    from methods.realign.train import TrRaObjective

    workdir = Path(workdir)
    frozen_dtype = getattr(torch, dtype)
    paths = {
        n: micro_lm(workdir / f"engine-{n}", arch="qwen2", seed=s)
        for n, s in (("policy", 0), ("ref", 1), ("teacher", 2))
    }
    mp = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "no")
    # the smoke runs every area in one process: an earlier area (lm-eval's hf model) may have
    # set up accelerate's process state without bf16; a training job starts one engine only
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    engine = Engine({"kind": "accelerate", "mixed_precision": mp, "micro_batch": 2}, device=device)
    tok = AutoTokenizer.from_pretrained(paths["policy"])

    def load(name, dt):
        m = AutoModelForCausalLM.from_pretrained(paths[name], dtype=dt)
        return m.to(engine.device)

    prompts = [f"Problem {i}: what is {i} plus {i}?" for i in range(8)]
    comps = [" The answer is" + f" {2 * i}." * (1 + i % 3) for i in range(8)]
    batch = encode_pairs(tok, prompts, comps).to(engine.device)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    lines = [f"engine: accelerate on {engine.device}, mixed precision {mp}, micro-batch 2 rows"]
    ref = engine.prepare_frozen(load("ref", frozen_dtype))
    teacher = engine.prepare_frozen(load("teacher", frozen_dtype))
    for name in OBJECTIVES:
        t0 = time.perf_counter()
        model = load("policy", torch.float32)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model, opt = engine.prepare(model, opt)
        model.train()
        if name in ("sft", "psft", "trra"):
            obj = {
                "sft": SFTObjective,
                "psft": lambda: PSFTObjective(0.2, 0.28),
                "trra": lambda: TrRaObjective(ref, teacher, lam=1.5),
            }[name]()
            snaps = demo_snapshots(engine, model, batch, obj)
            row = demo_step(engine, model, opt, batch, obj, snaps, grad_clip=1.0)
        elif name == "grpo":
            row = grpo_step(engine, model, opt, batch, rewards, 2, grad_clip=1.0)
        elif name == "gopd":
            names = ["teacher"] * len(batch)
            row = gopd_step(
                engine, model, opt, batch, {"teacher": teacher}, names, ref, 1.5, grad_clip=1.0
            )
        else:
            critic = Critic(engine.unwrap(model))
            copt = torch.optim.AdamW(critic.parameters(), lr=1e-3)
            critic, copt = engine.prepare(critic, copt)
            cfg = dict(gamma=1.0, lam=1.0, value_clip=0.5, clip_ratio=0.2, entropy_coef=0.001)
            row = ppo_step(
                engine, model, opt, critic, copt, batch, rewards, {**cfg, "grad_clip": 1.0}
            )
            row["loss"] = row["actor_loss"] + row["value_loss"]
        moved = max(
            float((p.detach() - b).abs().max())
            for p, b in zip(engine.unwrap(model).parameters(), before, strict=True)
        )
        if not math.isfinite(row["loss"]) or moved <= 0:
            raise AssertionError(f"engine {name}: loss {row['loss']}, max weight change {moved}")
        lines.append(
            f"engine: {name:5s} step loss {row['loss']:+.4f}, max |dw| {moved:.2e}, "
            f"{time.perf_counter() - t0:.1f} s"
        )
    # checkpoint round trip on the device
    ckpt = workdir / "engine-ckpt"
    checkpoint.save(engine.accelerator, ckpt, 1, extra={"segments": []})
    saved = [p.detach().clone() for p in engine.unwrap(model).parameters()]
    with torch.no_grad():
        for p in engine.unwrap(model).parameters():
            p.add_(1.0)
    step = checkpoint.resume(engine.accelerator, ckpt)
    same = all(
        torch.equal(p.detach(), s)
        for p, s in zip(engine.unwrap(model).parameters(), saved, strict=True)
    )
    if step != 1 or not same:
        raise AssertionError(f"engine checkpoint: resumed step {step}, weights restored {same}")
    lines.append("engine: checkpoint save / resume restores the weights")
    try:
        import vllm  # noqa: F401

        lines.append("engine: vLLM is installed; rollouts: vllm goes through TRL's client")
    except ImportError:
        lines.append("engine: vLLM not installed: rollouts through HF generate")
    if device.startswith("cuda"):
        lines.append(f"engine: peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return lines
