"""GPTQ (Frantar et al., arXiv 2210.17323, Algorithm 1): column-by-column quantization with
optimal-brain-surgeon updates of the not-yet-quantized columns, using the upper Cholesky factor
of the damped inverse Hessian ``H = 2 X^T X`` and lazy block updates.

Choices (the reference code IST-DASLab/gptq ``fasterquant`` with act-order off, static groups off):
damping 0.01 * mean(diag H); dead inputs (H_jj = 0) get weight 0; a group's scale/zero are fit at
its first column on the *current* (already error-compensated) weights of that group.
"""

from __future__ import annotations

import torch

from methods.quant.quantizer import QuantizedWeight, check_bits, check_group_size, qparams


def gptq(
    w: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int,
    damp: float = 0.01,
    block: int = 128,
    clip: bool = False,
    dtype: torch.dtype = torch.float64,
    dXX: torch.Tensor | None = None,
    alpha: float = 0.25,
) -> QuantizedWeight:
    """Quantize ``w`` ([out, in]) against the input second moment ``H`` ([in, in]), on ``w``'s
    device, in ``dtype`` (float64: the tiny scale; float32: 16-bit models at paper scale, as in
    the reference code).

    ``dXX`` ([in, in], ``(X_fp - X)^T X`` summed over tokens) turns this into GPTAQ's update
    (``methods.quant.gptaq``): each column's asymmetry residual, scaled by ``alpha``, is
    compensated by the columns after it. ``dXX = None`` is plain GPTQ, operation for operation."""
    check_bits(bits)
    out, n = w.shape
    check_group_size(n, group_size)
    maxq = 2**bits - 1
    W = w.detach().clone().to(dtype)
    H = H.detach().clone().to(W.device, dtype)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    P = None
    if dXX is not None:  # GPTAQ: P = alpha * triu_1(dXX U^T) U, U = Hinv (Cholesky reformulation)
        dXX = dXX.detach().clone().to(W.device, dtype)
        dXX[:, dead] = 0.0
        P = alpha * torch.triu(dXX @ Hinv.T, diagonal=1) @ Hinv

    ng = n // group_size
    block = group_size * max(1, block // group_size)  # groups never straddle a block
    scale = torch.zeros(out, ng, device=W.device)
    zero = torch.zeros(out, ng, device=W.device)
    codes = torch.zeros(out, n, dtype=torch.int16, device=W.device)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                g = col // group_size
                s, z = qparams(W1[:, i : i + group_size].float(), bits, clip)
                scale[:, g], zero[:, g] = s, z
            s, z = scale[:, col // group_size].to(dtype), zero[:, col // group_size].to(dtype)
            q = torch.clamp(torch.round(W1[:, i] / s) + z, 0, maxq)
            codes[:, col] = q.to(torch.int16)
            deq = (q - z) * s
            err = (W1[:, i] - deq) / Hinv1[i, i]  # OBS update of the remaining columns
            if P is None:
                W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            else:  # GPTAQ: + w_i P[i, i:] (w_i: the column before rounding)
                upd = err[:, None] * Hinv1[i, i:][None, :]
                W1[:, i:] -= upd - W1[:, i, None] * P[col, col:i2][None, :]
            Err1[:, i] = err
        if P is None:
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        else:  # as the reference code: the block's columns, now rounded, times P
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:] - W1 @ P[i1:i2, i2:]
    return QuantizedWeight(codes, scale, zero, bits, group_size)
