"""Training loops shared by the post-training papers: demonstrations (SFT and its variants) and
GRPO with a verifiable reward. Custom loops, not TRL, so that every arm of a comparison shares
the same data order, batching, optimiser and schedule and differs only in the per-token loss.

Demonstration loop (``train_demos``): an *outer batch* of ``minibatch * inner_steps`` examples is
drawn; the objective takes a no-grad ``snapshot`` of each mini-batch (PSFT's old-policy log-probs;
nothing for SFT); then ``inner_steps`` optimiser steps run over the mini-batches. With
``inner_steps = K`` the snapshot is refreshed every K optimiser steps. AdamW, linear warm-up then
constant lr, gradient-norm clipping.

Device and dtype follow the model: batches are moved to ``model.device``; the model trains in
the dtype it was loaded in (a job's ``--dtype``), while per-token log-probs, entropies, KLs,
ratios, advantages and losses are float32 (``tokens.shifted_logits`` upcasts the logits), so a
bfloat16 model's loss is computed at float32 precision.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from claimbench.records import sample_row
from methods.posttrain.rewards import RewardStats, correctness_reward
from methods.posttrain.sampling import sample, stop_token_ids
from methods.posttrain.tokens import (
    Batch,
    encode_pairs,
    entropy_from_logits,
    gather_logp,
    kl_from_logits,
    masked_mean,
    shifted_logits,
)


class SFTObjective:
    """Eq. SFT: L = -token_mean log pi_theta(a_t | s_t) over completion tokens."""

    name = "sft"

    def snapshot(self, model, batch: Batch) -> dict:
        return {}

    def loss(self, logits: torch.Tensor, batch: Batch, snap: dict):
        logp = gather_logp(logits, batch.input_ids)
        return -masked_mean(logp, batch.loss_mask), {}


class SFTKLObjective(SFTObjective):
    """SFT plus beta * KL(pi_start || pi_theta) on demonstration positions (forward KL to the
    initial model over the full vocabulary; the PSFT paper's SFT-KL baseline, whose coefficient
    and direction it does not state: our choice, beta = 0.05, methods/psft/README.md)."""

    name = "sft_kl"

    def __init__(self, ref_model, beta: float):
        if beta < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {beta}")
        self.ref, self.beta = ref_model, beta

    def snapshot(self, model, batch: Batch) -> dict:
        with torch.no_grad():
            return {"ref_logits": shifted_logits(self.ref, batch)}

    def loss(self, logits, batch, snap):
        sft, _ = super().loss(logits, batch, snap)
        kl = masked_mean(kl_from_logits(snap["ref_logits"], logits), batch.loss_mask)
        return sft + self.beta * kl, {"kl_to_ref": float(kl.detach())}


def _engine_on(engine) -> bool:
    """Whether a scale's ``engine:`` setting routes a loop through the distributed engine."""
    if engine is None:
        return False
    from methods.posttrain.engine import Engine, EngineConfig

    if isinstance(engine, Engine):
        return True
    cfg = engine if isinstance(engine, EngineConfig) else EngineConfig.from_dict(engine)
    return cfg.enabled


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


@torch.no_grad()
def eval_demo_stats(model, start_model, batch: Batch) -> dict:
    """Teacher-forced mean token entropy and KL(pi_theta || pi_start) on a fixed demo batch."""
    was = model.training
    model.eval()
    lg = shifted_logits(model, batch)
    out = {"entropy": float(masked_mean(entropy_from_logits(lg), batch.loss_mask))}
    if start_model is not None:
        lg0 = shifted_logits(start_model, batch)
        out["kl_to_start"] = float(masked_mean(kl_from_logits(lg, lg0), batch.loss_mask))
    model.train(was)
    return out


