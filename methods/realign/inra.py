"""InRa: the layer adapter (README.md, Eq. 3) and its two decoding paths (Eq. 4).

Expansion (the official ``scripts/llama_pro.py`` with ``--num_expand 1`` at position 0): copy
decoder layer 0, zero its attention output projection ``o_proj`` and MLP ``down_proj`` (weights
and biases), insert the copy at index 0. With the residual stream the copy adds nothing, so the
expanded model (L + 1 layers) computes exactly the reference model. Only that layer is trained.

Paths at decode time: A ("aligned") = embeddings -> adapter -> layers 1..L; U ("unaligned") =
the adapter's output is discarded (hidden state reset to the embeddings after layer 0, as the
released vLLM patch does) -> layers 1..L = the reference model. Each path keeps its own KV cache.
"""

from __future__ import annotations

import copy
import re

import torch
from transformers import AutoModelForCausalLM

ZEROED = ("self_attn.o_proj", "mlp.down_proj")  # the adapter's output projections
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def decoder_layers(model) -> torch.nn.ModuleList:
    try:
        return model.model.layers
    except AttributeError:
        raise ValueError(
            f"InRa needs a decoder-only causal LM with model.layers (Llama/Qwen2), got "
            f"{type(model).__name__}"
        ) from None


def expand_with_adapter(base):
    """The expanded model: an identity-initialised copy of layer 0 inserted at index 0."""
    layers = decoder_layers(base)
    cfg = copy.deepcopy(base.config)
    cfg.num_hidden_layers = len(layers) + 1
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[0], *cfg.layer_types]
    expanded = AutoModelForCausalLM.from_config(cfg, dtype=next(base.parameters()).dtype)
    state = {}
    for key, value in base.state_dict().items():
        m = _LAYER.match(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            state[f"model.layers.{i + 1}.{rest}"] = value.clone()
            if i == 0:
                zero = any(rest.startswith(z + ".") for z in ZEROED)
                state[f"model.layers.0.{rest}"] = torch.zeros_like(value) if zero else value.clone()
        else:
            state[key] = value.clone()
    missing, unexpected = expanded.load_state_dict(state, strict=False)
    missing = [
        k for k in missing if not k.endswith("lm_head.weight") or not cfg.tie_word_embeddings
    ]
    if missing or unexpected:
        raise ValueError(f"InRa expansion: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        expanded.tie_weights()
    expanded.generation_config = copy.deepcopy(base.generation_config)
    expanded.eval()
    return expanded


def freeze_all_but_adapter(expanded) -> int:
    """Train only layer 0 (LLaMA-Factory ``freeze_trainable_layers: -1``); returns its size."""
    expanded.requires_grad_(False)
    adapter = decoder_layers(expanded)[0]
    adapter.requires_grad_(True)
    return sum(p.numel() for p in adapter.parameters())


def check_adapter(base, expanded) -> None:
    """The expanded model must be the base plus one layer of the base's layer shapes at index 0;
    raise naming the first mismatch."""
    nb, ne = len(decoder_layers(base)), len(decoder_layers(expanded))
    if ne != nb + 1:
        raise ValueError(
            f"InRa adapter: expanded model has {ne} layers, the base has {nb}; expected {nb + 1}"
        )
    bs = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    for key, value in expanded.state_dict().items():
        m = _LAYER.match(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            want_key = f"model.layers.{max(i - 1, 0)}.{rest}"
        else:
            want_key = key
        want = bs.get(want_key)
        if want is None:
            raise ValueError(
                f"InRa adapter: parameter {key} has no counterpart {want_key} in the base"
            )
        if tuple(value.shape) != want:
            raise ValueError(
                f"InRa adapter: parameter {key} has shape {tuple(value.shape)} but the base's "
                f"{want_key} has shape {want}"
            )


class AdapterPaths:
    """Switch the expanded model between path A (adapter used) and path U (adapter output
    discarded) with a forward hook on layer 0; layer 0 still runs in path U so each path's KV
    cache keeps every layer (its layer-0 entries are unused by the U path's output)."""

    def __init__(self, expanded):
        self.model = expanded
        self.discard = False
        self._handle = decoder_layers(expanded)[0].register_forward_hook(
            self._hook, with_kwargs=True
        )

    def _hook(self, module, args, kwargs, output):
        if not self.discard:
            return output
        return args[0] if args else kwargs["hidden_states"]

    def path(self, name: str) -> AdapterPaths:
        if name not in ("A", "U"):
            raise ValueError(f"InRa path must be 'A' or 'U', got {name!r}")
        self.discard = name == "U"
        return self

    def close(self) -> None:
        self._handle.remove()
