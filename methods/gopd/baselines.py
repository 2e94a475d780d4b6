"""The paper's baselines (Table 1 and Table 3; methods/gopd/README.md), on the same footing as
the G-OPD loop.

- ``expo_weights``: ExPO weight extrapolation. Average the teacher weights, then move away
  from the student: theta = theta_Tbar + alpha (theta_Tbar - theta_student) (Zheng et al., ACL
  2025, as the G-OPD paper applies it; alpha tuned in {0.25, 0.5}). Training-free.
- ``train_teacher_sft``: SFT on teacher trajectories (off-policy distillation). Per step the
  same number of prompts as a G-OPD step is drawn with the same seeded generator, the (routed)
  teacher samples one completion each at T = 1, top-p 1, and the student takes one optimiser
  step on -token_mean log pi_theta over the teacher's completion tokens (prompt and padding
  masked, the teacher's stop token included). Same optimiser, lr, clip and number of steps as
  the matching G-OPD run; only the source of the tokens and the loss differ. Samples are not
  filtered for correctness (the paper does not say it filters).
"""

from __future__ import annotations

import math
import random

import torch
from tqdm.auto import tqdm

from methods.posttrain.loops import SFTObjective
from methods.posttrain.rewards import RewardStats, correctness_reward
from methods.posttrain.sampling import sample, stop_token_ids
from methods.posttrain.tokens import entropy_from_logits, masked_mean, pad_rows, shifted_logits

ALPHA_MAX = 4.0


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha) or not 0.0 <= alpha <= ALPHA_MAX:
        raise ValueError(f"ExPO extrapolation alpha must be in [0, {ALPHA_MAX}], got {alpha}")
    return alpha


@torch.no_grad()
def expo_weights(student: dict, teachers: list[dict], alpha: float) -> dict:
    """ExPO: theta_Tbar + alpha * (theta_Tbar - theta_student), tensor by tensor."""
    alpha = check_alpha(alpha)
    if not teachers:
        raise ValueError("ExPO needs at least one teacher")
    for i, t in enumerate(teachers):
        if set(t) != set(student):
            raise ValueError(f"ExPO: teacher {i} has different parameter names than the student")
        for k, v in t.items():
            if v.shape != student[k].shape:
                raise ValueError(
                    f"ExPO: teacher {i} parameter {k} has shape {tuple(v.shape)}, "
                    f"the student's is {tuple(student[k].shape)}"
                )
    out = {}
    for k, s in student.items():
        if not torch.is_floating_point(s):
            out[k] = s.clone()
            continue
        mean = torch.stack([t[k].to(s.dtype) for t in teachers]).mean(0)
        out[k] = mean + alpha * (mean - s)
    return out


def _routed_samples(teachers: dict, tok, chosen: list[dict], routes: dict | None, cfg, seed):
    """One completion per prompt from the prompt's teacher; rows back in prompt order."""
    names = [routes.get(p["family"], "teacher") if routes else next(iter(teachers)) for p in chosen]
    rows: list[list[int] | None] = [None] * len(chosen)
    masks: list[list[int] | None] = [None] * len(chosen)
    texts: list[str] = [""] * len(chosen)
    for name in sorted(set(names)):
        idx = [i for i, n in enumerate(names) if n == name]
        ro = sample(
            teachers[name],
            tok,
            [chosen[i]["prompt"] for i in idx],
            n=1,
            max_new_tokens=cfg["max_new_tokens"],
            temperature=cfg["temperature"],
            seed=seed,
            stop_ids=cfg["_stop"],
        )
        for j, i in enumerate(idx):
            n_tok = int(ro.batch.attention_mask[j].sum())
            rows[i] = ro.batch.input_ids[j, :n_tok].tolist()
            masks[i] = ro.batch.loss_mask[j, :n_tok].long().tolist()
            texts[i] = ro.texts[j]
    return pad_rows(rows, masks, tok.pad_token_id), texts, names


def train_teacher_sft(
    student, tok, teachers: dict, problems: list[dict], cfg: dict, seed: int, routes=None
):
    """SFT on teacher samples drawn on the fly; one log row per optimiser step."""
    cfg = {**cfg, "_stop": stop_token_ids(tok)}
    rng = random.Random(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg["lr"], weight_decay=0.0)
    obj = SFTObjective()
    stats = RewardStats()
    rows = []
    for step in tqdm(range(cfg["steps"]), desc="teacher-sft", mininterval=2.0, dynamic_ncols=True):
        chosen = [problems[rng.randrange(len(problems))] for _ in range(cfg["prompts_per_step"])]
        b, texts, _ = _routed_samples(teachers, tok, chosen, routes, cfg, seed * 100003 + step)
        b = b.to(student.device)
        student.train()
        logits = shifted_logits(student, b)
        loss, _ = obj.loss(logits, b, {})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # not a schema default: the key would enter every run's record config (its run id)
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.get("grad_clip", 1.0))
        opt.step()
        rewards, fails = correctness_reward(texts, [p["answer"] for p in chosen], stats)
        with torch.no_grad():
            rows.append(
                {
                    "step": step + 1,
                    "reward": sum(rewards) / len(rewards),  # the teacher samples' correctness
                    "format_failures": int(sum(fails)),
                    "entropy": float(
                        masked_mean(entropy_from_logits(logits.detach()), b.loss_mask)
                    ),
                    "length": float(b.loss_mask.sum(1).mean()),
                    "loss": float(loss.detach()),
                }
            )
    student.eval()
    return rows, stats
