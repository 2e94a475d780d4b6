"""STEER: contrastive steering vectors (CAA / ActAdd, S1) and directional ablation (S2).

S1 and S2 are the equations of methods/mi_steer/README.md ("Steer").
"""

from __future__ import annotations

import copy
import io
import os

import torch
import torch.nn.functional as F

from methods.interp.hooks import HookedLM, Site, add_vector, project_out


def mean_difference(
    lm: HookedLM, pos: torch.Tensor, neg: torch.Tensor, site: Site, position: int = -1
) -> torch.Tensor:
    """v_l = mean_i x^l(pos+_i) - mean_i x^l(pos-_i) at one token position (S1)."""
    for name, ids in (("positive", pos), ("negative", neg)):
        if ids.ndim != 2 or ids.shape[0] == 0:
            raise ValueError(f"empty prompt set: the {name} prompts of the contrast are empty")
    _, cp = lm.run(pos, read=[site])
    _, cn = lm.run(neg, read=[site])
    return cp[site][:, position].mean(0) - cn[site][:, position].mean(0)


def steering_edits(
    lm: HookedLM, v: torch.Tensor, alpha: float, layer: int, start: int | None = None
) -> list:
    """x^l_t <- x^l_t + alpha v at the output of layer l (S1): every position when ``start`` is
    None, else positions t >= ``start`` only (CAA: the positions after the prompt, i.e. the
    generated ones; ``start`` = the prompt length)."""
    lm.check_vector(v)
    if start is None:
        return [(lm.site("resid_post", layer), add_vector(v, alpha))]
    if start < 0:
        raise ValueError(f"steering start position {start} is negative")

    def fn(x: torch.Tensor) -> torch.Tensor:
        w = v.to(x.device, x.dtype)
        x = x.clone()
        x[:, start:] = x[:, start:] + alpha * w
        return x

    return [(lm.site("resid_post", layer), fn)]


def steering_file(layer: int, v: torch.Tensor, alpha: float) -> dict:
    """S1 as the steer file of lm-eval's ``steered`` model (lm_eval/models/hf_steered.py, 0.4.13):
    ``{hookpoint: {steering_vector, steering_coefficient, action, bias, head_index}}``.

    The hookpoint is named below ``model.base_model`` (the decoder stack), so ``layers.<l>`` is
    the output of decoder layer l: our ``resid_post`` site, where :func:`steering_edits` adds
    ``alpha v`` at every position; lm-eval's ``add`` action adds ``coefficient * vector`` there.
    """
    if v.ndim != 1:
        raise ValueError(f"steering vector has shape {tuple(v.shape)}; expected one dimension")
    return {
        f"layers.{int(layer)}": {
            "steering_vector": v.detach().float().cpu().clone(),
            "steering_coefficient": float(alpha),
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    }


def save_steering_file(path: str | os.PathLike, layer: int, v: torch.Tensor, alpha: float):
    """Write :func:`steering_file` with ``torch.save`` (lm-eval loads ``.pt`` / ``.pth``)."""
    from claimbench.io import atomic_write_bytes

    if not str(path).endswith((".pt", ".pth")):
        raise ValueError(f"steer file {path}: lm-eval's steered model reads only .pt / .pth")
    buf = io.BytesIO()
    torch.save(steering_file(layer, v, alpha), buf)
    return atomic_write_bytes(path, buf.getvalue())


def ablation_edits(lm: HookedLM, r: torch.Tensor) -> list:
    """x <- x - r_hat r_hat^T x on every write into the residual stream (embedding, attn, MLP), S2.

    Projecting every write keeps r_hat out of the residual stream at every layer and position.
    """
    lm.check_vector(r, "ablation direction")
    fn = project_out(r)
    edits = [(lm.site("embed"), fn)]
    for layer in range(lm.n_layers):
        edits += [(lm.site("attn", layer), fn), (lm.site("mlp", layer), fn)]
    return edits


@torch.no_grad()
def orthogonalize_weights(model: torch.nn.Module, r: torch.Tensor) -> torch.nn.Module:
    """A copy with W_out <- (I - r_hat r_hat^T) W_out for W_E, every o_proj and down_proj (S2).

    A tied unembedding is untied first: it reads the residual stream, it does not write to it.
    """
    lm = HookedLM(model)
    lm.check_vector(r, "ablation direction")
    m = copy.deepcopy(model)
    if r.norm() == 0:
        return m
    w = next(m.parameters())
    rh = (r / r.norm()).to(w.device, w.dtype)
    proj = torch.eye(rh.shape[0], dtype=rh.dtype, device=rh.device) - torch.outer(rh, rh)
    if m.lm_head.weight is m.model.embed_tokens.weight:
        m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())
        m.config.tie_word_embeddings = False
    emb = m.model.embed_tokens.weight
    emb.copy_(emb @ proj)  # rows are the written vectors
    for layer in m.model.layers:
        for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
            lin.weight.copy_(proj @ lin.weight)
            if lin.bias is not None:
                lin.bias.copy_(proj @ lin.bias)
    return m


def random_like(v: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with the norm of ``v`` (the control of S1/S2), on ``v``'s device.

    Drawn by a CPU generator and then moved, so that a seed gives the same direction on every
    device.
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device)
    return u / u.norm() * v.norm()


@torch.no_grad()
def generate(lm: HookedLM, ids: torch.Tensor, n_new: int, edits=()) -> torch.Tensor:
    """Greedy decoding of ``n_new`` tokens with the edits applied at every step (no KV cache)."""
    out = ids
    for _ in range(n_new):
        logits, _ = lm.run(out, edits=edits)
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return out[:, ids.shape[1] :]


@torch.no_grad()
def base_log_probs(lm: HookedLM, ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities of the unedited model (``side_effects``'s reference)."""
    base, _ = lm.run(ids)
    return F.log_softmax(base[:, :-1], -1)


@torch.no_grad()
def side_effects(
    lm: HookedLM, ids: torch.Tensor, edits, base_lp: torch.Tensor | None = None
) -> dict:
    """KL(p_base || p_edited) per token and perplexity (base and edited) on neutral windows.
    ``base_lp`` (from ``base_log_probs`` on the same ids) saves the reference forward pass when
    many edits are scored against one model."""
    lb = base_lp if base_lp is not None else base_log_probs(lm, ids)
    new, _ = lm.run(ids, edits=edits)
    ln = F.log_softmax(new[:, :-1], -1)
    tgt = ids[:, 1:, None]
    kl = (lb.exp() * (lb - ln)).sum(-1).mean()
    nll_b, nll_n = -lb.gather(-1, tgt).mean(), -ln.gather(-1, tgt).mean()
    return {"kl": float(kl), "ppl_base": float(nll_b.exp()), "ppl": float(nll_n.exp())}


def select_direction(
    candidates: list[dict],
    n_layers: int,
    kl_max: float = 0.1,
    max_depth: float = 0.8,
    induce_min: float | None = None,
) -> dict | None:
    """Arditi et al. selection: lowest behaviour score under ablation among candidates whose
    ablation keeps KL on harmless prompts < kl_max and whose layer < max_depth * n_layers;
    with ``induce_min`` also those whose addition raises the behaviour score on harmless prompts
    above it (their induce filter, score > 0: adding the direction must induce the behaviour)."""
    ok = [
        c
        for c in candidates
        if c["kl"] < kl_max
        and c["layer"] < max_depth * n_layers
        and (induce_min is None or c["induce"] > induce_min)
    ]
    return min(ok, key=lambda c: c["score"]) if ok else None
