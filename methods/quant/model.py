"""Model-level pieces: the bit plan, calibration tokens, and sequential (layer by layer)
quantization of a transformers causal LM with RTN or GPTQ.

A *plan* maps exact module names of decoder Linear layers to a bit width,
``{"model.layers.0.mlp.down_proj": 2, ...}``; modules not named stay in 16-bit, and so do the
embeddings, norms and ``lm_head``.
"""

from __future__ import annotations

import copy
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


def calibration_ids(tokenizer, source, n_samples: int, seq_len: int, seed: int):
    """``n_samples`` windows of ``seq_len`` tokens, seeded.

    ``source`` a path: a text file (``.txt``, or ``.jsonl`` with a ``text`` field), of which the
    first 400k characters are tokenized and windows start at random offsets (the tiny scale).
    ``source`` a dict ``{name, config, split[, data_files, shuffle, text_field, max_chars]}``: a data set
    loaded through ``datasets`` (WikiText-2 train for D²Quant, a C4 ``en`` shard for GPTQ in
    NSDS; a folder written by ``Dataset.save_to_disk`` or a local ``.parquet`` / ``.jsonl`` file
    is read the same way, for tests), its rows joined with blank lines, and the windows drawn
    without replacement from the non-overlapping ``seq_len`` chunks of the token stream."""
    if isinstance(source, dict):
        return dataset_windows(tokenizer, source, n_samples, seq_len, seed)
    path = Path(source)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        raw = "\n\n".join(json.loads(line)["text"] for line in raw.splitlines() if line.strip())
    ids = tokenizer(raw[:400_000], add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len + 1:
        raise QuantConfigError(f"{path}: {len(ids)} tokens, fewer than one window of {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(ids) - seq_len) for _ in range(n_samples)]
    return torch.tensor([ids[s : s + seq_len] for s in starts], dtype=torch.long)


def load_text_dataset(spec: dict):
    """The rows of a data set spec (see :func:`calibration_ids`) as a ``datasets.Dataset``."""
    import datasets

    name, split = spec["name"], spec.get("split", "train")
    where = f"calib.dataset: {name}"
    try:
        local = Path(name)
        if local.is_dir():
            ds = datasets.load_from_disk(str(local))
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        if local.suffix in (".parquet", ".jsonl", ".json", ".csv") and local.is_file():
            kind = {".jsonl": "json"}.get(local.suffix, local.suffix[1:])
            return datasets.load_dataset(kind, data_files=str(local), split="train")
        kw = {"data_files": spec["data_files"]} if spec.get("data_files") else {}
        return datasets.load_dataset(name, spec.get("config"), split=split, **kw)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise QuantConfigError(
            f"{where}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "run `claimbench prefetch` where the hub is reachable"
        ) from None


def dataset_windows(tokenizer, spec: dict, n_samples: int, seq_len: int, seed: int):
    ds = load_text_dataset(spec)
    field = spec.get("text_field", "text")
    if field not in ds.column_names:
        raise QuantConfigError(f"calib.dataset: {spec['name']}: no column {field!r}")
    # ``shuffle`` (C4): rows in a seeded order, read until about 16 characters per window token
    # (``max_chars``); otherwise (WikiText-2) the whole split in its own order.
    order = list(range(len(ds)))
    budget = spec.get("max_chars")
    if spec.get("shuffle"):
        random.Random(seed).shuffle(order)
        budget = budget or 16 * n_samples * seq_len
    texts, size = [], 0
    for i in order:
        t = ds[i][field]
        texts.append(t)
        size += len(t)
        if budget and size >= budget:
            break
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n_chunks = len(ids) // seq_len
    if n_chunks < n_samples:
        raise QuantConfigError(
            f"calib.dataset: {spec['name']}: {len(ids)} tokens give {n_chunks} windows of "
            f"{seq_len}, fewer than calib.n = {n_samples}"
        )
    picks = random.Random(seed).sample(range(n_chunks), n_samples)
    return torch.tensor([ids[c * seq_len : (c + 1) * seq_len] for c in picks], dtype=torch.long)


def calib_source(cfg: dict, path: str | None):
    """The calibration source of a paper section: ``calib.dataset`` when the scale names one
    (paper scale), else the text file the rule passes (tiny keeps its own file)."""
    ds = (cfg or {}).get("calib", {}).get("dataset")
    return dict(ds) if ds else path


def layerwise(job, cfg: dict) -> dict:
    """SequentialQuantizer options of a job: its device, and ``calib.batch_size`` sequences per
    forward (all at once when the scale sets none)."""
    return {"device": job.device, "batch_size": (cfg or {}).get("calib", {}).get("batch_size")}


class _Stop(Exception):
    pass


def to_device(obj, device):
    """``obj`` (a tensor, or a tuple / list / dict of them, as in a layer's keyword arguments)
    on ``device``; anything else unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


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


class Stream:
    """Calibration activations entering a decoder layer, as micro-batches ``(x, kw)`` of at most
    ``batch_size`` sequences (all in one batch when ``batch_size`` is None). The chunks live on
    ``store`` (the CPU when layers are offloaded) and go to ``device`` one at a time."""

    def __init__(self, chunks, device, store):
        self.chunks, self.device, self.store = chunks, device, store

    @classmethod
    def embed(cls, model, ids: torch.Tensor, batch_size=None, device=None, store=None):
        """The inputs of layer 0 for ``ids``, computed where the embeddings are."""
        emb = model.get_input_embeddings().weight.device
        device = device or emb
        store = store or device
        step = batch_size or len(ids)
        chunks = []
        for b in range(0, len(ids), step):
            x, kw = layer_inputs(model, ids[b : b + step].to(emb))
            chunks.append((x.to(store), to_device(kw, store)))
        return cls(chunks, device, store)

    def __iter__(self):
        for x, kw in self.chunks:
            yield to_device(x, self.device), to_device(kw, self.device)

    def map(self, fn) -> Stream:
        """A new stream of ``fn(x, kw)`` per chunk (same ``kw``)."""
        out = [
            (fn(x, kw).to(self.store), kw0)
            for (x, kw), (_, kw0) in zip(self, self.chunks, strict=True)
        ]
        return Stream(out, self.device, self.store)

    def clone(self) -> Stream:
        return Stream([(x.clone(), kw) for x, kw in self.chunks], self.device, self.store)


def run_layer(layer, x, kw):
    with torch.no_grad():
        out = layer(x, **kw)
    return out[0] if isinstance(out, tuple) else out


def advance(layer, stream: Stream) -> Stream:
    """The stream leaving ``layer``."""
    return stream.map(lambda x, kw: run_layer(layer, x, kw))


def hessian_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """float64 for a float32 model (the tiny scale, exact to the reference loop); float32 for a
    16-bit model, as the reference GPTQ code accumulates and factorises H in float32."""
    return torch.float64 if model_dtype == torch.float32 else torch.float32


def second_moments(layer, x, kw, roles, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """``H = X^T X`` (in ``dtype``, summed over tokens) of each named sub-module's input; ``x``
    is one tensor or a :class:`Stream` of micro-batches (H summed over them)."""
    H, hooks = {}, []
    for role in roles:

        def hook(_mod, args, role=role):
            a = args[0].reshape(-1, args[0].shape[-1]).to(dtype)
            H[role] = H.get(role, 0) + a.T @ a

        hooks.append(layer.get_submodule(role).register_forward_pre_hook(hook))
    try:
        for xb, kwb in x if isinstance(x, Stream) else ((x, kw),):
            run_layer(layer, xb, kwb)
    finally:
        for h in hooks:
            h.remove()
    return H


def set_weight(module: nn.Linear, qw: QuantizedWeight) -> None:
    module.weight.data.copy_(qw.dequantize().to(module.weight.device, module.weight.dtype))


def _cpu(qw: QuantizedWeight) -> QuantizedWeight:
    return QuantizedWeight(qw.codes.cpu(), qw.scale.cpu(), qw.zero.cpu(), qw.bits, qw.group_size)


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class SequentialQuantizer:
    """Quantize a model layer by layer. ``method='rtn'`` needs no data; ``method='gptq'``
    fits each stage of a layer (q/k/v, o, gate/up, down) on the inputs produced by the
    already-quantized model (the GPTQ paper's sequential protocol). Subclasses override the
    hooks (``after_attention``, ``quantize_stage``, ``after_layer``) to add method steps.

    Memory at paper scale: with ``device`` set and the model on the CPU, one decoder layer at a
    time is moved to ``device``, quantized and moved back (``offload``); the calibration
    activations pass through it in micro-batches of ``batch_size`` sequences, kept on the CPU
    between layers; codes go to the CPU as soon as they are made. ``fp_stream=True`` keeps the
    float model's activations too (D²Quant's DAC), from a copy of the *current layer only*,
    taken before it is quantized (``self.fp_layer``): the whole model is never copied."""

    def __init__(
        self,
        model,
        plan,
        group_size,
        method="gptq",
        calib=None,
        clip=False,
        damp=0.01,
        fp_stream=False,
        batch_size=None,
        device=None,
    ):
        if method not in ("rtn", "gptq"):
            raise QuantConfigError(f"method {method!r} is not one of ['rtn', 'gptq']")
        if method == "gptq" and calib is None:
            raise QuantConfigError("method 'gptq' needs calibration tokens (--calib)")
        self.model, self.plan, self.group_size = model, plan, group_size
        self.method, self.calib, self.clip, self.damp = method, calib, clip, damp
        self.fp_stream, self.batch_size = fp_stream, batch_size
        home = model.get_input_embeddings().weight.device
        self.device = torch.device(device) if device is not None else home
        self.offload = not _same_device(self.device, home)
        self.h_dtype = hessian_dtype(model.dtype)
        self.quantized: dict[str, QuantizedWeight] = {}

    def quantize_weight(self, w, bits, H=None) -> QuantizedWeight:
        if self.method == "rtn":
            return rtn(w, bits, self.group_size, self.clip)
        return gptq(w, H, bits, self.group_size, damp=self.damp, clip=self.clip, dtype=self.h_dtype)

    def keep(self, name: str, qw: QuantizedWeight) -> None:
        self.quantized[name] = _cpu(qw) if self.offload else qw

    def run(self) -> dict[str, QuantizedWeight]:
        self.model.eval()
        if self.method == "rtn":
            for name, bits in self.plan.items():
                mod = self.model.get_submodule(name)
                w = mod.weight.data.to(self.device)
                qw = self.quantize_weight(w, bits)
                set_weight(mod, qw)
                self.keep(name, qw)
            return self.quantized
        store = torch.device("cpu") if self.offload else self.device
        x = Stream.embed(self.model, self.calib, self.batch_size, self.device, store)
        x_fp = x.clone() if self.fp_stream else None
        self.start(x)
        layers = decoder_layers(self.model)
        bar = tqdm(
            enumerate(layers),
            total=len(layers),
            desc=f"{self.method} layers",
            mininterval=2.0,
            dynamic_ncols=True,
        )
        for i, layer in bar:
            if self.offload:
                layer.to(self.device)
            fp_layer = copy.deepcopy(layer) if self.fp_stream else None
            for s, stage in enumerate(STAGES):
                roles = [r for r in stage if f"model.layers.{i}.{r}" in self.plan]
                if s == 2:
                    self.after_attention(i, layer, fp_layer, x, x_fp)
                if roles:
                    H = self.stage_moments(layer, fp_layer, roles, x, x_fp)
                    self.quantize_stage(i, layer, roles, H, x)
                    del H
            self.after_layer(i, layer, fp_layer, x, x_fp)
            x = advance(layer, x)
            if fp_layer is not None:
                x_fp = advance(fp_layer, x_fp)
            del fp_layer
            if self.offload:
                layer.to(self.model.get_input_embeddings().weight.device)
        return self.quantized

    def stage_moments(self, layer, fp_layer, roles, x, x_fp):
        """What ``quantize_stage`` gets as ``H``: each role's ``X^T X`` on the quantized stream
        (GPTAQ overrides it to add the float stream's cross term)."""
        return second_moments(layer, x, None, roles, self.h_dtype)

    def quantize_stage(self, i, layer, roles, H, x) -> None:
        for role in roles:
            name = f"model.layers.{i}.{role}"
            mod = layer.get_submodule(role)
            qw = self.quantize_weight(mod.weight.data, self.plan[name], H[role])
            set_weight(mod, qw)
            self.keep(name, qw)

    def start(self, x: Stream) -> None:
        """Hook: the calibration stream entering layer 0 is ready."""

    def after_attention(self, i, layer, fp_layer, x, x_fp) -> None:
        """Hook: the layer's attention is quantized, its MLP not yet (``x``, ``x_fp``: the
        quantized and float streams entering the layer, :class:`Stream`)."""

    def after_layer(self, i, layer, fp_layer, x, x_fp) -> None:
        """Hook: every planned module of the layer is quantized."""
