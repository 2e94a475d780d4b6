"""The distributed training engine of the post-training papers at the paper scale.

``accelerate`` underneath (methods/posttrain/README.md#the-engine argues the choice): the same
code runs as one process, as DDP (``torchrun`` / ``accelerate launch``), under FSDP2 or under
DeepSpeed ZeRO-3 (``accelerate launch --config_file profiles/engine/<name>.yaml``), in bf16
mixed precision. The papers' objectives stay ours: every step below calls exactly the objective
objects and functions of the method packages (``snapshot`` / ``loss`` of an SFT / PSFT / TrRa
objective, GRPO's group advantages, G-OPD's advantage and loss, PPO's clipped surrogate and
value loss); the engine only decides *where* rows and tokens are computed:

* the global batch is split by rows across processes (contiguous, so a GRPO group stays on one
  process), then into micro-batches of ``micro_batch`` rows: the float32 full-vocabulary logits
  of at most ``micro_batch`` rows exist at once (forward with grad, and the no-grad log-probs of
  old / reference / teacher models alike);
* gradient accumulation over micro-batches: each micro-batch's loss (a token mean over its own
  tokens) is weighted by its share of the *global* batch's tokens (rows for a per-sequence
  objective) times the number of processes, so after DDP's gradient average the update equals
  the one-process update on the whole batch (to float tolerance), whatever the split;
* statistics (loss, clip fractions, ...) are reduced the same way across micro-batches and
  processes.

Config (``engine:`` of the scale file; absent or ``kind: loop`` = the plain loops of
``loops.py``, bit-identical at tiny and small)::

    engine:
      kind: accelerate          # loop | accelerate
      mixed_precision: bf16     # no | bf16 | fp16
      micro_batch: 4            # rows per forward/backward
      checkpoint_every: 50      # optimiser steps between checkpoints (0: never)
      keep: 2                   # checkpoints kept
      launcher: profiles/engine/zero3.yaml
      rollouts: hf              # hf | vllm (TRL's vLLM integration; dry-run only here)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from methods.posttrain.tokens import (
    Batch,
    entropy_from_logits,
    gather_logp,
    masked_mean,
    shifted_logits,
)

KINDS = ("loop", "accelerate")
PRECISIONS = ("no", "bf16", "fp16")
ROLLOUTS = ("hf", "vllm")
# Objectives whose snapshot reads only frozen models (reference / teachers): computed per
# micro-batch just before its loss, so their full-vocabulary logits are never all held at once.
FROZEN_SNAPSHOT = {"sft", "sft_kl", "trra"}


@dataclass(frozen=True)
class EngineConfig:
    kind: str = "loop"
    mixed_precision: str = "no"
    micro_batch: int = 8
    checkpoint_every: int = 0
    keep: int = 2
    launcher: str | None = None
    rollouts: str = "hf"
    gpus_per_job: int | None = None  # read by the workflow (rules/common.smk train_gpus)

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "engine") -> EngineConfig:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}")
        cfg = cls(**d)
        for key, allowed in (
            ("kind", KINDS),
            ("mixed_precision", PRECISIONS),
            ("rollouts", ROLLOUTS),
        ):
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"{where}.{key}: {getattr(cfg, key)!r} is not one of {allowed}")
        for key, low in (("micro_batch", 1), ("checkpoint_every", 0), ("keep", 1)):
            v = getattr(cfg, key)
            if not isinstance(v, int) or v < low:
                raise ValueError(f"{where}.{key}: {v!r} must be an integer >= {low}")
        return cfg

    @property
    def enabled(self) -> bool:
        return self.kind == "accelerate"


def reduction_of(objective) -> str:
    """``token`` (the loss is a token mean over the batch) or ``sequence`` (a mean over rows:
    the TrRa code-faithful mode averages per-sequence losses)."""
    red = getattr(objective, "reduction", None)
    if red is None:
        red = "sequence" if getattr(objective, "mode", None) == "code_faithful" else "token"
    if red not in ("token", "sequence"):
        raise ValueError(f"objective {objective!r}: reduction {red!r} is not token or sequence")
    return red


class Engine:
    """One ``accelerate.Accelerator`` and the batch bookkeeping of a training job."""

    def __init__(self, cfg: EngineConfig | dict | None = None, *, device: str | None = None):
        from accelerate import Accelerator

        self.cfg = cfg if isinstance(cfg, EngineConfig) else EngineConfig.from_dict(cfg)
        if self.cfg.rollouts == "vllm":
            require_vllm()
        cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
        from accelerate.utils import DistributedDataParallelKwargs

        # the PPO critic's LM head is unused (values come from the last hidden state)
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.accelerator = Accelerator(
            mixed_precision=self.cfg.mixed_precision, cpu=cpu, kwargs_handlers=[ddp]
        )
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        if self._deepspeed():  # no dataloader is prepared: DeepSpeed's batch sizes from ours
            dsc = self.accelerator.state.deepspeed_plugin.deepspeed_config
            dsc["train_micro_batch_size_per_gpu"] = self.cfg.micro_batch
            dsc["train_batch_size"] = self.cfg.micro_batch * self.world
            dsc["gradient_accumulation_steps"] = 1  # the engine accumulates (boundary per step)

    # -- setup ----------------------------------------------------------------------------------
    @property
    def device(self):
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, *objs):
        return self.accelerator.prepare(*objs)

    def prepare_frozen(self, model):
        """A reference / teacher model: no grad, eval mode; under ZeRO-3 / FSDP it is sharded
        like the policy (``prepare``), otherwise moved to the device as loaded (bf16 at the
        paper scale: the job's ``--dtype``)."""
        if model is None:
            return None
        model.requires_grad_(False).eval()
        if self._deepspeed():  # partitioned by ZeRO-3 like the policy, no optimiser
            import deepspeed

            dsc = self.accelerator.state.deepspeed_plugin.deepspeed_config
            stage = dsc.get("zero_optimization", {}).get("stage", 0)
            cfg = {
                "train_micro_batch_size_per_gpu": dsc["train_micro_batch_size_per_gpu"],
                "train_batch_size": dsc["train_micro_batch_size_per_gpu"] * self.world,
                "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": 3 if stage == 3 else 0},
                "bf16": {"enabled": self.cfg.mixed_precision == "bf16"},
            }
            return deepspeed.initialize(model=model, config=cfg)[0].eval()
        if self._sharded():
            return self.accelerator.prepare_model(model, evaluation_mode=True)
        return model.to(self.device)

    def _sharded(self) -> bool:
        st = self.accelerator.state
        return bool(getattr(st, "deepspeed_plugin", None) or getattr(st, "fsdp_plugin", None))

    def _deepspeed(self) -> bool:
        return bool(getattr(self.accelerator.state, "deepspeed_plugin", None))

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    # -- rows ---------------------------------------------------------------------------------
    def shard(self, batch: Batch, group: int = 1) -> tuple[Batch, slice]:
        """This process's contiguous rows of the global batch (whole groups of ``group`` rows)."""
        B = len(batch)
        if B % (self.world * group):
            raise ValueError(
                f"engine: global batch of {B} rows does not split into {self.world} processes "
                f"of whole groups of {group}"
            )
        per = B // self.world
        sl = slice(self.rank * per, (self.rank + 1) * per)
        return batch.select(sl), sl

    def micro(self, batch: Batch) -> list[slice]:
        m = self.cfg.micro_batch
        return [slice(i, min(i + m, len(batch))) for i in range(0, len(batch), m)]

    def sum_all(self, x: float | torch.Tensor) -> float:
        t = torch.as_tensor(x, dtype=torch.float64, device=self.device).reshape(1)
        if self.world > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        return float(t.item())

    # -- no-grad log-probs, micro-batched --------------------------------------------------------
    @torch.no_grad()
    def token_logprobs(self, model, batch: Batch) -> torch.Tensor:
        """Per-token log-probs of ``batch`` under ``model`` (float32), ``micro_batch`` rows at a
        time: the vocabulary-wide logits of one micro-batch at most exist at once."""
        out = []
        for sl in self.micro(batch):
            mb = batch.select(sl)
            with self.accelerator.autocast():
                out.append(gather_logp(shifted_logits(model, mb), mb.input_ids))
        return torch.cat(out)

    # -- one optimiser step ---------------------------------------------------------------------
    def step(
        self,
        model,
        opt,
        batch: Batch,
        loss_fn: Callable[[torch.Tensor, Batch, slice], tuple[torch.Tensor, dict]],
        *,
        grad_clip: float | None,
        reduction: str = "token",
        sched=None,
        forward: Callable | None = None,
    ) -> dict:
        """Forward / backward every micro-batch of ``batch`` (this process's rows), then one
        clipped optimiser step. ``loss_fn(out, mb, sl)`` returns the objective's loss on micro-
        batch ``mb`` (rows ``sl`` of ``batch``) reduced over ``mb`` alone, and its statistics;
        ``forward(model, mb)`` defaults to float32 shifted logits. Returns the global loss,
        statistics and grad norm."""
        forward = forward or shifted_logits
        weight_of = (
            (lambda mb: float(mb.loss_mask.sum())) if reduction == "token" else (lambda mb: len(mb))
        )
        total = self.sum_all(sum(weight_of(batch.select(sl)) for sl in self.micro(batch)))
        if total <= 0:
            total = 1.0
        slices = self.micro(batch)
        loss_sum, stat_sum = 0.0, {}
        ds = self._deepspeed()
        if ds and grad_clip is not None and model.gradient_clipping() != grad_clip:
            # DeepSpeed clips inside its own step, with its config's value
            raise ValueError(
                f"engine: grad_clip {grad_clip} differs from the DeepSpeed config's "
                f"gradient_clipping {model.gradient_clipping()} (profiles/engine/ds_zero3.json)"
            )
        opt.zero_grad(set_to_none=True)
        for i, sl in enumerate(slices):
            mb = batch.select(sl)
            w = weight_of(mb) / total
            sync = i == len(slices) - 1
            if ds:  # DeepSpeed steps inside backward at an accumulation boundary
                self.accelerator.gradient_state._set_sync_gradients(sync)
            ctx = self.accelerator.no_sync(model) if not sync else _nullcontext()
            with ctx:
                with self.accelerator.autocast():
                    out = forward(model, mb)
                loss, stats = loss_fn(out, mb, sl)
                # DDP averages gradients over processes: scale by the world size back up
                self.accelerator.backward(loss * (w * self.world))
            loss_sum += float(loss.detach()) * w
            for k, v in stats.items():
                stat_sum[k] = stat_sum.get(k, 0.0) + float(v) * w
        if ds:
            self.accelerator.gradient_state._set_sync_gradients(True)
        gnorm = None
        if grad_clip is not None:
            gnorm = self.accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        out = {"loss": self.sum_all(loss_sum)}
        out.update({k: self.sum_all(v) for k, v in sorted(stat_sum.items())})
        if gnorm is not None:
            out["grad_norm"] = float(gnorm)
        return out

    def max_all(self, x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        if self.world > 1:
            t = self.accelerator.gather(t)
        return float(t.max().item())

    def masked_stat(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """A token mean over the global batch of a per-token quantity of this process's rows."""
        return self.sum_all(float((x * mask).sum())) / max(1.0, self.sum_all(float(mask.sum())))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def require_vllm() -> None:
    """The vLLM rollout path goes through TRL's own vLLM integration (``use_vllm``); vLLM is not
    installable next to this project's transformers pin, so here it can only be named."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "engine.rollouts: 'vllm' needs vLLM (pip install 'trl[vllm]' on the GPU nodes); "
            "it is not installed here"
        ) from None


# -- the objectives' steps ------------------------------------------------------------------------


def demo_step(engine: Engine, model, opt, batch: Batch, objective, snaps=None, **kw) -> dict:
    """One optimiser step of a demonstration objective (SFT, SFT-KL, PSFT, TrRa) on the global
    mini-batch ``batch``: exactly ``objective.snapshot`` / ``objective.loss``, per micro-batch.
    ``snaps`` (from :func:`demo_snapshots`) holds the old-policy snapshots taken before the
    outer batch's first step; frozen-model snapshots are computed here, micro-batch by
    micro-batch."""
    local, _ = engine.shard(batch)
    lazy = getattr(objective, "name", "") in FROZEN_SNAPSHOT
    # PSFT with warm-up counts optimiser steps in its loss calls: one count per step here
    done = getattr(objective, "steps_done", None)

    def loss_fn(logits, mb, sl):
        if lazy or snaps is None:
            with engine.accelerator.autocast():
                snap = objective.snapshot(model, mb)
        else:
            snap = snaps[(sl.start, sl.stop)]
        if done is not None:
            objective.steps_done = done
        loss, stats = objective.loss(logits, mb, snap)
        with torch.no_grad():
            ent = masked_mean(entropy_from_logits(logits.detach()), mb.loss_mask)
        return loss, {**stats, "train_entropy": float(ent)}

    row = engine.step(model, opt, local, loss_fn, reduction=reduction_of(objective), **kw)
    if done is not None:
        objective.steps_done = done + 1
    row["tokens"] = int(engine.sum_all(local.loss_mask.sum()))
    return row


def demo_snapshots(engine: Engine, model, batch: Batch, objective) -> dict | None:
    """The old-policy snapshots of this process's rows of ``batch`` per micro-batch (PSFT), or
    None when the objective's snapshot reads only frozen models (computed at loss time)."""
    if getattr(objective, "name", "") in FROZEN_SNAPSHOT:
        return None
    local, _ = engine.shard(batch)
    out = {}
    for sl in engine.micro(local):
        with engine.accelerator.autocast():
            out[(sl.start, sl.stop)] = objective.snapshot(model, local.select(sl))
    return out


def grpo_step(engine: Engine, model, opt, batch: Batch, rewards: torch.Tensor, n: int, **kw):
    """GRPO (``loops.train_grpo``): group advantages of the rewards, loss -token_mean A*logp.
    The global batch is group-contiguous; each process takes whole groups."""
    from methods.posttrain.loops import group_advantages

    local, sl_rows = engine.shard(batch, group=n)
    adv = group_advantages(rewards.to(engine.device), n)[sl_rows]

    def loss_fn(logits, mb, sl):
        logp = gather_logp(logits, mb.input_ids)
        with torch.no_grad():
            ent = masked_mean(entropy_from_logits(logits.detach()), mb.loss_mask)
        return -masked_mean(adv[sl][:, None] * logp, mb.loss_mask), {"entropy": float(ent)}

    return engine.step(model, opt, local, loss_fn, **kw)


def gopd_step(
    engine: Engine,
    student,
    opt,
    batch: Batch,
    teachers: dict,
    names: list[str],
    ref,
    lam: float,
    **kw,
):
    """G-OPD (``methods/gopd/train.py``): the advantage of ``gopd_advantage`` (lambda and the
    reference's reward correction) from micro-batched teacher / reference / old log-probs,
    then ``gopd_loss``."""
    from methods.gopd.objective import gopd_advantage, gopd_loss, route_teacher

    local, rows = engine.shard(batch)
    names = names[rows]
    old = engine.token_logprobs(student, local)
    t_lp = route_teacher(
        {k: engine.token_logprobs(m, local) for k, m in teachers.items() if k in set(names)},
        names,
    )
    r_lp = engine.token_logprobs(ref, local) if ref is not None else None
    adv = gopd_advantage(t_lp, old, r_lp, lam) * local.loss_mask

    def loss_fn(logits, mb, sl):
        with torch.no_grad():
            ent = masked_mean(entropy_from_logits(logits.detach()), mb.loss_mask)
        loss = gopd_loss(gather_logp(logits, mb.input_ids), adv[sl], mb.loss_mask)
        return loss, {"entropy": float(ent)}

    row = engine.step(student, opt, local, loss_fn, **kw)
    # the plain loop's statistics (methods/gopd/train.py), over the global batch
    mask = local.loss_mask
    rows_all = engine.sum_all(len(local))
    row["length"] = engine.sum_all(mask.sum()) / rows_all
    row["adv_mean"] = engine.masked_stat(adv, mask)
    row["adv_abs_max"] = engine.max_all(float((adv.abs() * mask).max()))
    row["frac_adv_gt5"] = engine.masked_stat((adv > 5).float(), mask)
    if r_lp is not None:
        row["implicit_reward"] = engine.sum_all(((t_lp - r_lp) * mask).sum()) / rows_all
    return row


def global_whiten(engine: Engine, x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8):
    """``masked_whiten`` of methods/noisy_rewards/ppo.py over the global batch's tokens."""
    cnt = max(1.0, engine.sum_all(mask.sum()))
    mean = engine.sum_all((x * mask).sum()) / cnt
    var = engine.sum_all((((x - mean) ** 2) * mask).sum()) / cnt
    return (x - mean) * (1.0 / math.sqrt(var + eps)) * mask


def ppo_step(
    engine: Engine,
    actor,
    actor_opt,
    critic,
    critic_opt,
    batch: Batch,
    rewards: torch.Tensor,
    cfg: dict,
    *,
    update_actor: bool = True,
) -> dict:
    """PPO with the noisy / RPR rewards (``methods/noisy_rewards/ppo.py``): terminal rewards,
    GAE, advantages whitened over the global batch, then one clipped value step of the critic
    and one clipped-surrogate step of the actor (entropy bonus), all through the functions of
    that module."""
    from methods.noisy_rewards.ppo import (
        clipped_surrogate,
        clipped_value_loss,
        gae,
        terminal_rewards,
    )

    local, rows = engine.shard(batch)
    mask = local.loss_mask
    r = rewards.to(engine.device)[rows]
    old_logp = engine.token_logprobs(actor, local)
    with torch.no_grad():
        v_old = torch.cat([critic(local.select(sl)) for sl in engine.micro(local)]) * mask
        adv, returns = gae(terminal_rewards(r, mask), v_old, mask, cfg["gamma"], cfg["lam"])
    adv = global_whiten(engine, adv, mask)
    row = {}

    def value_fn(v, mb, sl):
        return clipped_value_loss(v, v_old[sl], returns[sl], mb.loss_mask, cfg["value_clip"]), {}

    crit = engine.step(
        critic,
        critic_opt,
        local,
        value_fn,
        grad_clip=cfg["grad_clip"],
        forward=lambda m, mb: m(mb),
    )
    row["value_loss"] = crit["loss"]
    if update_actor:

        def actor_fn(logits, mb, sl):
            logp = gather_logp(logits, mb.input_ids)
            pg, frac = clipped_surrogate(
                logp, old_logp[sl], adv[sl], mb.loss_mask, cfg["clip_ratio"]
            )
            ent = masked_mean(entropy_from_logits(logits), mb.loss_mask)
            return pg - cfg["entropy_coef"] * ent, {
                "clip_frac": frac,
                "pg_loss": float(pg.detach()),
            }

        act = engine.step(actor, actor_opt, local, actor_fn, grad_clip=cfg["grad_clip"])
        row.update(pg_loss=act["pg_loss"], clip_frac=act["clip_frac"], actor_loss=act["loss"])
    return row


def world_env() -> dict:
    """The launcher's process layout (for a job's meta)."""
    return {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ}


# -- the loops at the paper scale -----------------------------------------------------------------


class LoopState:
    """The data order and counters of a loop, saved in its checkpoints (``state_dict``)."""

    def __init__(self, rng, order: list | None = None, objective=None):
        self.rng, self.order, self.objective = rng, order if order is not None else [], objective
        self.segments: list[dict] = []
        self.rows: list[dict] = []  # the log rows so far (a resumed job returns them all)

    def state_dict(self) -> dict:
        out = {
            "rng": self.rng.getstate(),
            "order": list(self.order),
            "segments": self.segments,
            "rows": self.rows,
        }
        if hasattr(self.objective, "steps_done"):
            out["steps_done"] = self.objective.steps_done
        return out

    def load_state_dict(self, d: dict) -> None:
        self.rng.setstate(d["rng"])
        self.order[:] = d["order"]
        self.segments = list(d.get("segments", []))
        self.rows = list(d.get("rows", []))
        if "steps_done" in d:
            self.objective.steps_done = d["steps_done"]


def _start(engine: Engine, state: LoopState, ckpt_dir) -> int:
    from claimbench import checkpoint

    engine.accelerator.register_for_checkpointing(state)
    return checkpoint.resume(engine.accelerator, ckpt_dir) if ckpt_dir else 0


def _maybe_save(engine, state, ckpt_dir, start, step, last_saved, meta_done=False) -> int:
    """Checkpoint when ``step`` passed a multiple of ``checkpoint_every`` since the last one."""
    from claimbench import checkpoint

    every = engine.cfg.checkpoint_every
    if not ckpt_dir or not every or step // every == last_saved // every:
        return last_saved
    seg = {}
    checkpoint.record_segment(seg, start, step)
    saved = state.segments
    state.segments = saved + seg["segments"]  # the segments so far, this one open at ``step``
    checkpoint.save(engine.accelerator, ckpt_dir, step, keep=engine.cfg.keep)
    state.segments = saved
    return step


def _finish(state: LoopState, meta: dict | None, start: int, end: int) -> None:
    from claimbench import checkpoint

    if meta is None:
        return
    meta.setdefault("segments", []).extend(state.segments)
    checkpoint.record_segment(meta, start, end)


def train_demos_engine(
    engine_cfg,
    model,
    tok,
    prompts,
    completions,
    objective,
    *,
    steps,
    minibatch,
    inner_steps=1,
    lr,
    weight_decay=0.0,
    warmup_steps=0,
    grad_clip=1.0,
    seed=0,
    eval_batch=None,
    start_model=None,
    eval_every=10,
    log=None,
    ckpt_dir=None,
    meta=None,
) -> list[dict]:
    """``loops.train_demos`` through the engine: the same data order, outer batches, snapshots,
    optimiser and schedule; ``minibatch`` is the global mini-batch (split over processes and
    micro-batches). Resumes from ``ckpt_dir`` and appends the run's segments to ``meta``."""
    import random

    from tqdm.auto import tqdm

    from methods.posttrain.loops import _lr_lambda, eval_demo_stats
    from methods.posttrain.tokens import encode_pairs

    engine = engine_cfg if isinstance(engine_cfg, Engine) else Engine(engine_cfg)
    torch.manual_seed(seed)
    state = LoopState(random.Random(seed), objective=objective)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model, opt = engine.prepare(model, opt)
    # not prepared: accelerate's scheduler wrapper steps once per process
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup_steps))
    engine.accelerator.register_for_checkpointing(sched)
    start = step = _start(engine, state, ckpt_dir)
    last_saved = step
    model.train()
    rows = state.rows  # restored by a resume
    bar = tqdm(total=steps, initial=step, desc="demos", mininterval=2.0, disable=not engine.is_main)
    while step < steps:
        k = min(inner_steps, steps - step)
        mbs = []
        for _ in range(k):
            idx = []
            for _ in range(minibatch):
                if not state.order:
                    state.order[:] = list(range(len(prompts)))
                    state.rng.shuffle(state.order)
                idx.append(state.order.pop())
            mbs.append(
                encode_pairs(tok, [prompts[i] for i in idx], [completions[i] for i in idx]).to(
                    engine.device
                )
            )
        snaps = [demo_snapshots(engine, model, mb, objective) for mb in mbs]
        for mb, snap in zip(mbs, snaps, strict=True):
            row = demo_step(
                engine, model, opt, mb, objective, snap, grad_clip=grad_clip, sched=sched
            )
            step += 1
            row = {"step": step, **row}
            if eval_batch is not None and (step % eval_every == 0 or step == steps):
                stats = eval_demo_stats(engine.unwrap(model), start_model, eval_batch)
                row.update({f"eval_{k}": v for k, v in stats.items()})
            rows.append(row)
            bar.update(1)
            if log:
                log(row)
        last_saved = _maybe_save(engine, state, ckpt_dir, start, step, last_saved)
    bar.close()
    _finish(state, meta, start, step)
    model.eval()
    return rows


