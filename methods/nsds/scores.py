"""NSDS: Numerical & Structural Dual-Sensitivity layer scores (arXiv 2603.17354).

Everything here reads weights only (no data, no forward pass). Equation tags ``(1)``-``(8)`` are
the numbered equations of methods/nsds/README.md, and ``defect N`` its list of released-code
defects: the paper body was not retrievable, so the formulas are those of the paper's overview
figure and of its official code (github.com/rattlesnakey/NSDS, ``metrics/nsds.py``).
SVDs and kurtoses run per matrix in float64 whatever the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

ROLES = ("qk", "ov", "gate", "up", "down")  # README eq. (1): the five operational roles
DETECTORS = ("qk", "gate", "up")
WRITERS = ("ov", "down")
PROJECTIONS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
MAD_C_PAPER = 1.4826  # eq. (7), overview figure: consistent estimator of sigma
MAD_C_CODE = 1.0  # eq. (7), released code
EPS = 1e-12


class NSDSInputError(ValueError):
    """A model or option NSDS cannot score (names the offending value)."""


@dataclass(frozen=True)
class NSDSOptions:
    """Every constant of the method; the defaults are the paper's (README defects 1-6 fixed)."""

    energy: float = 0.99  # eq. (3) energy threshold (code helper is named "top90")
    mad_c: float = MAD_C_PAPER  # eq. (7) / README defect 4
    temperature: float = 1.0  # eq. (7) sigmoid temperature T
    eps: float = EPS
    soft_or: str = "geometric"  # eq. (8): "geometric" (code) or "product" (classical 1 - prod(1-p))
    normalizer: str = "mad"  # ablation: "zscore" instead of MAD
    aggregate: str = "soft_or"  # ablation: "mean" instead of Soft-OR
    aspects: tuple[str, ...] = ("nv", "se")  # ablations: ("nv",) NV only, ("se",) SE only
    role_reweighting: bool = True  # ablation: beta == 1
    roles: str = "five"  # ablation: "seven" = the 7 projections treated alike (NV + plain SE)
    faithful_to_code: bool = False  # reproduce the released code's defects (README defects 1-3)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["aspects"] = list(self.aspects)
        return d


def options_from(config: dict | None) -> NSDSOptions:
    """Options from a config mapping; ``faithful_to_code`` also switches to the code's constants."""
    config = dict(config or {})
    if "aspects" in config:
        config["aspects"] = tuple(config["aspects"])
    if config.get("faithful_to_code"):
        config.setdefault("mad_c", MAD_C_CODE)
    unknown = set(config) - set(NSDSOptions.__dataclass_fields__)
    if unknown:
        raise NSDSInputError(f"unknown NSDS option(s): {sorted(unknown)}")
    opts = NSDSOptions(**config)
    for key, allowed in (
        ("soft_or", ("geometric", "product")),
        ("normalizer", ("mad", "zscore")),
        ("aggregate", ("soft_or", "mean")),
        ("roles", ("five", "seven")),
    ):
        if getattr(opts, key) not in allowed:
            raise NSDSInputError(
                f"NSDS option {key}={getattr(opts, key)!r}: expected one of {allowed}"
            )
    if not opts.aspects or set(opts.aspects) - {"nv", "se"}:
        raise NSDSInputError(
            f"NSDS option aspects={list(opts.aspects)}: expected a subset of [nv, se]"
        )
    if not 0.0 < opts.energy <= 1.0:
        raise NSDSInputError(f"NSDS option energy={opts.energy}: expected 0 < energy <= 1")
    return opts


# --------------------------------------------------------------------------------------------
# README eq. (2): numerical vulnerability
# --------------------------------------------------------------------------------------------


