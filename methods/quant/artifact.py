"""Write a quantized artifact: the packed checkpoint, a plain folder decoded from it in the job's
dtype (what the generic ``eval_lm`` rule loads with ``from_pretrained``) and ``meta.json``
(last, through the job layer)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch

from claimbench.io import atomic_write_json
from claimbench.job import Job
from claimbench.models import read_meta, resolve_pretrained
from methods.quant.pack import load_packed, save_packed, size_stats
from methods.quant.quantizer import QuantizedWeight

PACKED = "packed"


def load_artifact(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model in ``dtype`` on ``device``, eval mode, tokenizer, meta) of an artifact folder
    holding meta.json; a job passes ``job.device`` and ``job.torch_dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_pretrained(path)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    return model, tok, read_meta(path)


def to_cpu(q: QuantizedWeight) -> QuantizedWeight:
    return replace(q, codes=q.codes.cpu(), scale=q.scale.cpu(), zero=q.zero.cpu())


def storage_reference(model, quantized) -> dict[str, torch.Tensor]:
    """What the checkpoint should hold, decoded: quantized weights exactly as in memory
    (``(q - z) * s``, in the model's dtype), every other tensor through float16."""
    exact = {f"{name}.weight" for name in quantized}
    return {
        k: v.detach().float() if k in exact else v.detach().half().float()
        for k, v in model.state_dict().items()
    }


def reload_difference(model, reloaded, quantized) -> float:
    """Largest absolute difference, over every tensor, between the reloaded model and the
    in-memory quantized model (stored precision, compared in the reloaded model's dtype)."""
    ref = storage_reference(model, quantized)
    got = reloaded.state_dict()
    if set(ref) != set(got):
        raise RuntimeError(f"reloaded tensors differ: {sorted(set(ref) ^ set(got))[:5]}")
    if not ref:
        return 0.0
    return max(float((ref[k].to(got[k].dtype).float() - got[k].float()).abs().max()) for k in ref)


def write_quantized_artifact(
    job: Job,
    model,
    tokenizer,
    quantized: dict[str, QuantizedWeight],
    meta: dict,
    extra_files: dict[str, dict] | None = None,
) -> dict:
    """Pack ``model`` into ``job.out/packed``, check the reload, save the decoded copy in the
    job's dtype and write ``meta.json`` last (``meta``: the method's own fields)."""
    model = model.cpu()  # packing and the reload check run on the CPU
    quantized = {k: to_cpu(q) for k, q in quantized.items()}
    out = Path(job.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    packed = save_packed(model, quantized, out / PACKED, tokenizer)
    reloaded = load_packed(packed, dtype=job.torch_dtype)
    diff = reload_difference(model, reloaded, quantized)
    if diff != 0.0:
        raise RuntimeError(f"{packed}: reloaded weights differ from memory by {diff}")
    reloaded.save_pretrained(out)  # the plain folder evaluated by eval_lm
    tokenizer.save_pretrained(out)
    for name, obj in (extra_files or {}).items():
        atomic_write_json(out / name, obj)
    stats = size_stats(packed, quantized)
    fp16_bytes = 2 * sum(p.numel() for p in model.state_dict().values())
    stats["fp16_bytes"] = fp16_bytes
    stats["size_ratio_vs_fp16"] = stats["file_bytes"] / fp16_bytes
    fields = dict(meta)
    fields.update(
        {
            "kind": "quantized",
            "load": {},
            "packed": {"path": PACKED, "format": "compressed-tensors pack-quantized"},
            "eval_copy": f"{job.dtype} weights decoded from packed/ (for from_pretrained)",
            "reload_max_abs_diff": diff,
            "size": stats,
        }
    )
    job.write_meta(out, **fields)
    return read_meta(out)
