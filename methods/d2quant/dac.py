"""Deviation-Aware Correction (DAC; paper Fig. 3, README eqs. 5-6): the per-channel mean deviation between the
float and the quantized model at the output of the post-attention norm,
``μ = (1/T) Σ_t (H_t − H̃_t)``, added back as a bias of that norm: ``norm'(x) = norm(x) + μ``.
For storage (Llama norms have no bias) the bias is moved exactly into gate/up biases:
``(norm(x) + μ) Wᵀ = norm(x) Wᵀ + μ Wᵀ`` (config ``mlp_bias=True``, down_proj bias 0).
"""

from __future__ import annotations

import torch
from torch import nn


def mean_deviation(h_fp: torch.Tensor, h_q: torch.Tensor) -> torch.Tensor:
    """``μ`` over every token: inputs ``[..., d]``, output ``[d]`` in the activations' dtype
    (the mean itself is taken in float64)."""
    d = h_fp.shape[-1]
    mu = (h_fp.reshape(-1, d).double() - h_q.reshape(-1, d).double()).mean(0)
    return mu.to(h_fp.dtype)


class NormWithBias(nn.Module):
    """A norm followed by a constant bias (the DAC correction)."""

    def __init__(self, norm: nn.Module, bias: torch.Tensor):
        super().__init__()
        self.norm = norm
        self.register_buffer("bias", bias.clone())

    def forward(self, x):
        return self.norm(x) + self.bias


def bias_into_mlp(layer, mu: torch.Tensor) -> None:
    """Replace ``NormWithBias`` at the post-attention norm by gate/up biases ``μ Wᵀ``."""
    mlp = layer.mlp
    for name in ("gate_proj", "up_proj", "down_proj"):
        lin = getattr(mlp, name)
        b = (
            mu @ lin.weight.T
            if name != "down_proj"
            else torch.zeros(lin.out_features, device=mu.device)
        )
        if lin.bias is None:
            lin.bias = nn.Parameter(b.to(lin.weight.dtype), requires_grad=False)
        else:
            lin.bias.data.add_(b.to(lin.weight.dtype))
    if isinstance(layer.post_attention_layernorm, NormWithBias):
        layer.post_attention_layernorm = layer.post_attention_layernorm.norm
