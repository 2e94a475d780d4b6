"""Planted-outlier variant of a model (spec §6): outlier input channels that leave the function
unchanged but give the chosen layers heavy-tailed weights.

For a chosen layer and residual channel j: divide the RMSNorm gain g_j by alpha and multiply column
j of the Linears that read that norm's output by alpha. ``norm(x)_j * W[:, j]`` is unchanged, so the
model computes the same function (up to float rounding), while column j of q/k/v (input_layernorm)
and gate/up (post_attention_layernorm) now holds weights alpha times larger than the rest: the
excess kurtosis grows and a group-wise quantizer spends its range on one column, which is exactly the
LLM outlier pattern that makes a layer sensitive to low-bit quantization.
"""

from __future__ import annotations

import torch

from methods.nsds.scores import NSDSInputError, decoder_layers

READERS = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}


def _get(module, dotted: str, layer_idx: int):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise NSDSInputError(
                f"layer {layer_idx} has no {dotted} (planting needs a Llama block)"
            )
    return obj


@torch.no_grad()
def plant_outliers(model, layers: list[int], channels: list[int], alpha: float) -> dict:
    """Plant outlier channels in place; returns what was planted (for meta.json)."""
    blocks = decoder_layers(model)
    d = model.config.hidden_size
    if alpha <= 0:
        raise NSDSInputError(f"planted alpha={alpha}: must be > 0")
    for li in layers:
        if not 0 <= li < len(blocks):
            raise NSDSInputError(f"planted layer {li} outside 0..{len(blocks) - 1}")
    for c in channels:
        if not 0 <= c < d:
            raise NSDSInputError(f"planted channel {c} outside 0..{d - 1}")
    for li in layers:
        block = blocks[li]
        for norm_name, readers in READERS.items():
            norm = _get(block, norm_name, li)
            for c in channels:
                norm.weight[c] /= alpha
                for r in readers:
                    _get(block, r, li).weight[:, c] *= alpha
    return {"layers": list(layers), "channels": list(channels), "alpha": float(alpha)}
