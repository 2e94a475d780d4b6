"""Model-level pieces: the bit plan, calibration tokens, and sequential (layer by layer)
quantization of a transformers causal LM with RTN or GPTQ.

A *plan* maps exact module names of decoder Linear layers to a bit width,
``{"model.layers.0.mlp.down_proj": 2, ...}``; modules not named stay in 16-bit, and so do the
embeddings, norms and ``lm_head``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from methods.quant.gptq import gptq
from methods.quant.quantizer import (
    QuantConfigError,
    QuantizedWeight,
    check_bits,
    check_group_size,
    rtn,
)

# Execution order of a Llama-style decoder layer's Linear modules, by stage (one Hessian each).
STAGES = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
ROLES = tuple(m for stage in STAGES for m in stage)


def decoder_layers(model) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise QuantConfigError(
            f"{type(model).__name__}: no model.layers (a Llama-style decoder is needed)"
        )
    return layers


def linear_names(model) -> list[str]:
    """Names of the decoder Linear modules a plan may target, in execution order."""
    names = []
    for i, layer in enumerate(decoder_layers(model)):
        for role in ROLES:
            try:
                mod = layer.get_submodule(role)
            except AttributeError:
                continue
            if isinstance(mod, nn.Linear):
                names.append(f"model.layers.{i}.{role}")
    return names


def uniform_plan(model, bits: int) -> dict[str, int]:
    check_bits(bits)
    return {name: bits for name in linear_names(model)}


def validate_plan(model, plan, group_size: int, where: str = "plan") -> dict[str, int]:
    """Check every entry of a plan before any work: known module, bit width, group size."""
    if not isinstance(plan, dict) or not plan:
        raise QuantConfigError(f"{where}: a plan is a non-empty JSON object {{module: bits}}")
    known = set(linear_names(model))
    for name, bits in plan.items():
        if name not in known:
            hint = " (lm_head and embeddings stay in 16-bit)" if "lm_head" in name else ""
            raise QuantConfigError(
                f"{where}: {name!r} is not a decoder Linear module of this model{hint}"
            )
        check_bits(bits, f"{where}: {name}")
        check_group_size(model.get_submodule(name).in_features, group_size, f"{where}: {name}")
    return dict(plan)


def read_plan(path: str | Path) -> dict[str, int]:
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise QuantConfigError(f"{path}: cannot read the bit plan ({e})") from None
    if not isinstance(plan, dict):
        raise QuantConfigError(f"{path}: a plan is a JSON object {{module: bits}}")
    for name, bits in plan.items():
        check_bits(bits, f"{path}: {name}")
    return plan


def plan_average_bits(model, plan: dict[str, int]) -> float:
    """Nominal average bits per weight over the planned modules (scales not included)."""
    n = {name: model.get_submodule(name).weight.numel() for name in plan}
    return sum(plan[k] * n[k] for k in plan) / sum(n.values())


def calibration_ids(tokenizer, path: str | Path, n_samples: int, seq_len: int, seed: int):
    """``n_samples`` random windows of ``seq_len`` tokens from a text file (``.txt``, or
    ``.jsonl`` with a ``text`` field); the first 400k characters are tokenized."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        raw = "\n\n".join(json.loads(line)["text"] for line in raw.splitlines() if line.strip())
    ids = tokenizer(raw[:400_000], add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len + 1:
        raise QuantConfigError(f"{path}: {len(ids)} tokens, fewer than one window of {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seq_len) for _ in range(n_samples)]
    return torch.tensor([ids[s : s + seq_len] for s in starts], dtype=torch.long)


class _Stop(Exception):
    pass


def layer_inputs(model, ids: torch.Tensor):
    """Hidden states entering decoder layer 0 and the keyword arguments the layers receive."""
    captured = {}

    def hook(_mod, args, kwargs):
        captured["x"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    h = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    return captured["x"], captured["kw"]


def run_layer(layer, x, kw):
    with torch.no_grad():
        out = layer(x, **kw)
    return out[0] if isinstance(out, tuple) else out


def second_moments(layer, x, kw, roles) -> dict[str, torch.Tensor]:
    """``H = X^T X`` (float64, summed over tokens) of each named sub-module's input."""
    H, hooks = {}, []
    for role in roles:

        def hook(_mod, args, role=role):
            a = args[0].reshape(-1, args[0].shape[-1]).double()
            H[role] = H.get(role, 0) + a.T @ a

        hooks.append(layer.get_submodule(role).register_forward_pre_hook(hook))
    try:
        run_layer(layer, x, kw)
    finally:
        for h in hooks:
            h.remove()
    return H


def set_weight(module: nn.Linear, qw: QuantizedWeight) -> None:
    module.weight.data.copy_(qw.dequantize().to(module.weight.dtype))


class SequentialQuantizer:
    """Quantize a model layer by layer. ``method='rtn'`` needs no data; ``method='gptq'``
    fits each stage of a layer (q/k/v, o, gate/up, down) on the inputs produced by the
    already-quantized model (the GPTQ paper's sequential protocol). Subclasses override the
    hooks (``after_attention``, ``quantize_stage``, ``after_layer``) to add method steps."""

    def __init__(
        self,
        model,
        plan,
        group_size,
        method="gptq",
        calib=None,
        clip=False,
        damp=0.01,
        fp_model=None,
    ):
        if method not in ("rtn", "gptq"):
            raise QuantConfigError(f"method {method!r} is not one of ['rtn', 'gptq']")
        if method == "gptq" and calib is None:
            raise QuantConfigError("method 'gptq' needs calibration tokens (--calib)")
        self.model, self.plan, self.group_size = model, plan, group_size
        self.method, self.calib, self.clip, self.damp = method, calib, clip, damp
        self.fp_model = fp_model  # a float copy, for methods that compare two streams
        self.quantized: dict[str, QuantizedWeight] = {}

    def quantize_weight(self, w, bits, H=None) -> QuantizedWeight:
        if self.method == "rtn":
            return rtn(w, bits, self.group_size, self.clip)
        return gptq(w, H, bits, self.group_size, damp=self.damp, clip=self.clip)

    def run(self) -> dict[str, QuantizedWeight]:
        self.model.eval()
        if self.method == "rtn":
            for name, bits in self.plan.items():
                mod = self.model.get_submodule(name)
                self.quantized[name] = qw = self.quantize_weight(mod.weight.data, bits)
                set_weight(mod, qw)
            return self.quantized
        x, kw = layer_inputs(self.model, self.calib)
        x_fp = x.clone() if self.fp_model is not None else None
        fp_layers = decoder_layers(self.fp_model) if self.fp_model is not None else None
        layers = decoder_layers(self.model)
        bar = tqdm(
            enumerate(layers),
            total=len(layers),
            desc=f"{self.method} layers",
            mininterval=2.0,
            dynamic_ncols=True,
        )
        for i, layer in bar:
            fp_layer = fp_layers[i] if fp_layers is not None else None
            for s, stage in enumerate(STAGES):
                roles = [r for r in stage if f"model.layers.{i}.{r}" in self.plan]
                if s == 2:
                    self.after_attention(i, layer, fp_layer, x, x_fp, kw)
                if roles:
                    H = second_moments(layer, x, kw, roles)
                    self.quantize_stage(i, layer, roles, H, x, kw)
            self.after_layer(i, layer, fp_layer, x, x_fp, kw)
            x = run_layer(layer, x, kw)
            if fp_layer is not None:
                x_fp = run_layer(fp_layer, x_fp, kw)
        return self.quantized

    def quantize_stage(self, i, layer, roles, H, x, kw) -> None:
        for role in roles:
            name = f"model.layers.{i}.{role}"
            mod = layer.get_submodule(role)
            self.quantized[name] = qw = self.quantize_weight(
                mod.weight.data, self.plan[name], H[role]
            )
            set_weight(mod, qw)

    def after_attention(self, i, layer, fp_layer, x, x_fp, kw) -> None:
        """Hook: the layer's attention is quantized, its MLP not yet."""

    def after_layer(self, i, layer, fp_layer, x, x_fp, kw) -> None:
        """Hook: every planned module of the layer is quantized."""
