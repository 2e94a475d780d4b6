"""RL loops of the noisy-rewards paper (methods/noisy_rewards/README.md): PPO with a critic,
GAE, no KL, and GRPO as a named variant; rollouts, log-probs and GRPO's group advantages come from the shared
post-training layer (``methods.posttrain``).

PPO (verl defaults of the official fork): reward on the last response token, GAE with gamma and
lambda (1, 1), advantages whitened over the batch's response tokens, clipped surrogate (0.2),
entropy bonus 0.001, clipped value loss (0.5), grad clip 1, critic warm-up (actor frozen for the
first steps), no KL term. The critic is a copy of the start LM with a scalar head.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from methods.noisy_rewards.rewards import RewardFunction, scorer
from methods.posttrain.loops import group_advantages
from methods.posttrain.sampling import sample, stop_token_ids
from methods.posttrain.tokens import entropy_from_logits, gather_logp, masked_mean, shifted_logits


class Critic(nn.Module):
    """Value model: the start LM's trunk (a copy) and a zero-initialised scalar head on the last
    hidden state. ``values[b, t]`` estimates the return before emitting token t (aligned with the
    token it precedes, like ``shifted_logits``)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = copy.deepcopy(lm)
        self.lm.requires_grad_(True)
        self.head = nn.Linear(self.lm.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch) -> torch.Tensor:
        out = self.lm(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        )
        v = self.head(out.hidden_states[-1].float()).squeeze(-1)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: the sequence reward on its last response token, 0 elsewhere."""
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0]), last] = rewards
    return out * mask


def gae(
    token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over response tokens: delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum (gamma lam)^k
    delta_{t+k}; returns = A + V. Positions outside ``mask`` are skipped (V beyond the end = 0)."""
    B, T = mask.shape
    adv = torch.zeros_like(values)
    last_adv = torch.zeros(B, device=values.device)
    next_v = torch.zeros(B, device=values.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_v - values[:, t]
        a = delta + gamma * lam * last_adv
        adv[:, t] = a * m
        last_adv = torch.where(m > 0, a, last_adv)
        next_v = torch.where(m > 0, values[:, t], next_v)
    return adv, (adv + values) * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (verl ``masked_whiten``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def clipped_surrogate(logp, old_logp, adv, mask, clip: float) -> tuple[torch.Tensor, float]:
    """PPO policy loss -min(rho A, clip(rho, 1-eps, 1+eps) A), token-mean; and the clip fraction."""
    ratio = torch.exp(logp - old_logp)
    a, b = ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv
    frac = masked_mean((b < a).float(), mask)
    return -masked_mean(torch.minimum(a, b), mask), float(frac)


def clipped_value_loss(v, v_old, returns, mask, clip: float) -> torch.Tensor:
    """0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2), token-mean."""
    vc = v_old + torch.clamp(v - v_old, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((v - returns) ** 2, (vc - returns) ** 2), mask)


@torch.no_grad()
def greedy_eval(
    model,
    tok,
    problems: list[dict],
    max_new_tokens: int,
    batch: int = 100,
    *,
    stop_mode: str = "newline",
    answers: str = "arith",
) -> dict:
    """Greedy exact match on the final answer (format failures count as wrong), mean response
    length (tokens) and truncation rate. ``stop_mode`` / ``answers``: the paper scale's EOS stop
    and math-verify scorer (tiny, small: the newline stop and the arithmetic answer)."""
    score = scorer(answers)
    right = fails = trunc = 0
    length = 0.0
    stop = stop_token_ids(tok, stop_mode)
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        ro = sample(
            model,
            tok,
            [p["prompt"] for p in chunk],
            greedy=True,
            max_new_tokens=max_new_tokens,
            stop_ids=stop,
        )
        r, f = score(ro.texts, [p["answer"] for p in chunk])
        right += sum(r)
        fails += sum(f)
        trunc += sum(ro.truncated)
        length += float(ro.batch.loss_mask.sum())
    n = len(problems)
    return {
        "accuracy": right / n,
        "format_failure_rate": fails / n,
        "truncation_rate": trunc / n,
        "length": length / n,
    }


def train_rl(
    model,
    tok,
    problems: list[dict],
    valid: list[dict],
    reward: RewardFunction,
    cfg: dict,
    *,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    engine=None,
    ckpt_dir=None,
    meta: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """PPO (``cfg['algo'] == 'ppo'``) or GRPO on the arithmetic world. Returns the per-step
    training rows and the greedy evaluation rows (step 0 = the start model).

    ``engine`` (methods/posttrain/engine.py, the paper scale; PPO only) runs each step through
    ``ppo_step`` (the same GAE, whitening, value and surrogate losses of this module,
    micro-batched and distributed) and checkpoints every ``checkpoint_every`` steps in
    ``ckpt_dir``; a rerun resumes there (segments in ``meta``)."""
    algo = cfg["algo"]
    if algo not in ("ppo", "grpo"):
        raise ValueError(f"algo must be ppo or grpo, got {algo!r}")
    n, steps = int(cfg["n"]), int(cfg["steps"])
    if n < 1 or steps < 1:
        raise ValueError(f"n and steps must be >= 1 (n={n}, steps={steps})")
    if algo == "grpo" and n < 2:
        raise ValueError(f"GRPO needs n >= 2 rollouts per question, got {n}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    # the paper scale stops at EOS / the template's end and reads \boxed{} answers (config keys
    # absent at tiny and small: the newline stop and the arithmetic answer)
    stop = stop_token_ids(tok, cfg.get("stop", "newline"))
    ev = {"stop_mode": cfg.get("stop", "newline"), "answers": cfg.get("answers", "arith")}
    max_new = int(cfg["max_new_tokens"])
    actor_opt = torch.optim.AdamW(model.parameters(), lr=cfg["actor_lr"], weight_decay=0.0)
    critic = critic_opt = None
    if algo == "ppo":
        critic = Critic(model).to(model.device)
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg["critic_lr"], weight_decay=0.0)
    every = int(cfg["eval_every"])
    policy, start = model, 0
    if engine is not None:
        from methods.posttrain.engine import LoopState, _finish, _maybe_save, _start, ppo_step

        if algo != "ppo" or int(cfg.get("ppo_epochs", 1)) != 1:
            raise ValueError(
                f"engine: runs PPO with one epoch per batch only (algo={algo!r}, "
                f"ppo_epochs={cfg.get('ppo_epochs', 1)})"
            )
        model, actor_opt, critic, critic_opt = engine.prepare(model, actor_opt, critic, critic_opt)
        policy = engine.accelerator.unwrap_model(model)  # rollouts and evaluations
        state = LoopState(rng)
        start = last_saved = _start(engine, state, ckpt_dir)
    evals = [{"step": 0, **greedy_eval(policy, tok, valid, max_new, **ev)}]
    rows = []
    if start:
        rows = list(state.rows)
        evals += [
            {"step": r["step"], **{k[5:]: v for k, v in r.items() if k.startswith("eval_")}}
            for r in rows
            if any(k.startswith("eval_") for k in r)
        ]
    bar = tqdm(range(steps), desc=algo, mininterval=2.0, dynamic_ncols=True)
    for step in bar:
        if step < start:
            continue  # resumed: the checkpoint restored the rng as it was after these steps
        chosen = [problems[rng.randrange(len(problems))] for _ in range(cfg["prompts_per_step"])]
        ro = sample(
            policy,
            tok,
            [p["prompt"] for p in chosen],
            n=n,
            max_new_tokens=max_new,
            temperature=cfg["temperature"],
            seed=seed * 100003 + step,
            stop_ids=stop,
        )
        out = reward(ro.texts, [chosen[i]["answer"] for i in ro.prompt_index], n, step)
        r = torch.tensor(out["rewards"], dtype=torch.float32, device=model.device)
        mask = ro.batch.loss_mask
        if engine is not None:
            stats = ppo_step(
                engine,
                model,
                actor_opt,
                critic,
                critic_opt,
                ro.batch,
                r,
                cfg,
                update_actor=step >= int(cfg["critic_warmup"]),
            )
        else:
            stats = _plain_update(
                model, critic, actor_opt, critic_opt, ro, r, mask, cfg, algo, n, step
            )
        model.eval()
        row = {
            "step": step + 1,
            "reward": float(r.mean()),
            "train_accuracy": sum(out["correct"]) / len(out["correct"]),
            "format_failure_rate": sum(out["fails"]) / len(out["fails"]),
            "flipped_groups": sum(out["flips"]),
            "length": float(mask.sum(1).mean()),
            "truncation_rate": sum(ro.truncated) / len(ro.truncated),
            **stats,
        }
        rows.append(row)
        if (step + 1) % every == 0 or step + 1 == steps:
            evals.append({"step": step + 1, **greedy_eval(policy, tok, valid, max_new, **ev)})
            row.update({f"eval_{k}": v for k, v in evals[-1].items() if k != "step"})
        bar.set_postfix(reward=f"{row['reward']:.2f}", refresh=False)
        if log:
            log(row)
        if engine is not None:
            state.rows = rows
            last_saved = _maybe_save(engine, state, ckpt_dir, start, step + 1, last_saved)
    if engine is not None:
        _finish(state, meta, start, steps)
    return rows, evals


def _plain_update(model, critic, actor_opt, critic_opt, ro, r, mask, cfg, algo, n, step) -> dict:
    """One PPO (or GRPO) update of the plain loop (tiny, small) on the step's rollouts."""
    clip, ent_coef = cfg["clip_ratio"], cfg["entropy_coef"]
    with torch.no_grad():
        old_logp = gather_logp(shifted_logits(model, ro.batch), ro.batch.input_ids)
        if algo == "ppo":
            v_old = critic(ro.batch) * mask
            adv, returns = gae(
                terminal_rewards(r, mask),
                v_old,
                mask,
                cfg["gamma"],
                cfg["lam"],
            )
            adv = masked_whiten(adv, mask)
        else:
            adv = group_advantages(r, n)[:, None] * mask
    model.train()
    stats = {}
    # ppo_epochs has no schema default: the key would enter every run's record config
    for _ in range(int(cfg.get("ppo_epochs", 1))):
        if algo == "ppo":
            critic.train()
            v = critic(ro.batch)
            vloss = clipped_value_loss(v, v_old, returns, mask, cfg["value_clip"])
            critic_opt.zero_grad(set_to_none=True)
            vloss.backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg["grad_clip"])
            critic_opt.step()
            stats["value_loss"] = float(vloss.detach())
        if algo == "grpo" or step >= int(cfg["critic_warmup"]):
            logits = shifted_logits(model, ro.batch)
            logp = gather_logp(logits, ro.batch.input_ids)
            pg, clipfrac = clipped_surrogate(logp, old_logp, adv, mask, clip)
            ent = masked_mean(entropy_from_logits(logits), mask)
            loss = pg - ent_coef * ent
            actor_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            actor_opt.step()
            stats.update(pg_loss=float(pg.detach()), clip_frac=clipfrac)
    return stats
