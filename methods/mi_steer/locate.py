"""LOCATE: activation patching (L1), attribution patching (L2), logit/tuned lens (L3), linear
probes (L4); the equations are those of methods/mi_steer/README.md ("Locate")."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from methods.interp.hooks import HookedLM, Site, patch_from


def logit_diff(logits: torch.Tensor, a_c: torch.Tensor, a_r: torch.Tensor) -> torch.Tensor:
    """LD = logit(a_c) - logit(a_r) at the final position, one value per prompt (L1 metric)."""
    last = logits[:, -1]
    return last.gather(1, a_c[:, None])[:, 0] - last.gather(1, a_r[:, None])[:, 0]


def normalised_effect(m_patched: float, m_r: float, m_c: float) -> float:
    """NE = (m_patched - m_r) / (m_c - m_r): 1 = fully restored, 0 = no effect (L1)."""
    return (m_patched - m_r) / (m_c - m_r)


def _check_pairs(clean: torch.Tensor, corrupt: torch.Tensor) -> None:
    if clean.numel() == 0 or clean.shape[0] == 0:
        raise ValueError(
            "empty prompt set: activation patching needs at least one clean/corrupted pair"
        )
    if clean.shape != corrupt.shape:
        raise ValueError(
            f"clean and corrupted prompts must have equal token lengths for patching, got shapes "
            f"{tuple(clean.shape)} and {tuple(corrupt.shape)}"
        )


def patch_sites(lm: HookedLM, kind: str) -> list[Site]:
    """Rows of a patching heatmap: residual = embed + resid_post of every layer; else per layer."""
    if kind == "resid":
        return [lm.site("embed")] + [lm.site("resid_post", lyr) for lyr in range(lm.n_layers)]
    return [lm.site(kind, lyr) for lyr in range(lm.n_layers)]


@torch.no_grad()
def activation_patching(
    lm: HookedLM,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    a_c: torch.Tensor,
    a_r: torch.Tensor,
    kind: str,
    *,
    mode: str = "denoise",
) -> dict:
    """Per-site, per-position patching effects for ``kind`` in resid/attn/mlp/head.

    denoise: run the corrupted prompt, overwrite one activation with its clean value;
    effect = (m_patched - m_r) / (m_c - m_r). noise: run the clean prompt with the corrupted value;
    effect = (m_c - m_patched) / (m_c - m_r) (1 = the site is necessary). Ratios of means over
    pairs; ``per_pair`` keeps m_patched per prompt for bootstrap CIs and paired checks.
    Heads: ``ne`` has shape (layers, heads, positions), ``ne_all_pos`` patches a head everywhere.
    """
    _check_pairs(clean, corrupt)
    if mode not in ("denoise", "noise"):
        raise ValueError(f"patching mode {mode!r} is not 'denoise' or 'noise'")
    sites = patch_sites(lm, kind)
    logits_c, cache_c = lm.run(clean, read=sites)
    logits_r, cache_r = lm.run(corrupt, read=sites)
    m_c, m_r = logit_diff(logits_c, a_c, a_r), logit_diff(logits_r, a_c, a_r)
    target, source = (corrupt, cache_c) if mode == "denoise" else (clean, cache_r)
    T = clean.shape[1]
    heads = range(lm.n_heads) if kind == "head" else [None]
    per_pair = torch.zeros(len(sites), len(heads), T, clean.shape[0], device=clean.device)
    all_pos = torch.zeros(len(sites), len(heads), clean.shape[0], device=clean.device)
    for i, s in enumerate(sites):
        for j, h in enumerate(heads):
            index = () if h is None else (h,)
            for t in range(T):
                logits, _ = lm.run(target, edits=[(s, patch_from(source[s], [t], index))])
                per_pair[i, j, t] = logit_diff(logits, a_c, a_r)
            if h is not None:
                logits, _ = lm.run(target, edits=[(s, patch_from(source[s], None, index))])
                all_pos[i, j] = logit_diff(logits, a_c, a_r)
    mc, mr = float(m_c.mean()), float(m_r.mean())
    mp = per_pair.mean(-1)
    if mode == "denoise":
        ne, ne_all = (mp - mr) / (mc - mr), (all_pos.mean(-1) - mr) / (mc - mr)
    else:
        ne, ne_all = (mc - mp) / (mc - mr), (mc - all_pos.mean(-1)) / (mc - mr)
    out = {
        "sites": [str(s) for s in sites],
        "m_c": m_c,
        "m_r": m_r,
        "per_pair": per_pair if kind == "head" else per_pair[:, 0],
        "ne": ne if kind == "head" else ne[:, 0],
    }
    if kind == "head":
        out["ne_all_pos"] = ne_all
        out["per_pair_all_pos"] = all_pos
    return out


@torch.no_grad()
def patch_heads_together(
    lm: HookedLM,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    a_c: torch.Tensor,
    a_r: torch.Tensor,
    layer: int,
    heads: list[int],
) -> float:
    """Denoising NE of a set of heads of one layer patched together at every position: run the
    corrupted prompt with those heads' outputs (o_proj input) taken from the clean run (L1)."""
    _check_pairs(clean, corrupt)
    if not heads:
        raise ValueError("patch_heads_together needs at least one head")
    for h in heads:
        lm.check_head(h)
    site = lm.site("head", layer)
    logits_c, cache_c = lm.run(clean, read=[site])
    logits_r, _ = lm.run(corrupt)
    mc = float(logit_diff(logits_c, a_c, a_r).mean())
    mr = float(logit_diff(logits_r, a_c, a_r).mean())
    logits, _ = lm.run(corrupt, edits=[(site, patch_from(cache_c[site], None, (list(heads),)))])
    return normalised_effect(float(logit_diff(logits, a_c, a_r).mean()), mr, mc)


