"""Dual-Scale Quantizer (DSQ; paper Fig. 3, README eqs. 2-4): on top of the per-(row, group) scales of the base
quantizer, one positive scale ``c_j`` per input channel of ``down_proj``:
``W ≈ Ŵ diag(c)`` with ``Ŵ = Dequant(GPTQ(W diag(c)^-1))``, fit by alternating a Q-step
(GPTQ on ``W / c`` with Hessian ``diag(c) H diag(c)``) and a closed-form c-step; ``c`` is then
folded into ``up_proj``'s per-row scales, so it costs no bits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from methods.quant.gptq import gptq
from methods.quant.quantizer import QuantizedWeight

PROX = 0.1
C_MIN = 1e-2


@dataclass
class DualScaleResult:
    qweight: QuantizedWeight  # codes/scales/zeros of W / c (what down_proj stores)
    c: torch.Tensor  # [d_ff] channel scales (folded into up_proj)
    errors: list[float]  # output error of each iterate (errors[0]: plain GPTQ, c = 1)
    best_iter: int


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """``‖A (Wᵀ − Ŵᵀ)‖²_F = tr((W − Ŵ) H (W − Ŵ)ᵀ)`` with ``H = AᵀA`` (the DSQ objective)."""
    D = (W - W_hat).double()
    return float(((D @ H.double()) * D).sum())


def c_step(W, W_hat, H, c_prev, prox: float = PROX):
    """Closed-form c for fixed codes (README eq. 4): with ``B = Ŵᵀ`` (the decoded codes of
    ``W / c_prev``), ``(H ∘ B Bᵀ) c = diag(H Wᵀ Bᵀ)``, plus a proximal term
    ``λ‖c − c_prev‖²`` (λ = prox · mean diag) so channels whose codes are all zero keep their
    scale instead of collapsing; c clamped positive."""
    W, B, H = W.double(), W_hat.double().T, H.double()
    M = H * (B @ B.T)
    rhs = ((H @ W.T) * B).sum(1)
    lam = prox * M.diagonal().mean().clamp(min=1e-30)
    M = M + lam * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    return torch.linalg.solve(M, rhs + lam * c_prev.double()).clamp(min=C_MIN)


def dual_scale_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    iters: int = 15,
    damp: float = 0.01,
    clip: bool = False,
) -> DualScaleResult:
    """Alternate Q-step and c-step ``iters`` times from ``c = 1``; keep the best iterate, so
    the result is never worse than plain GPTQ on the same ``H``."""
    W64 = W.double()
    c = torch.ones(W.shape[1], dtype=torch.float64, device=W.device)
    best, errors = None, []
    for it in range(iters):
        Hc = c[:, None] * H.double() * c[None, :]
        qw = gptq((W64 / c[None, :]).float(), Hc, bits, group_size, damp=damp, clip=clip)
        W_hat = qw.dequantize().double()
        err = output_error(W64, W_hat * c[None, :], H)
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, qw, c.clone(), it)
        if it + 1 < iters:
            c_new = c_step(W64, W_hat, H, c)
            # the same codes with the new channel scales are a valid candidate too
            err_c = output_error(W64, W_hat * c_new[None, :], H)
            if err_c < best[0]:
                best = (err_c, qw, c_new.clone(), it)
            c = c_new
    _, qw, c, it = best
    return DualScaleResult(qw, c.float(), errors, it)


def fold_into_up(up: QuantizedWeight, c: torch.Tensor) -> QuantizedWeight:
    """Multiply row j of up_proj's scales by ``c_j`` (stored in float16); codes and zero
    points are untouched, so the bit budget is unchanged."""
    scale = (up.scale * c[:, None].float()).half().float()
    return replace(up, scale=scale)