def train_demos(
    model,
    tok,
    prompts: list[str],
    completions: list[str],
    objective,
    *,
    steps: int,
    minibatch: int,
    inner_steps: int = 1,
    lr: float,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    grad_clip: float = 1.0,
    seed: int = 0,
    eval_batch: Batch | None = None,
    start_model=None,
    eval_every: int = 10,
    log: Callable[[dict], None] | None = None,
    engine: dict | None = None,
    ckpt_dir: str | Path | None = None,
    meta: dict | None = None,
) -> list[dict]:
    """Run ``steps`` optimiser steps over demonstrations; returns one log row per step.

    Every arm sees exactly ``steps * minibatch`` examples in the same order for the same seed
    (equal token budgets). ``engine`` (the scale file's ``engine:``; ``kind: accelerate``) runs
    the same loop through ``methods.posttrain.engine`` (distributed, micro-batched, checkpoints
    in ``ckpt_dir``, segments appended to ``meta``); absent, this plain loop runs."""
    if steps < 1 or minibatch < 1 or inner_steps < 1:
        raise ValueError(
            f"steps, minibatch and inner_steps must be >= 1 ({steps}, {minibatch}, {inner_steps})"
        )
    if _engine_on(engine):
        from methods.posttrain.engine import train_demos_engine

        return train_demos_engine(
            engine,
            model,
            tok,
            prompts,
            completions,
            objective,
            steps=steps,
            minibatch=minibatch,
            inner_steps=inner_steps,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            grad_clip=grad_clip,
            seed=seed,
            eval_batch=eval_batch,
            start_model=start_model,
            eval_every=eval_every,
            log=log,
            ckpt_dir=ckpt_dir,
            meta=meta,
        )
    torch.manual_seed(seed)
    rng = random.Random(seed)
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup_steps))
    model.train()
    rows: list[dict] = []
    step = 0
    while step < steps:
        k = min(inner_steps, steps - step)
        mbs = []
        for _ in range(k):
            idx = []
            for _ in range(minibatch):
                if not order:
                    order = list(range(len(prompts)))
                    rng.shuffle(order)
                idx.append(order.pop())
            mbs.append(
                encode_pairs(tok, [prompts[i] for i in idx], [completions[i] for i in idx]).to(
                    model.device
                )
            )
        snaps = [objective.snapshot(model, mb) for mb in mbs]  # pi_old: once per outer batch
        for mb, snap in zip(mbs, snaps, strict=True):
            logits = shifted_logits(model, mb)
            loss, stats = objective.loss(logits, mb, snap)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                ent = masked_mean(entropy_from_logits(logits.detach()), mb.loss_mask)
            row = {
                "step": step + 1,
                "loss": float(loss.detach()),
                "train_entropy": float(ent),
                "grad_norm": float(gnorm),
                "tokens": mb.n_tokens,
                **stats,
            }
            step += 1
            if eval_batch is not None and (step % eval_every == 0 or step == steps):
                row.update(
                    {
                        f"eval_{k}": v
                        for k, v in eval_demo_stats(model, start_model, eval_batch).items()
                    }
                )
            rows.append(row)
            if log:
                log(row)
    model.eval()
    return rows


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """GRPO advantages: reward minus its group mean, divided by the group std (+1e-4) when
    ``scale``; rewards are laid out group-contiguous (n rollouts of a prompt side by side)."""
    r = rewards.view(-1, group)
    a = r - r.mean(1, keepdim=True)
    if scale:
        a = a / (r.std(1, keepdim=True, unbiased=False) + 1e-4)
    return a.reshape(-1)


