"""Every layer-scoring method of the NSDS comparison, by name: NSDS, its ablations, the data-free
and calibration baselines, and the random / reversed controls. One call scores them all."""

from __future__ import annotations

import numpy as np
import torch

from methods.nsds import baselines
from methods.nsds.scores import NSDSInputError, decoder_layers, nsds_scores, options_from

# name -> NSDS option overrides (applied on top of the scale's nsds options)
NSDS_VARIANTS = {
    "nsds": {},
    "nsds_nv": {"aspects": ["nv"]},  # NV only
    "nsds_se": {"aspects": ["se"]},  # SE only
    "nsds_norole": {"role_reweighting": False},  # beta == 1
    "nsds_mean": {"aggregate": "mean"},  # mean instead of Soft-OR
    "nsds_zscore": {"normalizer": "zscore"},  # z-score instead of MAD
    "nsds_seven": {"roles": "seven"},  # the 7 projections alike instead of 5 roles
    "nsds_code": {"faithful_to_code": True},  # the released code's behaviour (README defects)
}
DATA_FREE = {
    "zd": baselines.zd,
    "mse": baselines.mse,
    "ewq": baselines.ewq,
    "kurtboost": baselines.kurtboost,
}
CALIBRATION = ("lim",)
CONTROLS = ("random", "reversed")
# scores read from a file another method wrote (``cli import-scores``), never computed by ``scores``:
# ``mi`` = the mechanistic-interpretability suite's zero-ablation ΔNLL per layer (calibration-based)
IMPORTED = ("mi",)
ALL_SCORED = tuple(NSDS_VARIANTS) + tuple(DATA_FREE) + CALIBRATION + CONTROLS
ALL_METHODS = ALL_SCORED + IMPORTED + ("uniform",)


def check_methods(names, where: str = "methods") -> list[str]:
    bad = [n for n in names if n not in ALL_METHODS]
    if bad:
        raise NSDSInputError(f"{where}: unknown method(s) {bad}; known: {list(ALL_METHODS)}")
    return list(names)


@torch.no_grad()
def score_all(
    model,
    names,
    nsds_options: dict | None = None,
    calib: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, dict]:
    """{method: {"scores": [L], ...details}} for every requested scored method."""
    n_layers = len(decoder_layers(model))
    out: dict[str, dict] = {}
    base_opts = dict(nsds_options or {})
    raw_cache: dict = {}
    wanted = [n for n in names if n != "uniform"]
    if "reversed" in wanted and "nsds" not in wanted:
        wanted = ["nsds", *wanted]
    for name in wanted:
        if name in NSDS_VARIANTS:
            opts = options_from({**base_opts, **NSDS_VARIANTS[name]})
            res = nsds_scores(model, opts, raw_cache)
            out[name] = {"scores": res["scores"], "nsds": res, "data_free": True}
        elif name in DATA_FREE:
            out[name] = {"scores": DATA_FREE[name](model), "data_free": True}
        elif name == "lim":
            if calib is None:
                raise NSDSInputError("method lim needs calibration ids (--calib)")
            out[name] = {"scores": baselines.lim(model, calib), "data_free": False}
        elif name == "random":
            out[name] = {"scores": baselines.random_scores(n_layers, seed), "seed": seed}
        elif name == "reversed":
            pass  # after nsds
        elif name in IMPORTED:
            raise NSDSInputError(
                f"method {name!r} is not scored from the weights: it is imported from a file "
                "(python -m methods.nsds.cli import-scores)"
            )
        else:
            raise NSDSInputError(f"unknown method {name!r}")
    if "reversed" in wanted:
        out["reversed"] = {"scores": baselines.reversed_scores(out["nsds"]["scores"])}
    for name, res in out.items():
        s = np.asarray(res["scores"], dtype=np.float64)
        if s.shape != (n_layers,) or not np.all(np.isfinite(s)):
            raise NSDSInputError(
                f"method {name}: scores {s.tolist()} are not {n_layers} finite values"
            )
    return out
