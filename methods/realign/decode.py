"""Decoding for realignment: greedy logit mixing of two paths, each with its own KV cache.

    z_t = (1 - lam) * z_U,t + lam * z_A,t,   next token = argmax z_t   (README.md, Eqs. 1, 4)

DeRa: U = the reference model, A = the aligned model (two models, 2x decode compute).
InRa: U and A are the two paths of one expanded model (``inra.AdapterPaths``), the KV cache
doubles. A single plain model decodes through ``methods.posttrain.sampling.sample``.
Prompts are left-padded; a row stops at EOS or at the first token whose text holds a newline
(the arithmetic world's completions are one line), as in ``posttrain.sampling``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from methods.posttrain.sampling import sample, stop_token_ids
from methods.realign.fusion import check_lambda, fused_logits


@dataclass
class Decoded:
    texts: list[str]  # completions, stop token excluded
    n_tokens: list[int]  # output tokens, stop token included (the rollout's length)
    truncated: list[bool]


def _left_pad(tok, prompts: list[str]):
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    L = max(len(e) for e in enc)
    ids = torch.full((len(enc), L), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(enc), L), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, L - len(e) :] = torch.tensor(e)
        att[i, L - len(e) :] = 1
    return ids, att


def _finish(tok, new: list[list[int]], stop: set[int]) -> Decoded:
    texts, lens, trunc = [], [], []
    for toks in new:
        comp, hit = [], False
        for t in toks:
            comp.append(t)
            if t in stop:
                hit = True
                break
        texts.append(tok.decode(comp[:-1] if hit else comp))
        lens.append(len(comp))
        trunc.append(not hit)
    return Decoded(texts, lens, trunc)


@torch.no_grad()
def mixed_greedy(
    path_u: tuple,
    path_a: tuple,
    lam: float,
    tok,
    prompts: list[str],
    *,
    max_new_tokens: int,
    stop_ids: list[int] | None = None,
) -> Decoded:
    """Greedy decoding of the fused logits of two paths. Each path is ``(model, before)`` where
    ``before()`` (or None) is called before every forward of that path (InRa switches paths)."""
    lam = check_lambda(lam)
    stop_ids = stop_ids if stop_ids is not None else stop_token_ids(tok)
    stop = set(stop_ids)
    ids, att = _left_pad(tok, prompts)
    B = ids.shape[0]
    paths = [path_u, path_a]
    caches: list = [None, None]
    done = torch.zeros(B, dtype=torch.bool)
    new: list[list[int]] = [[] for _ in range(B)]
    step_ids = ids
    for _ in range(max_new_tokens):
        pos = (att.cumsum(-1) - 1).clamp_min(0)[:, -step_ids.shape[1] :]
        logits = []
        for k, (model, before) in enumerate(paths):
            if before is not None:
                before()
            out = model(
                input_ids=step_ids.to(model.device),
                attention_mask=att.to(model.device),
                position_ids=pos.to(model.device),
                cache=caches[k],
                use_cache=True,
                logits_to_keep=1,
            )
            caches[k] = out.cache
            logits.append(out.logits[:, -1].float().cpu())
        z = fused_logits(logits[1], logits[0], lam)  # (1 - lam) z_U + lam z_A
        nxt = z.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
        for b in range(B):
            if not done[b]:
                new[b].append(int(nxt[b]))
                if int(nxt[b]) in stop:
                    done[b] = True
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
        att = torch.cat([att, torch.ones((B, 1), dtype=torch.long)], dim=1)
    return _finish(tok, new, stop)


def single_greedy(model, tok, prompts: list[str], *, max_new_tokens: int) -> Decoded:
    """One plain causal LM, greedy, through the shared rollout sampler (KV cache)."""
    ro = sample(model, tok, prompts, greedy=True, max_new_tokens=max_new_tokens)
    lens = [int(x) for x in ro.batch.loss_mask.sum(1).tolist()]
    return Decoded(ro.texts, lens, ro.truncated)


def batched(fn: Callable[[list[str]], Decoded], prompts: list[str], size: int) -> Decoded:
    out = Decoded([], [], [])
    for i in range(0, len(prompts), size):
        d = fn(prompts[i : i + size])
        out.texts += d.texts
        out.n_tokens += d.n_tokens
        out.truncated += d.truncated
    return out
