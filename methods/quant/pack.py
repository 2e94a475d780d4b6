"""Real low-bit storage: the compressed-tensors ``pack-quantized`` format (what transformers
and vLLM load), written from our own integer codes, and an exact loader.

Layout of one quantized Linear in ``model.safetensors`` (compressed-tensors 0.20.1):
``weight_packed`` int32 (codes, 32/b per word along the input dim), ``weight_scale`` float16
``[out, in/g]``, ``weight_zero_point`` int32 (zero points packed along dim 0), ``weight_shape``.
Codes and zero points are stored signed: ``q = u - 2^(b-1)``, so ``W = (q - zp) * scale``.

The loader decodes every module with its *own* bit width (transformers 5.23/5.24 decode
mixed-bit asymmetric checkpoints wrongly or fail; see methods/quant/README.md), in float32
or the dtype asked for.

Serving: a checkpoint with one bit width and group size (one config group) also gets
``"dequantize": true`` in its ``quantization_config``, so that the pinned transformers'
``from_pretrained(path)`` decodes it on load (its default compressed path fails on our
asymmetric zero points); a mixed-bit checkpoint does not (transformers would decode every
module with the first group's width, silently) and loads with :func:`load_packed`.
:func:`vllm_wna16_problems` says whether vLLM's compressed-tensors W4A16/W8A16 scheme takes it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from methods.quant.quantizer import QuantizedWeight

CT_FORMAT = "pack-quantized"


def _ct_config(quantized: dict[str, QuantizedWeight]):
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )

    by_bits: dict[tuple[int, int], list[str]] = {}
    for name, qw in quantized.items():
        by_bits.setdefault((qw.bits, qw.group_size), []).append(name)
    groups = {
        f"w{b}g{g}": QuantizationScheme(
            targets=sorted(names),
            weights=QuantizationArgs(
                num_bits=b, type="int", symmetric=False, strategy="group", group_size=g
            ),
        )
        for (b, g), names in sorted(by_bits.items())
    }
    return QuantizationConfig(format=CT_FORMAT, ignore=["lm_head"], config_groups=groups)


def save_packed(model, quantized: dict[str, QuantizedWeight], out: str | Path, tokenizer=None):
    """Write ``model`` (weights of quantized modules already equal to their decoded values)
    as a pack-quantized checkpoint; everything not quantized is stored in float16."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to(torch.float16)
    apply_quantization_config(m, _ct_config(quantized))
    for name, qw in quantized.items():
        mod = m.get_submodule(name)
        off = 2 ** (qw.bits - 1)
        mod.weight.data.copy_(qw.dequantize().to(torch.float16))
        mod.weight_scale.data.copy_(qw.scale.to(mod.weight_scale.dtype))
        mod.weight_zero_point.data.copy_((qw.zero - off).to(mod.weight_zero_point.dtype))
        mod.quantization_status = QuantizationStatus.FROZEN
    comp = ModelCompressor.from_pretrained_model(m, quantization_format=CT_FORMAT)
    comp.compress_model(m)
    m.save_pretrained(out)
    comp.update_config(out)
    mark_dequantize(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    check_packed_codes(out, quantized)
    return out


def mark_dequantize(path: str | Path) -> bool:
    """Set ``quantization_config.dequantize = true`` in ``config.json`` when the checkpoint has a
    single config group (transformers then decodes it correctly on load); returns whether set."""
    cfg_path = Path(path) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    qc = cfg["quantization_config"]
    uniform = len(qc["config_groups"]) == 1
    if uniform:
        qc["dequantize"] = True
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return uniform


# vLLM's compressed-tensors weight-only scheme (vllm/model_executor/layers/quantization/
# compressed_tensors/schemes/compressed_tensors_wNa16.py): WNA16_SUPPORTED_TYPES_MAP and, with
# zero points (asymmetric), WNA16_ZP_SUPPORTED_TYPES_MAP hold 4 and 8 bits only; group strategy
# through the Marlin kernels, whose MARLIN_SUPPORTED_GROUP_SIZES are -1 (channel), 32, 64, 128
# (quantization/utils/marlin_utils.py).
VLLM_WNA16_BITS = (4, 8)
VLLM_WNA16_GROUP_SIZES = (32, 64, 128)


def vllm_wna16_problems(quantization_config: dict) -> list[str]:
    """Why vLLM's compressed-tensors WNA16 scheme would refuse this ``quantization_config``
    (empty: it accepts every config group)."""
    problems = []
    if quantization_config.get("format") != CT_FORMAT:
        problems.append(f"format {quantization_config.get('format')!r} is not {CT_FORMAT!r}")
    for name, group in sorted(quantization_config.get("config_groups", {}).items()):
        w = group.get("weights") or {}
        if group.get("input_activations") is not None:
            problems.append(f"{name}: activations are quantized (not weight-only)")
        if w.get("type") != "int" or w.get("dynamic"):
            problems.append(f"{name}: weights are not static int")
        if w.get("num_bits") not in VLLM_WNA16_BITS:
            problems.append(f"{name}: {w.get('num_bits')} bits (vLLM WNA16: 4 or 8)")
        if w.get("strategy") == "group":
            if w.get("group_size") not in VLLM_WNA16_GROUP_SIZES:
                problems.append(f"{name}: group size {w.get('group_size')} (Marlin: 32, 64 or 128)")
        elif w.get("strategy") != "channel":
            problems.append(f"{name}: strategy {w.get('strategy')!r} (group or channel)")
        if w.get("actorder") not in (None, "static", "weight"):
            problems.append(f"{name}: actorder {w.get('actorder')!r}")
    return problems


def serving(path: str | Path) -> dict:
    """How a user loads the checkpoint at ``path``: recorded in the artifact's meta.json."""
    qc = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
    problems = vllm_wna16_problems(qc)
    exact = "methods.quant.pack.load_packed(path, dtype=torch.bfloat16)"
    return {
        "from_pretrained": bool(qc.get("dequantize")),
        "loader": exact,
        "vllm_wna16": not problems,
        "vllm_problems": problems,
    }


def _safetensors_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no .safetensors file")
    return files


def read_codes(path: str | Path) -> dict[str, QuantizedWeight]:
    """Decode the integer codes, scales and zero points of every quantized module on disk."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())["quantization_config"]
    bits_of, gs_of = {}, {}
    for group in cfg["config_groups"].values():
        for t in group["targets"]:
            bits_of[t] = group["weights"]["num_bits"]
            gs_of[t] = group["weights"]["group_size"]
    out = {}
    for f in _safetensors_files(path):
        with safe_open(str(f), "pt") as fh:
            keys = set(fh.keys())
            for key in keys:
                if not key.endswith(".weight_packed"):
                    continue
                name = key[: -len(".weight_packed")]
                b, g = bits_of[name], gs_of[name]
                shape = torch.Size(fh.get_tensor(f"{name}.weight_shape").tolist())
                q = unpack_from_int32(fh.get_tensor(key), b, shape).to(torch.int16)
                scale = fh.get_tensor(f"{name}.weight_scale").float()
                zp = unpack_from_int32(
                    fh.get_tensor(f"{name}.weight_zero_point"), b, scale.shape, packed_dim=0
                )
                off = 2 ** (b - 1)
                out[name] = QuantizedWeight(q + off, scale, zp.float() + off, b, g)
    return out


def check_packed_codes(path, quantized: dict[str, QuantizedWeight]) -> None:
    """The codes, scales and zero points on disk are exactly the ones we computed."""
    disk = read_codes(path)
    if set(disk) != set(quantized):
        raise RuntimeError(f"{path}: modules on disk {sorted(disk)} != planned {sorted(quantized)}")
    for name, qw in quantized.items():
        d = disk[name]
        if d.bits != qw.bits or not (
            torch.equal(d.codes, qw.codes)
            and torch.equal(d.scale, qw.scale.half().float())
            and torch.equal(d.zero, qw.zero)
        ):
            raise RuntimeError(f"{path}: {name}: packed codes/scales/zeros differ from memory")


def load_packed(path: str | Path, dtype=torch.float32, device: str = "cpu"):
    """The exact loader: a plain transformers model whose quantized Linears hold
    ``(q - zp) * scale`` decoded with each module's own bit width (in float32, then cast to
    ``dtype``), on ``device``. Each module is decoded in float32 and cast at once, so a 16-bit
    load never holds a float32 copy of the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    sd = {}
    for f in _safetensors_files(path):
        sd.update(load_file(str(f)))
    for name, qw in read_codes(path).items():
        for suffix in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"):
            sd.pop(f"{name}.{suffix}", None)
        sd[f"{name}.weight"] = qw.dequantize().to(dtype)
    cfg = AutoConfig.from_pretrained(path)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    sd = {k: v.to(dtype) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{path}: missing {missing[:5]} unexpected {unexpected[:5]}")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.to(device).eval()


def size_stats(path: str | Path, quantized: dict[str, QuantizedWeight]) -> dict:
    """Real on-disk size and bits per weight of the quantized modules, scales and zero points
    (and the packed shape) included, measured from the tensors in the file."""
    path = Path(path)
    files = _safetensors_files(path)
    q_bytes = 0
    total_bytes = sum(f.stat().st_size for f in files)
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                name, _, suffix = key.rpartition(".")
                if name in quantized and suffix.startswith("weight_"):
                    t = fh.get_tensor(key)
                    q_bytes += t.numel() * t.element_size()
    n_weights = sum(qw.codes.numel() for qw in quantized.values())
    nominal = sum(qw.bits * qw.codes.numel() for qw in quantized.values())
    return {
        "file_bytes": total_bytes,
        "quantized_weights": n_weights,
        "quantized_bytes": q_bytes,
        "avg_bits": 8 * q_bytes / n_weights if n_weights else 0.0,
        "nominal_bits": nominal / n_weights if n_weights else 0.0,
    }
