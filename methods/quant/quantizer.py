"""Asymmetric group-wise uniform quantizer: ``Q(w) = s * (clamp(round(w / s) + z, 0, 2^b - 1) - z)``.

Groups run along the input dimension (columns of a PyTorch ``[out, in]`` weight), one scale and
one integer zero point per (row, group). Scales are rounded to float16 as soon as they are made
(the packed checkpoint stores them in float16), so the in-memory fake-quantized weight equals the
weight decoded from disk bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VALID_BITS = (2, 3, 4, 8)
CLIP_GRID = tuple(1.0 - 0.02 * i for i in range(11))  # shrink factors 1.00 -> 0.80


class QuantConfigError(ValueError):
    """A bit width, group size or plan that cannot be quantized (raised before any work)."""


def check_bits(bits, where: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VALID_BITS:
        raise QuantConfigError(f"{where}: bit width {bits!r} is not one of {list(VALID_BITS)}")
    return bits


def check_group_size(in_features: int, group_size, where: str = "group_size") -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise QuantConfigError(f"{where}: group size {group_size!r} must be a positive integer")
    if in_features % group_size:
        raise QuantConfigError(
            f"{where}: group size {group_size} does not divide the layer width {in_features}"
        )
    return group_size


@dataclass
class QuantizedWeight:
    """Integer codes ``q`` in [0, 2^b - 1] (int16), per-(row, group) ``scale`` (float32 holding
    float16 values) and integer ``zero`` (float32 holding integers), plus the decoded weight."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scale, self.zero, self.group_size)


def _expand(t: torch.Tensor, group_size: int) -> torch.Tensor:
    return t.repeat_interleave(group_size, dim=-1)


def qparams(w: torch.Tensor, bits: int, clip: bool = False):
    """Scale and zero point of each row of ``w`` ([rows, g]): min/max range including 0 (as GPTQ
    and compressed-tensors do), optionally shrunk by the factor of CLIP_GRID with the smallest
    squared reconstruction error of the row."""
    maxq = 2**bits - 1
    w = w.float()
    lo = torch.clamp(w.amin(-1), max=0.0)
    hi = torch.clamp(w.amax(-1), min=0.0)
    best_s = best_z = best_err = None
    for p in CLIP_GRID if clip else (1.0,):
        s, z = _range_params(lo * p, hi * p, maxq)
        if not clip:
            return s, z
        q = torch.clamp(torch.round(w / s[:, None]) + z[:, None], 0, maxq)
        err = ((q - z[:, None]) * s[:, None] - w).pow(2).sum(-1)
        if best_err is None:
            best_s, best_z, best_err = s, z, err
        else:
            better = err < best_err
            best_s = torch.where(better, s, best_s)
            best_z = torch.where(better, z, best_z)
            best_err = torch.where(better, err, best_err)
    return best_s, best_z


def _range_params(lo: torch.Tensor, hi: torch.Tensor, maxq: int):
    s = (hi - lo) / maxq
    s = torch.where(s > 0, s, torch.ones_like(s))
    s = s.half().float()  # stored in float16
    s = torch.where(s > 0, s, torch.full_like(s, 2.0**-24))  # float16 underflow guard
    z = torch.clamp(torch.round(-lo / s), 0, maxq)
    return s, z


def quantize_codes(w: torch.Tensor, scale, zero, bits: int, group_size: int) -> torch.Tensor:
    """Integer codes of ``w`` ([out, in]) given per-(row, group) scale/zero ([out, in/g])."""
    maxq = 2**bits - 1
    s, z = _expand(scale, group_size), _expand(zero, group_size)
    return torch.clamp(torch.round(w.float() / s) + z, 0, maxq).to(torch.int16)


def dequantize(codes, scale, zero, group_size: int) -> torch.Tensor:
    return (codes.float() - _expand(zero, group_size)) * _expand(scale, group_size)


def rtn(w: torch.Tensor, bits: int, group_size: int, clip: bool = False) -> QuantizedWeight:
    """Round-to-nearest: one scale/zero per (row, group) from the group's own range."""
    check_bits(bits)
    out, n = w.shape
    check_group_size(n, group_size)
    g = w.float().reshape(out * (n // group_size), group_size)
    s, z = qparams(g, bits, clip)
    s, z = s.reshape(out, -1), z.reshape(out, -1)
    return QuantizedWeight(quantize_codes(w, s, z, bits, group_size), s, z, bits, group_size)


def levels_per_group(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Number of distinct codes in each (row, group)."""
    g = codes.reshape(-1, group_size).sort(-1).values
    return 1 + (g.diff(dim=-1) != 0).sum(-1)
