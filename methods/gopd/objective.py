"""The G-OPD per-token advantage and loss (paper Eq. 14 / Eq. 22; methods/gopd/README.md).

Ascent-form advantage on the sampled token y_t (discount 0, no normalisation or clipping):
    A_t = lam * (log pi*(y_t) - log pi_ref(y_t)) - (log pi_old(y_t) - log pi_ref(y_t))
lam = 1 is OPD (pi_ref cancels; the official code skips it), 0 < lam < 1 interpolates, lam > 1
is ExOPD (reward extrapolation). One optimiser step per rollout batch (ratio = 1), so the loss is
REINFORCE with a stop-gradient advantage: L = -token_mean(A_t * log pi_theta(y_t)).
"""

from __future__ import annotations

import math

import torch

from methods.posttrain.tokens import masked_mean

LAMBDA_MAX = 4.0


def check_lambda(lam: float) -> float:
    lam = float(lam)
    if not math.isfinite(lam) or not 0.0 <= lam <= LAMBDA_MAX:
        raise ValueError(f"G-OPD reward scale lambda must be in [0, {LAMBDA_MAX}], got {lam}")
    return lam


def gopd_advantage(
    logp_teacher: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor | None,
    lam: float,
) -> torch.Tensor:
    """A_t (Eq. 14/22 of the paper in ascent form); ``logp_ref`` may be None only at lam = 1."""
    lam = check_lambda(lam)
    if lam == 1.0:
        return logp_teacher - logp_old  # OPD: the reference cancels
    if logp_ref is None:
        raise ValueError(
            f"G-OPD with lambda={lam} needs a reference model (pi_ref) and none was given"
        )
    return lam * (logp_teacher - logp_ref) - (logp_old - logp_ref)


def gopd_loss(logp: torch.Tensor, advantage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-token_mean(stopgrad(A_t) * log pi_theta(y_t)) over response tokens."""
    return -masked_mean(advantage.detach() * logp, mask)


def route_teacher(logps: dict[str, torch.Tensor], routes: list[str]) -> torch.Tensor:
    """Multi-teacher: row b takes the log-probs of teacher ``routes[b]`` (the multi-teacher setting of
    paper Table 1: one teacher per domain, shared pi_ref and lam)."""
    if len(routes) != next(iter(logps.values())).shape[0]:
        raise ValueError(f"{len(routes)} routes for {next(iter(logps.values())).shape[0]} rows")
    unknown = sorted(set(routes) - set(logps))
    if unknown:
        raise ValueError(f"no teacher named {unknown} (teachers: {sorted(logps)})")
    return torch.stack([logps[r][b] for b, r in enumerate(routes)])
