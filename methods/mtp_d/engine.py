"""MTP-D training through ``accelerate`` (the paper scale): bf16 autocast over float32 weights,
gradient accumulation, one process per GPU (``accelerate launch``, rules/common.smk), periodic
checkpoints and resume (``claimbench.checkpoint``).

It trains exactly what the shared one-process loop ``methods.lm.train.train_lm`` trains (same
windows from the same seeded generator, same AdamW, learning-rate schedule and gradient
clipping; MTPLM's loss unchanged): each step's global batch of ``batch_size`` windows is cut into
micro-batches of ``micro_batch_size``; process r of W takes micro-batches r·A .. r·A+A-1 (A =
batch_size / (micro_batch_size · W)); each micro-batch loss is divided by A and DDP averages
over the W processes, so the gradient is the mean over the whole batch, as in one forward (every
window has the same length, so the mean of equal-size micro-batch means is the batch mean).

A checkpoint (every ``checkpoint_every`` steps) holds the model, the optimiser, every process's
RNG state, the window generator's state and the per-step log; a rerun of the job resumes from the
last complete one and ends with the same weights as an uninterrupted run
(tests/test_mtp_d_engine.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from claimbench.errors import ConfigError


class LoopState:
    """What a resumed loop needs besides the model and optimiser: the generator that draws the
    windows and the log of the steps done (``accelerator.register_for_checkpointing``)."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen
        self.log: list[dict] = []

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "log": list(self.log)}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.log = list(state["log"])


def micro_batches(batch_size: int, micro: int, world: int, where: str) -> int:
    """Accumulation steps A per process: batch_size = micro · world · A, else a config error."""
    if micro < 1 or batch_size % (micro * world):
        raise ConfigError(
            f"{where}.micro_batch_size: {micro} x {world} processes does not divide "
            f"batch_size {batch_size}"
        )
    return batch_size // (micro * world)


def make_accelerator(mixed_precision: str = "no", cpu: bool = False):
    """An ``Accelerator`` with these settings; an earlier one's settings in this process (a
    smoke run of several areas, tests) are dropped, the process group is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _mean_parts(rows: list[dict]) -> dict:
    keys = rows[0].keys() if rows else ()
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def train_engine(
    model: torch.nn.Module,
    streams: dict[str, torch.Tensor],
    train_cfg: dict,
    *,
    seed: int,
    desc: str,
    accelerator,
    ckpt_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep: int = 2,
    where: str = "papers.mtp_d.train",
    on_step: Callable[[int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Train ``model`` (an ``MTPLM``) in place; returns (per-step log, meta with segments).

    Log rows are ``{step, loss, lr, main_ce, ce_k, kl_k}`` with the loss and parts averaged over
    the whole global batch (all micro-batches of all processes). ``on_step(step)`` is called
    after each optimiser step (tests use it to stop a run as a kill would)."""
    from claimbench import checkpoint
    from methods.lm.train import _split_batch, lr_at, sample_windows

    steps, batch_size, seq_len = train_cfg["steps"], train_cfg["batch_size"], train_cfg["seq_len"]
    frac = train_cfg["arith_fraction"]
    counts = _split_batch(batch_size, {"text": 1 - frac, "arith": frac})
    world, rank = accelerator.num_processes, accelerator.process_index
    micro = int(train_cfg.get("micro_batch_size") or batch_size // world)
    accum = micro_batches(batch_size, micro, world, where)
    state = LoopState(torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"], betas=(0.9, 0.95)
    )
    inner = model
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(state)
    start = checkpoint.resume(accelerator, ckpt_dir) if ckpt_dir else 0
    meta: dict = {"segments": checkpoint.segments_of(ckpt_dir) if ckpt_dir and start else []}
    model.train()
    bar = tqdm(
        range(start, steps),
        desc=desc,
        mininterval=2.0,
        dynamic_ncols=True,
        disable=not accelerator.is_main_process,
    )
    for step in bar:
        parts = [sample_windows(streams[k], c, seq_len, state.gen) for k, c in counts.items() if c]
        batch = torch.cat(parts)
        mine = batch[rank * accum * micro : (rank + 1) * accum * micro].to(accelerator.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, train_cfg["warmup_steps"], train_cfg["lr"])
        n_hist = len(inner.history)
        total = torch.zeros((), device=accelerator.device)
        for i in range(accum):
            sync = i == accum - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
            with ctx:
                with accelerator.autocast():
                    loss = model(input_ids=mine[i * micro : (i + 1) * micro]).loss / accum
                accelerator.backward(loss)
            total += loss.detach().float()
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(accelerator.reduce(total, reduction="mean"))
        local = _mean_parts(inner.history[n_hist:])
        del inner.history[n_hist:]
        if world > 1 and local:
            t = torch.tensor(list(local.values()), device=accelerator.device)
            local = dict(zip(local, accelerator.reduce(t, reduction="mean").tolist(), strict=True))
        state.log.append({"step": step, "loss": value, "lr": opt.param_groups[0]["lr"], **local})
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        done = step + 1
        if ckpt_dir and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            so_far = {"segments": list(meta["segments"])}
            checkpoint.record_segment(so_far, start, done)
            checkpoint.save(accelerator, ckpt_dir, done, keep=keep, extra=so_far)
        if on_step is not None:
            on_step(done)
    checkpoint.record_segment(meta, start, steps)
    model.eval()
    return state.log, meta
