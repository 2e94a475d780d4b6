"""GPTAQ (Li et al., ICML 2025, arXiv 2504.02692): GPTQ with *asymmetric calibration*.

GPTQ fits each layer to its own output on the quantized model's input ``X``,
``min ||W X - Ŵ X||``; GPTAQ fits it to the full-precision model's output,
``min ||W X̃ - Ŵ X||`` (``X̃``: the layer's input in the float model). With ``ΔX = X̃ - X`` the
residual of input channel ``q`` is ``w_q ΔX_q``; the paper's closed form (optimal brain
compression with that residual) compensates it with the columns not yet quantized, and its
"neuron decomposition" + "Cholesky reformulation" make this one extra matrix
``P = alpha * triu_1((ΔX X^T) U^T) U`` (``U``: the upper Cholesky factor of ``H^{-1}`` that
GPTQ already has), applied as ``W[:, i:] += w_i P[i, i:]`` after column ``i`` is rounded
(see methods/quant/README.md#gptaq for the derivation and every choice).

As in the authors' code (``fake_quant/gptaq_utils.py``): ``alpha = 0.25``; the float inputs
``X̃`` of every Linear of a decoder layer come from the layer *before* any of its modules is
quantized, run on the float stream; ``ΔX X^T`` is summed over the same calibration tokens as
``H``; dead inputs get zero columns in ``ΔX X^T``. The column loop is ``methods.quant.gptq``'s
(``dXX=None`` there is plain GPTQ), so GPTAQ with ``X̃ = X`` equals GPTQ exactly.
"""

from __future__ import annotations

import torch

from methods.quant.gptq import gptq
from methods.quant.model import SequentialQuantizer, Stream, run_layer, set_weight
from methods.quant.quantizer import QuantizedWeight

ALPHA = 0.25  # the authors' default (``fasterquant(..., alpha=0.25)``)


def gptaq(
    w: torch.Tensor,
    H: torch.Tensor,
    dXX: torch.Tensor,
    bits: int,
    group_size: int,
    damp: float = 0.01,
    block: int = 128,
    clip: bool = False,
    dtype: torch.dtype = torch.float64,
    alpha: float = ALPHA,
) -> QuantizedWeight:
    """Quantize ``w`` ([out, in]) with ``H = X^T X`` and ``dXX = (X̃ - X)^T X`` ([in, in],
    tokens as rows: ``dXX[j, k] = sum_t ΔX[t, j] X[t, k]``)."""
    return gptq(w, H, bits, group_size, damp, block, clip, dtype, dXX=dXX, alpha=alpha)


def asym_moments(
    layer, fp_layer, roles, x: Stream, x_fp: Stream, dtype=torch.float64
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{role: (H, dXX)}`` of a stage: ``H = X^T X`` of the (partially quantized) ``layer`` on
    the quantized stream ``x`` and ``dXX = (X̃ - X)^T X`` with ``X̃`` the same sub-module's input
    in ``fp_layer`` (the float copy of the layer) on the float stream ``x_fp``, micro-batch by
    micro-batch (the same tokens)."""
    H: dict[str, torch.Tensor] = {}
    D: dict[str, torch.Tensor] = {}
    fp_in: dict[str, torch.Tensor] = {}
    hooks = []

    def flat(a):
        return a.reshape(-1, a.shape[-1]).to(dtype)

    for role in roles:

        def grab(_mod, args, role=role):
            fp_in[role] = flat(args[0])

        def acc(_mod, args, role=role):
            a = flat(args[0])
            H[role] = H.get(role, 0) + a.T @ a
            D[role] = D.get(role, 0) + (fp_in.pop(role) - a).T @ a

        hooks.append(fp_layer.get_submodule(role).register_forward_pre_hook(grab))
        hooks.append(layer.get_submodule(role).register_forward_pre_hook(acc))
    try:
        for (xb, kw), (fb, kwf) in zip(x, x_fp, strict=True):
            run_layer(fp_layer, fb, kwf)
            run_layer(layer, xb, kw)
    finally:
        for h in hooks:
            h.remove()
    return {role: (H[role], D[role]) for role in roles}


class GPTAQQuantizer(SequentialQuantizer):
    """Layer-by-layer GPTAQ: the sequential GPTQ protocol of :class:`SequentialQuantizer`,
    keeping the float stream (``fp_stream``: a float copy of the current layer only) so every
    stage gets ``X`` from the quantized model and ``X̃`` from the float one."""

    def __init__(self, model, plan, group_size, calib, clip=False, damp=0.01, alpha=ALPHA, **kw):
        super().__init__(model, plan, group_size, "gptq", calib, clip, damp, fp_stream=True, **kw)
        self.method = "gptaq"
        self.alpha = alpha

    def stage_moments(self, layer, fp_layer, roles, x, x_fp):
        return asym_moments(layer, fp_layer, roles, x, x_fp, self.h_dtype)

    def quantize_stage(self, i, layer, roles, H, x) -> None:
        for role in roles:
            name = f"model.layers.{i}.{role}"
            mod = layer.get_submodule(role)
            Hr, Dr = H[role]
            qw = gptaq(
                mod.weight.data,
                Hr,
                Dr,
                self.plan[name],
                self.group_size,
                damp=self.damp,
                clip=self.clip,
                dtype=self.h_dtype,
                alpha=self.alpha,
            )
            set_weight(mod, qw)
            self.keep(name, qw)