def train_grpo(
    model,
    tok,
    problems: list[dict],
    *,
    steps: int,
    prompts_per_step: int,
    n: int,
    lr: float,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    reward_fn: Callable | None = None,
    log: Callable[[dict], None] | None = None,
    stop: str = "newline",
    engine: dict | None = None,
    ckpt_dir: str | Path | None = None,
    meta: dict | None = None,
) -> tuple[list[dict], RewardStats]:
    """GRPO with a binary correctness reward, one optimiser step per rollout batch (on-policy, so
    the PPO ratio is 1 and clipping never fires), token-mean loss -A_i * log pi_theta, no KL term.
    ``reward_fn(texts, answers, stats) -> (rewards, format_fail_flags)`` defaults to correctness.
    ``stop``: rollouts end at a newline (tiny, small) or only at EOS / the template's end token
    (``"eos"``, the paper scale; ``sampling.stop_token_ids``). ``engine`` / ``ckpt_dir`` /
    ``meta``: as in :func:`train_demos`.
    """
    if n < 2:
        raise ValueError(f"GRPO needs n >= 2 rollouts per prompt, got {n}")
    if _engine_on(engine):
        from methods.posttrain.engine import train_grpo_engine

        return train_grpo_engine(
            engine,
            model,
            tok,
            problems,
            steps=steps,
            prompts_per_step=prompts_per_step,
            n=n,
            lr=lr,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            grad_clip=grad_clip,
            seed=seed,
            reward_fn=reward_fn,
            log=log,
            stop=stop,
            ckpt_dir=ckpt_dir,
            meta=meta,
        )
    reward_fn = reward_fn or correctness_reward
    stats = RewardStats()
    stop_ids = stop_token_ids(tok, stop)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rows = []
    bar = tqdm(range(steps), desc="grpo", mininterval=2.0, dynamic_ncols=True)
    for step in bar:
        chosen = [problems[rng.randrange(len(problems))] for _ in range(prompts_per_step)]
        ro = sample(
            model,
            tok,
            [p["prompt"] for p in chosen],
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed * 100003 + step,
            stop_ids=stop_ids,
        )
        answers = [chosen[i]["answer"] for i in ro.prompt_index]
        rewards, fails = reward_fn(ro.texts, answers, stats)
        r = torch.tensor(rewards, dtype=torch.float32, device=model.device)
        adv = group_advantages(r, n)
        model.train()
        logits = shifted_logits(model, ro.batch)
        logp = gather_logp(logits, ro.batch.input_ids)
        loss = -masked_mean(adv[:, None] * logp, ro.batch.loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        with torch.no_grad():
            ent = masked_mean(entropy_from_logits(logits.detach()), ro.batch.loss_mask)
        row = {
            "step": step + 1,
            "reward": float(r.mean()),
            "format_failures": int(sum(fails)),
            "truncated": int(sum(ro.truncated)),
            "entropy": float(ent),
            "length": float(ro.batch.loss_mask.sum(1).mean()),
            "loss": float(loss.detach()),
        }
        rows.append(row)
        bar.set_postfix(reward=f"{row['reward']:.2f}", refresh=False)
        if log:
            log(row)
    model.eval()
    return rows, stats


def greedy_accuracy(
    model, tok, problems: list[dict], max_new_tokens: int = 48, batch: int = 64
) -> dict:
    """Greedy exact match with the format-failure count (a quick in-loop check; the reported
    numbers come from the lm-eval suite)."""
    return greedy_scores(model, tok, problems, max_new_tokens, batch)[0]


def problem_lines(path: str | Path) -> dict[str, int]:
    """Problem id -> its line (from 0) in a problems file: the documents' ids in the samples,
    the same in every arm whatever subset of the file it evaluated."""
    ids: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                ids.setdefault(json.loads(line)["id"], i)
    return ids


def greedy_scores(
    model, tok, problems: list[dict], max_new_tokens: int, batch: int = 64
) -> tuple[dict, list[tuple[dict, str, float]]]:
    """Greedy exact match with the format-failure count, and each problem's (problem,
    completion, exact match): the per-document rows of a validation metric."""
    stats = RewardStats()
    correct, per_doc = 0.0, []
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        ro = sample(
            model, tok, [p["prompt"] for p in chunk], greedy=True, max_new_tokens=max_new_tokens
        )
        rw, _ = correctness_reward(ro.texts, [p["answer"] for p in chunk], stats)
        correct += sum(rw)
        per_doc += list(zip(chunk, ro.texts, rw, strict=True))
    acc = {"accuracy": correct / len(problems), "format_failures": stats.format_failures}
    return {**acc, "n": len(problems)}, per_doc


def valid_rows(task: str, per_doc: list, lines: dict[str, int]) -> list[dict]:
    """The per-document rows of a validation metric: doc id = the problem's line in the
    validation file (same ids across arms), so two arms' checks pair document by document."""
    return [
        sample_row(
            task,
            lines[p["id"]],
            metrics={"greedy_exact_match": float(r)},
            prompt=p["prompt"],
            target=str(p["answer"]),
            response=text,
            doc_hash=p["id"],
            family=p["family"],
        )
        for p, text, r in per_doc
    ]
