"""Batches of (prompt, completion) token sequences and per-token quantities under a model.

Layout: right-padded ``input_ids``; ``loss_mask[b, t]`` is 1 where token ``t`` of row ``b`` is a
completion token (prompt and padding are 0). Per-token quantities are aligned with the token they
score: ``logp[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` (position 0 is never scored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    loss_mask: torch.Tensor  # (B, T) float: 1 on completion tokens

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx) -> Batch:
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.loss_mask[idx])

    def to(self, device) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device)
        )

    @property
    def n_tokens(self) -> int:
        return int(self.loss_mask.sum().item())


def encode_pairs(tok, prompts: list[str], completions: list[str], add_eos: bool = True) -> Batch:
    """Tokenize prompt and completion separately (so the boundary is exact), append EOS to the
    completion, right-pad with the pad id."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    rows, masks = [], []
    for p, c in zip(prompts, completions, strict=True):
        pi = tok(p, add_special_tokens=False)["input_ids"]
        ci = tok(c, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if add_eos else [])
        rows.append(pi + ci)
        masks.append([0] * len(pi) + [1] * len(ci))
    return pad_rows(rows, masks, tok.pad_token_id)


def pad_rows(rows: list[list[int]], masks: list[list[int]], pad_id: int) -> Batch:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    lm = torch.zeros((len(rows), T), dtype=torch.float32)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
        lm[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return Batch(ids, att, lm)


def shifted_logits(model, batch: Batch) -> torch.Tensor:
    """Logits aligned with the scored token: out[b, t] predicts input_ids[b, t] (t >= 1);
    out[:, 0] is zeros (never scored because a prompt always precedes the completion)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logits = logits.float()  # per-token math in float32, also for a bfloat16 / float16 model
    pad = torch.zeros_like(logits[:, :1])
    return torch.cat([pad, logits[:, :-1]], dim=1)


def gather_logp(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] per position."""
    return torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def token_logprobs(model, batch: Batch) -> torch.Tensor:
    return gather_logp(shifted_logits(model, batch), batch.input_ids)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy (nats) of softmax(logits)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_from_logits(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-position full-vocabulary KL(p || q) in nats."""
    lp = torch.log_softmax(logits_p, dim=-1)
    lq = torch.log_softmax(logits_q, dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean over the mask (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


@torch.no_grad()
def per_token_stats(models: dict, batch: Batch) -> dict[str, torch.Tensor]:
    """Per-token log-prob of the sequence's tokens and entropy under each named model, and the
    full-vocabulary KL of every model to the first one (``kl_<name>`` = KL(first || name))."""
    out: dict[str, torch.Tensor] = {}
    first_logits = None
    for name, model in models.items():
        lg = shifted_logits(model, batch)
        out[f"logp_{name}"] = gather_logp(lg, batch.input_ids)
        out[f"entropy_{name}"] = entropy_from_logits(lg)
        if first_logits is None:
            first_logits = lg
        else:
            out[f"kl_{name}"] = kl_from_logits(first_logits, lg)
    return out
