"""Layer-sensitivity baselines of the NSDS comparison (README, "Baselines"), one score per layer, higher = more
sensitive. Data-free: ZD, MSE, EWQ, KurtBoost (as the official repo computes them). Calibration:
LIM (1 - cosine similarity between a block's input and output hidden states). Controls: random and
reversed rankings. Repo quirks that are bugs are fixed and listed in methods/nsds/README.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from methods.nsds.scores import PROJECTIONS, decoder_layers, excess_kurtosis, layer_weight

DATA_FREE = ("zd", "mse", "ewq", "kurtboost")
CALIBRATION = ("lim",)


def _projections(model):
    for i, layer in enumerate(decoder_layers(model)):
        yield i, [layer_weight(layer, p, i) for p in PROJECTIONS]


def zd_matrix(w: torch.Tensor, threshold: float = 1.0) -> float:
    """Fraction of entries with |z| > threshold (unbiased std, as in the repo)."""
    w = w.reshape(-1).double()
    sd = w.std(unbiased=True)
    if sd == 0:
        return 0.0
    return float(((w - w.mean()).abs() / sd > threshold).double().mean())


def mse_matrix(w: torch.Tensor, bits: int = 2) -> float:
    """Sum of squared error of per-tensor symmetric RTN at ``bits`` (repo's scale = max|w|/2^(b-1))."""
    w = w.double()
    qmax = 2 ** (bits - 1) - 1
    m = w.abs().max()
    if m == 0:
        return 0.0
    scale = m / (qmax + 1)
    q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    return float(((w - q) ** 2).sum())


def ewq_matrix(w: torch.Tensor, epsilon: float = 0.01) -> tuple[float, int]:
    """Entropy of softmax(flattened w) as the repo writes it: -sum(p log p + epsilon)."""
    w = w.reshape(-1).double()
    p = F.softmax(w, dim=0)
    return float(-(p * torch.log(p) + epsilon).sum()), w.numel()


@torch.no_grad()
def zd(model, threshold: float = 1.0) -> list[float]:
    return [float(np.mean([zd_matrix(w, threshold) for w in ws])) for _, ws in _projections(model)]


@torch.no_grad()
def mse(model, bits: int = 2) -> list[float]:
    return [float(np.mean([mse_matrix(w, bits) for w in ws])) for _, ws in _projections(model)]


@torch.no_grad()
def ewq(model, epsilon: float = 0.01) -> list[float]:
    out = []
    for _, ws in _projections(model):
        pairs = [ewq_matrix(w, epsilon) for w in ws]
        out.append(sum(h / n for h, n in pairs) / sum(n for _, n in pairs))
    return out


def kurtboost_from_kurtosis(raw: list[float], z: float = 2.0) -> list[float]:
    """Boost x2 the layers whose layer-to-layer kurtosis jump is an outlier (|z| > 2) (repo)."""
    diffs = np.diff(np.asarray(raw, dtype=np.float64))
    flags = [False]
    if len(diffs):
        zs = np.abs(diffs - diffs.mean()) / (diffs.std() + 1e-12)
        flags += [bool(v > z) for v in zs]
    return [r * (2.0 if f else 1.0) for r, f in zip(raw, flags, strict=True)]


@torch.no_grad()
def kurtboost(model) -> list[float]:
    raw = [float(np.mean([float(excess_kurtosis(w)) for w in ws])) for _, ws in _projections(model)]
    return kurtboost_from_kurtosis(raw)


@torch.no_grad()
def lim(model, calib: torch.Tensor, batch_size: int = 8) -> list[float]:
    """LIM: 1 - mean over tokens of cos(h_in, h_out) of each decoder block, on calibration ids.

    The repo's version takes the cosine over the token axis and shifts the layer index by one
    (``enumerate(layers, start=1)``); both are fixed here (README).
    """
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(idx):
        def fn(module, args, kwargs, out):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = out[0] if isinstance(out, tuple) else out
            cache[idx] = (h_in.detach(), h_out.detach())

        return fn

    handles = [blk.register_forward_hook(hook(i), with_kwargs=True) for i, blk in enumerate(layers)]
    try:
        for start in range(0, len(calib), batch_size):
            ids = calib[start : start + batch_size]
            model(input_ids=ids)
            for i, (h_in, h_out) in cache.items():
                d = h_in.shape[-1]
                cos = F.cosine_similarity(
                    h_in.reshape(-1, d).double(), h_out.reshape(-1, d).double(), dim=-1
                )
                sums[i] += float(1.0 - cos.mean())
            count += 1
    finally:
        for h in handles:
            h.remove()
    return (sums / max(count, 1)).tolist()


def random_scores(n_layers: int, seed: int) -> list[float]:
    """A random ranking (seeded): allocation control."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n_layers).astype(float).tolist()


def reversed_scores(scores: list[float]) -> list[float]:
    """The reverse of a ranking: the least sensitive layers get the high precision."""
    return [-s for s in scores]