def train_grpo_engine(
    engine_cfg,
    model,
    tok,
    problems,
    *,
    steps,
    prompts_per_step,
    n,
    lr,
    max_new_tokens=48,
    temperature=1.0,
    grad_clip=1.0,
    seed=0,
    reward_fn=None,
    log=None,
    stop="newline",
    ckpt_dir=None,
    meta=None,
):
    """``loops.train_grpo`` through the engine. Rollouts: HF generation of the whole global
    batch with the step's seed on every process (identical, so each trains on its own groups);
    ``rollouts: vllm`` is TRL's vLLM integration, not installable here (``require_vllm``)."""
    import random

    from tqdm.auto import tqdm

    from methods.posttrain.rewards import RewardStats, correctness_reward
    from methods.posttrain.sampling import sample, stop_token_ids

    if n < 2:
        raise ValueError(f"GRPO needs n >= 2 rollouts per prompt, got {n}")
    engine = engine_cfg if isinstance(engine_cfg, Engine) else Engine(engine_cfg)
    reward_fn = reward_fn or correctness_reward
    stats = RewardStats()
    stop_ids = stop_token_ids(tok, stop)
    state = LoopState(random.Random(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model, opt = engine.prepare(model, opt)
    start = step = _start(engine, state, ckpt_dir)
    last_saved = step
    vllm = None
    if engine.cfg.rollouts == "vllm":  # not exercised here: see engine_vllm.py
        from methods.posttrain.engine_vllm import VLLMRollouts

        vllm = VLLMRollouts(engine)
        vllm.sync(model)  # the server may hold the start weights or a resumed checkpoint's
    rows = state.rows  # restored by a resume
    bar = tqdm(total=steps, initial=step, desc="grpo", mininterval=2.0, disable=not engine.is_main)
    while step < steps:
        rng = state.rng
        chosen = [problems[rng.randrange(len(problems))] for _ in range(prompts_per_step)]
        kw = dict(
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed * 100003 + step,
            stop_ids=stop_ids,
        )
        if vllm is not None:
            ro = vllm.sample(tok, [p["prompt"] for p in chosen], **kw)
        else:
            ro = sample(engine.unwrap(model), tok, [p["prompt"] for p in chosen], **kw)
        answers = [chosen[i]["answer"] for i in ro.prompt_index]
        rewards, fails = reward_fn(ro.texts, answers, stats)
        r = torch.tensor(rewards, dtype=torch.float32, device=engine.device)
        model.train()
        batch = ro.batch.to(engine.device)
        out = grpo_step(engine, model, opt, batch, r, n, grad_clip=grad_clip)
        if vllm is not None:
            vllm.sync(model)
        step += 1
        row = {
            "step": step,
            "reward": float(r.mean()),
            "format_failures": int(sum(fails)),
            "truncated": int(sum(ro.truncated)),
            "entropy": out["entropy"],
            "length": float(batch.loss_mask.sum(1).mean()),
            "loss": out["loss"],
        }
        rows.append(row)
        bar.update(1)
        if log:
            log(row)
        last_saved = _maybe_save(engine, state, ckpt_dir, start, step, last_saved)
    bar.close()
    _finish(state, meta, start, step)
    model.eval()
    return rows, stats


# -- a job's use of the engine ----------------------------------------------------------------------


def checkpoint_dir(out) -> Path:
    """A job's checkpoints: ``<out>.ckpt`` beside its output (Snakemake deletes the outputs of
    an incomplete job before rerunning it, but not this folder)."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def job_engine_kwargs(job, meta: dict) -> dict:
    """Keyword arguments for ``train_demos`` / ``train_grpo`` from a job's scale: ``{}`` when the
    scale has no ``engine:`` or ``kind: loop`` (tiny, small: the plain loops, unchanged), else
    the engine, the job's checkpoint folder and ``meta`` (which receives the segments)."""
    cfg = (getattr(job, "scale_config", None) or {}).get("engine")
    if cfg is None or not EngineConfig.from_dict(cfg, "engine").enabled:
        return {}
    return {
        "engine": Engine(cfg, device=job.device),
        "ckpt_dir": checkpoint_dir(job.out),
        "meta": meta,
    }


def is_main_process(kwargs: dict | None = None) -> bool:
    """Whether this process writes the job's artifact, record and meta (rank 0)."""
    eng = (kwargs or {}).get("engine")
    if eng is not None:
        return eng.is_main
    return int(os.environ.get("RANK", "0")) == 0


def save_pretrained(kwargs: dict, model, tok, out) -> None:
    """``save_pretrained`` of a trained policy: gathered from ZeRO-3 / FSDP shards when the
    engine ran, written by the main process only."""
    eng = kwargs.get("engine")
    if eng is None:
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return
    acc = eng.accelerator
    acc.wait_for_everyone()
    state = acc.get_state_dict(model)
    unwrapped = acc.unwrap_model(model)
    unwrapped.save_pretrained(
        out, is_main_process=acc.is_main_process, save_function=acc.save, state_dict=state
    )
    if acc.is_main_process:
        tok.save_pretrained(out)
    acc.wait_for_everyone()


def drop_checkpoints(kwargs: dict) -> None:
    """Remove a finished job's checkpoints (after its meta.json is written)."""
    import shutil

    eng, ckpt = kwargs.get("engine"), kwargs.get("ckpt_dir")
    if eng is not None and ckpt is not None and eng.is_main:
        shutil.rmtree(ckpt, ignore_errors=True)
