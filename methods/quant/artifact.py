"""Write a quantized artifact: the packed checkpoint, a plain folder decoded from it in the job's
dtype (what the generic ``eval_lm`` rule loads with ``from_pretrained``) and ``meta.json``
(last, through the job layer).

With ``decoded_copy: false`` in the paper's scale section (paper scale), a checkpoint that
transformers' ``from_pretrained`` decodes itself (one bit width: ``pack.mark_dequantize``) gets
no decoded copy: ``meta.json``'s ``load.path`` points at ``packed/``, which is decoded on load in
the evaluating job's dtype (bf16). A mixed-bit checkpoint still gets a copy in the job's dtype
(bf16 at paper scale), since ``from_pretrained`` cannot read it (``pack.load_packed`` can)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch

from claimbench.io import atomic_write_json
from claimbench.job import Job
from claimbench.models import read_meta, resolve_pretrained
from methods.quant.pack import load_packed, save_packed, serving, size_stats
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


def _storage_reference(model, quantized):
    """What the checkpoint should hold, decoded, as (name, tensor) one at a time (no float32
    copy of the whole model): quantized weights exactly as in memory (``(q - z) * s``, in the
    model's dtype), every other tensor through float16."""
    exact = {f"{name}.weight" for name in quantized}
    for k, v in model.state_dict().items():
        yield k, v.detach().float() if k in exact else v.detach().half().float()


def reload_difference(model, reloaded, quantized) -> float:
    """Largest absolute difference, over every tensor, between the reloaded model and the
    in-memory quantized model (stored precision, compared in the reloaded model's dtype)."""
    got = reloaded.state_dict()
    names = set(model.state_dict())
    if names != set(got):
        raise RuntimeError(f"reloaded tensors differ: {sorted(names ^ set(got))[:5]}")
    diff = 0.0
    for k, ref in _storage_reference(model, quantized):
        diff = max(diff, float((ref.to(got[k].dtype).float() - got[k].float()).abs().max()))
    return diff


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
    serve = serving(packed)
    load, eval_copy = {}, f"{job.dtype} weights decoded from packed/ (for from_pretrained)"
    if serve["from_pretrained"] and not (job.config or {}).get("decoded_copy", True):
        load = {"path": str(out / PACKED)}
        eval_copy = "none: from_pretrained decodes packed/ on load (dequantize), in the eval dtype"
    else:
        reloaded.save_pretrained(out)  # the plain folder evaluated by eval_lm
        tokenizer.save_pretrained(out)
    del reloaded
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
            "load": load,
            "packed": {"path": PACKED, "format": "compressed-tensors pack-quantized", **serve},
            "eval_copy": eval_copy,
            "reload_max_abs_diff": diff,
            "size": stats,
        }
    )
    job.write_meta(out, **fields)
    return read_meta(out)