def excess_kurtosis(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Fisher excess kurtosis with population moments: E[(x-mu)^4] / E[(x-mu)^2]^2 - 3 (eq. 2).

    Over all entries (``dim=None``) or along ``dim`` (one value per vector). A constant input has
    no defined kurtosis; it gives 0 here (no tail at all, treated as not vulnerable).
    """
    x = x.detach().double()
    if dim is None:
        x = x.reshape(-1)
        dim = 0
    m = x - x.mean(dim=dim, keepdim=True)
    m2 = (m**2).mean(dim=dim)
    m4 = (m**4).mean(dim=dim)
    safe = m2 > 0
    out = torch.where(safe, m4 / torch.where(safe, m2, torch.ones_like(m2)) ** 2 - 3.0, 0 * m2)
    return out


# --------------------------------------------------------------------------------------------
# README eqs. (3)-(6): structural expressiveness
# --------------------------------------------------------------------------------------------


def energy_rank(sigma: torch.Tensor, energy: float = 0.99) -> int:
    """Number of kept singular triplets (eq. 3), as the released code counts them.

    ``searchsorted(cumsum(sigma^2), energy * total) + 1``, then at least 2 and at most len(sigma).
    """
    e = sigma.double() ** 2
    cum = torch.cumsum(e, 0)
    k = int(torch.searchsorted(cum, energy * cum[-1]).item()) + 1
    return min(max(k, 2), len(sigma))


def effective_rank(s: torch.Tensor, eps: float = EPS) -> float:
    """ER = exp(-sum p_i log p_i), p_i = s_i / sum s (eq. 6)."""
    s = s.double()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    return float(torch.exp(-(p * torch.log(p + eps)).sum()))


def capacity_score(s: torch.Tensor, eps: float = EPS) -> float:
    """SE = (sum_i s_i) / ER(s) with s_i = sigma_i * beta_i (eq. 6)."""
    s = s.double()
    if len(s) == 0 or s.sum() <= 0:
        return 0.0
    return float(s.sum()) / effective_rank(s, eps)


def unembedding_subspace(w_u: torch.Tensor, energy: float = 0.99) -> torch.Tensor:
    """P in R^{d x r}: right singular vectors of W_U covering ``energy`` (eq. 5, writing density)."""
    _, s, vh = torch.linalg.svd(w_u.double(), full_matrices=False)
    return vh.T[:, : energy_rank(s, energy)]


def unembedding_stats(p_unembed: torch.Tensor, wd_betas, tied: bool) -> dict:
    """How much writing density (eq. 5) can tell writers apart: r/d of the unembedding subspace
    P (r/d = 1 when W_U needs every direction of the residual stream for ``energy``: then
    ``‖Pᵀu‖ = 1`` for every unit u and β_WD ≡ 1 carries nothing) and the spread of the β_WD
    actually used over every kept writer direction (OV circuits and down_proj)."""
    d, r = p_unembed.shape
    b = np.asarray(list(wd_betas), dtype=np.float64)
    return {
        "rank": int(r),
        "dim": int(d),
        "rank_ratio": r / d,
        "tied": bool(tied),
        "wd_beta_mean": float(b.mean()) if b.size else None,
        "wd_beta_min": float(b.min()) if b.size else None,
        "wd_beta_max": float(b.max()) if b.size else None,
        "wd_beta_n": int(b.size),
    }


def se_score(
    w: torch.Tensor,
    role: str,
    opts: NSDSOptions,
    p_unembed: torch.Tensor | None = None,
    notes: list | None = None,
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    wd_betas: list | None = None,
) -> float:
    """Role-aware structural expressiveness of one matrix (eqs. 3-6). ``factors`` = (A, B) with
    ``w = A Bᵀ`` of rank r: the SVD is taken from the factors (:func:`factor_svd`). The
    writing-density weights of a writer role are appended to ``wd_betas`` when given."""
    if factors is not None:
        u, s, vh = factor_svd(*factors)
    else:
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    k = energy_rank(s, opts.energy)
    s_k, u_k, v_k = s[:k], u[:, :k], vh.T[:, :k]
    if not opts.role_reweighting or role == "plain":
        beta = torch.ones_like(s_k)
    elif role in ("gate", "up"):  # Detection Specificity on input-side singular vectors
        beta = torch.log1p(torch.relu(excess_kurtosis(v_k, dim=0)))
    elif role == "qk":
        beta = torch.log1p(
            torch.relu(excess_kurtosis(u_k, dim=0)) * torch.relu(excess_kurtosis(v_k, dim=0))
        )
    elif role in ("ov", "down"):  # Writing Density: ||P^T u_i||_2
        if p_unembed is None:
            raise NSDSInputError(f"role {role!r} needs the unembedding subspace (lm_head)")
        proj = u_k.T @ p_unembed.double()  # [k, r]
        beta = torch.linalg.norm(proj, dim=1)  # one weight per singular direction (fixed)
        if role == "down" and opts.faithful_to_code:
            code_beta = torch.linalg.norm(proj, dim=0)  # README defect 2: length r, not k
            if code_beta.shape == s_k.shape:
                beta = code_beta
            elif notes is not None:  # the released code raises here; keep the fixed form
                notes.append(f"down_proj k={k} != r={proj.shape[1]}: released code would crash")
        if wd_betas is not None:
            wd_betas.extend(beta.tolist())
    else:
        raise NSDSInputError(f"unknown role {role!r}")
    return capacity_score(s_k * beta, opts.eps)


# --------------------------------------------------------------------------------------------
# README eq. (1): role matrices
# --------------------------------------------------------------------------------------------


def model_geometry(config) -> dict:
    """Heads, KV heads, head dim (``config.head_dim`` when present, README defect 6) and layer count."""
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    if n_heads % n_kv:
        raise NSDSInputError(
            f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    return {
        "n_layers": config.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv": n_kv,
        "head_dim": head_dim,
    }


def decoder_layers(model) -> list:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise NSDSInputError(
            f"{type(model).__name__} has no model.layers (a Llama-style decoder is needed)"
        )
    return list(layers)


def layer_weight(layer, proj: str, layer_idx: int) -> torch.Tensor:
    obj = layer
    for part in proj.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise NSDSInputError(f"layer {layer_idx} has no {proj} (needed for the NSDS roles)")
    return obj.weight.detach().double()


def factor_svd(a: torch.Tensor, b: torch.Tensor):
    """Thin SVD of ``A Bᵀ`` (A, B: [d, r]) from the factors, exact: with ``A = Qa Ra`` and
    ``B = Qb Rb``, ``A Bᵀ = Qa (Ra Rbᵀ) Qbᵀ``, so one r×r SVD ``Ra Rbᵀ = U S Vᵀ`` gives
    ``(Qa U) S (Qb V)ᵀ``; the other d − r singular values are 0. For a head circuit (d = 4096,
    r = 128) this replaces a 4096² float64 SVD by a 128² one."""
    qa, ra = torch.linalg.qr(a.double())
    qb, rb = torch.linalg.qr(b.double())
    u, s, vh = torch.linalg.svd(ra @ rb.T)
    return qa @ u, s, vh @ qb.T


# A head circuit's SVD comes from its factors (factor_svd) when the model is this wide and the
# head at most 1/8 of it (paper-scale models); narrower models keep the full SVD of the d×d
# circuit, so tiny and small numbers are those of the full SVD.
FACTOR_SVD_MIN_WIDTH = 1024


def head_circuits(layer, geo: dict, layer_idx: int, factors: bool = False):
    """Yield (W_QK^h, W_OV^h) per attention head, GQA-aware (eq. 1); with ``factors``, yield
    ((W_QK^h, (qᵀ, kᵀ)), (W_OV^h, (o, vᵀ))): each circuit with its rank-d_h factors."""
    wq = layer_weight(layer, "self_attn.q_proj", layer_idx)
    wk = layer_weight(layer, "self_attn.k_proj", layer_idx)
    wv = layer_weight(layer, "self_attn.v_proj", layer_idx)
    wo = layer_weight(layer, "self_attn.o_proj", layer_idx)
    dh, group = geo["head_dim"], geo["n_heads"] // geo["n_kv"]
    for h in range(geo["n_heads"]):
        g = h // group
        q = wq[h * dh : (h + 1) * dh]
        k = wk[g * dh : (g + 1) * dh]
        v = wv[g * dh : (g + 1) * dh]
        o = wo[:, h * dh : (h + 1) * dh]
        if factors:
            yield (q.T @ k, (q.T, k.T)), (o @ v, (o, v.T))
        else:
            yield q.T @ k, o @ v


# --------------------------------------------------------------------------------------------
# README eqs. (7)-(8): robust aggregation
# --------------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def mad_sigmoid(
    r, c: float = MAD_C_PAPER, temperature: float = 1.0, eps: float = EPS
) -> np.ndarray:
    """P_l = sigmoid(((r_l - median r) / (c * MAD(r) + eps)) / T) (eq. 7)."""
    r = np.asarray(r, dtype=np.float64)
    med = np.median(r)
    mad = np.median(np.abs(r - med))
    return sigmoid((r - med) / (c * mad + eps) / temperature)


def zscore_sigmoid(r, temperature: float = 1.0, eps: float = EPS) -> np.ndarray:
    """Ablation: mean / standard deviation instead of median / MAD."""
    r = np.asarray(r, dtype=np.float64)
    return sigmoid((r - r.mean()) / (r.std() + eps) / temperature)


def soft_or(p, axis: int = 0, form: str = "geometric", eps: float = EPS) -> np.ndarray:
    """Soft-OR along ``axis`` (eq. 8).

    geometric (code): 1 - exp(mean_i log(1 - p_i + eps)), in [min p, max p];
    product (classical): 1 - prod_i (1 - p_i), >= max p.
    """
    p = np.asarray(p, dtype=np.float64)
    if form == "geometric":
        return 1.0 - np.exp(np.mean(np.log(1.0 - p + eps), axis=axis))
    if form == "product":
        return 1.0 - np.prod(1.0 - p, axis=axis)
    raise NSDSInputError(f"unknown Soft-OR form {form!r}")


def _normalize(r, opts: NSDSOptions) -> np.ndarray:
    if opts.normalizer == "zscore":
        return zscore_sigmoid(r, opts.temperature, opts.eps)
    return mad_sigmoid(r, opts.mad_c, opts.temperature, opts.eps)


def _combine(rows: list[np.ndarray], opts: NSDSOptions) -> np.ndarray:
    stacked = np.stack(rows)  # [modules, L]
    if opts.aggregate == "mean":
        return stacked.mean(axis=0)
    if opts.faithful_to_code:
        # README defect 1: the mean runs over all entries, so every layer gets the same score.
        scalar = soft_or(stacked.reshape(-1), axis=0, form=opts.soft_or, eps=opts.eps)
        return np.full(stacked.shape[1], float(scalar))
    return soft_or(stacked, axis=0, form=opts.soft_or, eps=opts.eps)


def aggregate(raw: dict[str, dict[str, list[float]]], opts: NSDSOptions) -> dict:
    """raw[role][aspect] -> per-layer P per role/aspect, per aspect, and S_l (eqs. 7-8)."""
    normalized: dict[str, dict[str, list[float]]] = {}
    per_aspect: dict[str, np.ndarray] = {}
    for aspect in opts.aspects:
        rows = []
        for role, by_aspect in raw.items():
            r = np.asarray(by_aspect[aspect], dtype=np.float64)
            if not np.any(r != 0.0):  # missing / all-zero module types are skipped (code)
                continue
            p = _normalize(r, opts)
            normalized.setdefault(role, {})[aspect] = p.tolist()
            rows.append(p)
        if not rows:
            raise NSDSInputError(f"no module type has a non-zero {aspect.upper()} score")
        per_aspect[aspect] = _combine(rows, opts)
    final = (
        per_aspect[opts.aspects[0]]
        if len(per_aspect) == 1
        else _combine([per_aspect[a] for a in opts.aspects], opts)
    )
    return {
        "normalized": normalized,
        "aspect": {a: v.tolist() for a, v in per_aspect.items()},
        "scores": final.tolist(),
    }


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------


def raw_role_scores(
    model, opts: NSDSOptions, notes: list | None = None, stats: dict | None = None
) -> dict[str, dict[str, list[float]]]:
    """raw[role][aspect] over layers: NV (kurtosis) and SE (role-aware capacity) per role.
    ``stats`` (when given) receives :func:`unembedding_stats` of the writing-density weights."""
    geo = model_geometry(model.config)
    layers = decoder_layers(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise NSDSInputError(
            f"{type(model).__name__} has no lm_head (NSDS writing density needs W_U)"
        )
    need_se = "se" in opts.aspects
    p_u = unembedding_subspace(head.weight.detach(), opts.energy) if need_se else None
    names = ROLES if opts.roles == "five" else tuple(p.split(".")[1] for p in PROJECTIONS)
    raw = {r: {"nv": [], "se": []} for r in names}
    wd: list | None = [] if p_u is not None and opts.role_reweighting else None
    for i, layer in enumerate(layers):
        if opts.roles == "seven":  # ablation: the 7 projections alike, beta == 1
            for proj in PROJECTIONS:
                w = layer_weight(layer, proj, i)
                raw[proj.split(".")[1]]["nv"].append(float(excess_kurtosis(w)))
                raw[proj.split(".")[1]]["se"].append(se_score(w, "plain", opts) if need_se else 0.0)
            continue
        for role, proj in (
            ("gate", "mlp.gate_proj"),
            ("up", "mlp.up_proj"),
            ("down", "mlp.down_proj"),
        ):
            w = layer_weight(layer, proj, i)
            raw[role]["nv"].append(float(excess_kurtosis(w)))
            raw[role]["se"].append(
                se_score(w, role, opts, p_u, notes, wd_betas=wd) if need_se else 0.0
            )
        per_head = {"qk": {"nv": [], "se": []}, "ov": {"nv": [], "se": []}}
        d = model.config.hidden_size
        wide = d >= FACTOR_SVD_MIN_WIDTH and 8 * geo["head_dim"] <= d
        for qk, ov in head_circuits(layer, geo, i, factors=True):
            for role, (w, ab) in (("qk", qk), ("ov", ov)):
                per_head[role]["nv"].append(float(excess_kurtosis(w)))
                per_head[role]["se"].append(
                    se_score(w, role, opts, p_u, factors=ab if wide else None, wd_betas=wd)
                    if need_se
                    else 0.0
                )
        for role in ("qk", "ov"):  # circuit scores averaged over heads (code)
            for aspect in ("nv", "se"):
                raw[role][aspect].append(float(np.mean(per_head[role][aspect])))
    if stats is not None and p_u is not None:
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        stats.update(unembedding_stats(p_u, wd if wd is not None else [], tied))
    return raw


def raw_key(opts: NSDSOptions) -> tuple:
    """The options the raw per-role scores depend on (the rest only change the aggregation)."""
    return (opts.energy, opts.eps, opts.role_reweighting, opts.roles, opts.faithful_to_code)


@torch.no_grad()
def nsds_scores(model, opts: NSDSOptions | None = None, raw_cache: dict | None = None) -> dict:
    """Layer sensitivities S_l in (0, 1) (higher = more sensitive) plus every intermediate.

    ``raw_cache`` shares the raw NV/SE scores between variants that only aggregate differently.
    """
    opts = opts or NSDSOptions()
    key = raw_key(opts)
    if raw_cache is not None and key in raw_cache:
        raw, notes, unembed = raw_cache[key]
    else:
        notes: list[str] = []
        unembed: dict = {}
        full = opts if raw_cache is None else replace(opts, aspects=("nv", "se"))
        raw = raw_role_scores(model, full, notes, unembed)
        if raw_cache is not None:
            raw_cache[key] = (raw, notes, unembed)
    agg = aggregate(raw, opts)
    scores = agg["scores"]
    if any(not math.isfinite(s) for s in scores):
        raise NSDSInputError(f"non-finite NSDS scores {scores}")
    return {
        "scores": scores,
        "raw": raw,
        **agg,
        "options": opts.as_dict(),
        "notes": notes,
        "unembed": unembed or None,
    }