def attribution_patching(
    lm: HookedLM,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    a_c: torch.Tensor,
    a_r: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """AtP(z) = (z_c - z_r) . dm/dz |_{x_r}, summed over the activation's width, mean over pairs.

    Returns the same layout as ``activation_patching``'s ``ne`` before normalisation (L2):
    (sites, positions), or (layers, heads, positions) for heads; in units of the metric m.
    """
    _check_pairs(clean, corrupt)
    sites = patch_sites(lm, kind)
    _, cache_c = lm.run(clean, read=sites)
    logits_r, cache_r = lm.run(corrupt, read=sites, grad=True)
    logit_diff(logits_r, a_c, a_r).mean().backward()
    rows = []
    for s in sites:
        z_r = cache_r[s]
        g = z_r.grad
        d = (cache_c[s] - z_r.detach()) * g
        rows.append(d.sum(-1).mean(0).transpose(0, 1) if kind == "head" else d.sum(-1).mean(0))
    lm.model.zero_grad(set_to_none=True)
    return torch.stack(rows).detach()


def topk_overlap(a, b, k: int) -> float:
    ia = set(np.argsort(-np.abs(np.ravel(a)))[:k].tolist())
    ib = set(np.argsort(-np.abs(np.ravel(b)))[:k].tolist())
    return len(ia & ib) / k


def bootstrap_ci(
    values: np.ndarray, stat, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(values)
    boots = [stat(values[rng.integers(0, n, n)]) for _ in range(n_boot)]
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


# ---------------------------------------------------------------------- logit lens (L3)


@torch.no_grad()
def logit_lens(lm: HookedLM, ids: torch.Tensor) -> list[torch.Tensor]:
    """p_l = softmax(W_U FinalNorm(x^l)) for x^0 = embeddings and x^l = output of layer l (logits)."""
    sites = patch_sites(lm, "resid")
    _, cache = lm.run(ids, read=sites)
    return [lm.logits_of_resid(cache[s]) for s in sites]


def lens_metrics(
    lens_logits: torch.Tensor, final_logits: torch.Tensor, target: torch.Tensor
) -> dict:
    """Target prob / rank, top-1 agreement with the final layer and KL(p_L || p_l), per token mean."""
    lp = F.log_softmax(lens_logits.float(), -1)
    lq = F.log_softmax(final_logits.float(), -1)
    tgt = lp.gather(-1, target[..., None])[..., 0]
    rank = (lp > tgt[..., None]).sum(-1).float()
    return {
        "p_target": float(tgt.exp().mean()),
        "rank_target": float(rank.mean()),
        "top1_agree": float((lp.argmax(-1) == lq.argmax(-1)).float().mean()),
        "kl_to_final": float((lq.exp() * (lq - lp)).sum(-1).mean()),
    }


class TunedLens(torch.nn.Module):
    """One affine translator per residual site, init identity (Belrose et al. 2023)."""

    def __init__(self, n_sites: int, d: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(d).repeat(n_sites, 1, 1))
        self.bias = torch.nn.Parameter(torch.zeros(n_sites, d))

    def forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight[i].T + self.bias[i]


def train_tuned_lens(
    lm: HookedLM, ids: torch.Tensor, *, steps: int, lr: float, seed: int
) -> TunedLens:
    """Minimise KL(p_L || softmax(W_U FinalNorm(A_l x^l + b_l))) for every site; model frozen."""
    torch.manual_seed(seed)
    sites = patch_sites(lm, "resid")
    with torch.no_grad():
        logits, cache = lm.run(ids, read=sites)
        lq = F.log_softmax(logits, -1)
    lens = TunedLens(len(sites), lm.d_model).to(lm.device, lm.dtype)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            loss = 0.0
            for i, s in enumerate(sites):
                lp = F.log_softmax(lm.logits_of_resid(lens(i, cache[s])), -1)
                loss = loss + (lq.exp() * (lq - lp)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p in lm.model.parameters():
            p.requires_grad_(True)
    return lens


# ---------------------------------------------------------------------- probes (L4)


@torch.no_grad()
def residual_features(
    lm: HookedLM, prompts: list[torch.Tensor], position: int = -1
) -> torch.Tensor:
    """(sites, N, d): the residual stream at ``position`` for every prompt (embed + every layer)."""
    if not prompts:
        raise ValueError("empty prompt set: probing needs at least one prompt")
    sites = patch_sites(lm, "resid")
    feats = []
    for ids in prompts:
        _, cache = lm.run(ids[None], read=sites)
        feats.append(torch.stack([cache[s][0, position] for s in sites]))
    return torch.stack(feats, 1)


def probe_accuracy(x_train, y_train, x_test, y_test, seed: int = 0) -> float:
    """L2 logistic regression, C chosen by 3-fold CV on the train split; held-out accuracy."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x_train)
    clf = LogisticRegressionCV(
        Cs=[0.01, 0.1, 1.0, 10.0],
        cv=3,
        max_iter=2000,
        random_state=seed,
        l1_ratios=(0.0,),  # plain L2, said explicitly (scikit-learn 1.10 changes the default)
        scoring="accuracy",
        use_legacy_attributes=False,
    )
    clf.fit(sc.transform(x_train), y_train)
    return float(clf.score(sc.transform(x_test), y_test))


def mass_mean_accuracy(x_train, y_train, x_test, y_test) -> float:
    """Difference-of-means direction, threshold at the midpoint of the class means (Marks & Tegmark)."""
    mu1, mu0 = x_train[y_train == 1].mean(0), x_train[y_train == 0].mean(0)
    w = mu1 - mu0
    thr = (mu1 + mu0) @ w / 2
    return float((((x_test @ w) > thr).astype(int) == y_test).mean())
