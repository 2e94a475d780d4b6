"""Write a quantized artifact: the packed checkpoint, a plain float32 folder decoded from it
(what the generic ``eval_lm`` rule loads with ``from_pretrained``) and ``meta.json`` (last)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.io import atomic_write_json
from claimbench.models import read_meta, resolve_pretrained
from methods.quant.pack import load_packed, save_packed, size_stats
from methods.quant.quantizer import QuantizedWeight

PACKED = "packed"


def load_artifact(path: str | Path):
    """(model float32 eval, tokenizer, meta) of an artifact folder holding meta.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_pretrained(path)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model.requires_grad_(False)
    return model, tok, read_meta(path)


def storage_reference(model, quantized) -> dict[str, torch.Tensor]:
    """What the checkpoint should hold, decoded: quantized weights exactly as in memory
    (``(q - z) * s`` in float32), every other tensor through float16."""
    exact = {f"{name}.weight" for name in quantized}
    return {
        k: v.detach().float() if k in exact else v.detach().half().float()
        for k, v in model.state_dict().items()
    }


def reload_difference(model, reloaded, quantized) -> float:
    """Largest absolute difference, over every tensor, between the reloaded model and the
    in-memory quantized model (stored precision)."""
    ref = storage_reference(model, quantized)
    got = reloaded.state_dict()
    if set(ref) != set(got):
        raise RuntimeError(f"reloaded tensors differ: {sorted(set(ref) ^ set(got))[:5]}")
    return max(float((ref[k] - got[k].float()).abs().max()) for k in ref) if ref else 0.0


def write_quantized_artifact(
    model,
    tokenizer,
    quantized: dict[str, QuantizedWeight],
    out: str | Path,
    meta: dict,
    started_at: str,
    wall_s: float,
    extra_files: dict[str, dict] | None = None,
) -> dict:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    packed = save_packed(model, quantized, out / PACKED, tokenizer)
    reloaded = load_packed(packed)
    diff = reload_difference(model, reloaded, quantized)
    if diff != 0.0:
        raise RuntimeError(f"{packed}: reloaded weights differ from memory by {diff}")
    reloaded.save_pretrained(out)  # the plain float32 folder evaluated by eval_lm
    tokenizer.save_pretrained(out)
    for name, obj in (extra_files or {}).items():
        atomic_write_json(out / name, obj)
    stats = size_stats(packed, quantized)
    fp16_bytes = 2 * sum(p.numel() for p in model.state_dict().values())
    stats["fp16_bytes"] = fp16_bytes
    stats["size_ratio_vs_fp16"] = stats["file_bytes"] / fp16_bytes
    meta = dict(meta)
    meta.update(
        {
            "kind": "quantized",
            "load": {},
            "packed": {"path": PACKED, "format": "compressed-tensors pack-quantized"},
            "eval_copy": "float32 weights decoded from packed/ (for from_pretrained)",
            "reload_max_abs_diff": diff,
            "size": stats,
            "provenance": provenance.capture(started_at, wall_s),
        }
    )
    atomic_write_json(out / "meta.json", meta)
    return meta
