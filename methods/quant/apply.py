"""Quantize an artifact with a per-module bit plan:

``python -m methods.quant.apply <job options> --model A (--plan plan.json | --bits B)
--method {rtn,gptq,gptaq,gptq_rot,gptaq_rot} --group-size G [--calib text.txt]
[--record run.json]``

``gptaq``: GPTQ with asymmetric calibration (``methods.quant.gptaq``); ``*_rot``: the model is
first rotated QuaRot-style (``methods.quant.rotate``: norms fused, randomised Hadamard of the
residual stream seeded by the job's seed, per-head Hadamard on v/o), then quantized and saved in
the rotated basis (a plain model of the same class, ``tie_word_embeddings`` false).

Job options (``claimbench.job``): ``--scale --paper --variant --out`` and optionally
``--seed --threads --device --dtype --scale-file``. The model is loaded in the job's dtype on
its device; GPTQ runs each layer's Hessian and Cholesky in float64 (``methods.quant.gptq``).

Writes ``<out>/packed/`` (compressed-tensors pack-quantized), ``<out>/`` a copy decoded from it in
the job's dtype (loads with ``from_pretrained``; what ``eval_lm`` measures), ``<out>/plan.json``
and ``<out>/meta.json`` (last) with the real on-disk size and average bits per weight.
"""

from __future__ import annotations

import argparse
import json

from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric
from methods.quant.artifact import load_artifact, write_quantized_artifact
from methods.quant.gptaq import ALPHA as GPTAQ_ALPHA
from methods.quant.gptaq import GPTAQQuantizer
from methods.quant.model import (
    SequentialQuantizer,
    calib_source,
    calibration_ids,
    layerwise,
    plan_average_bits,
    read_plan,
    uniform_plan,
    validate_plan,
)
from methods.quant.quantizer import QuantConfigError, check_bits
from methods.quant.rotate import rotate_model

METHODS = ("rtn", "gptq", "gptaq", "gptq_rot", "gptaq_rot")
ROTATED = {"gptq_rot": "gptq", "gptaq_rot": "gptaq"}  # method -> quantizer after the rotation

# Papers whose jobs quantize through this entry point (``quant``: the shared layer itself).
PAPERS = ("quant", "d2quant", "nsds")


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="artifact folder holding meta.json")
    ap.add_argument("--group-size", type=int, required=True)
    ap.add_argument("--calib", help="calibration text (.txt, or .jsonl with a text field)")
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--clip", action="store_true", help="range-clipping search (1.00 -> 0.80)")
    ap.add_argument("--record", help="optional run record (suite 'quant': size and bits)")


def size_record(job: Job, meta: dict, method: str) -> dict:
    s = meta["size"]
    metrics = [
        metric("size", "avg_bits", s["avg_bits"], higher_is_better=False),
        metric("size", "nominal_bits", s["nominal_bits"], higher_is_better=False),
        metric("size", "file_bytes", s["file_bytes"], higher_is_better=False),
        metric("size", "size_ratio_vs_fp16", s["size_ratio_vs_fp16"], higher_is_better=False),
        metric("size", "reload_max_abs_diff", meta["reload_max_abs_diff"], higher_is_better=False),
    ]
    return job.record(
        suite="quant",
        method=method,
        base_model=meta.get("base_model", ""),
        tasks=["size"],
        config=meta["config"],
        metrics=metrics,
        provenance=meta["provenance"],
    )


def quantize_artifact(
    job: Job,
    model_path: str,
    method: str,
    group_size: int,
    *,
    plan_raw: dict | None = None,
    bits: int | None = None,
    plan_where: str = "plan",
    calib_path: str | None = None,
    n_calib: int = 32,
    seq_len: int = 128,
    damp: float = 0.01,
    clip: bool = False,
    meta_fields: dict | None = None,
    extra_files: dict | None = None,
) -> dict:
    """Quantize ``model_path`` with ``plan_raw`` (or the uniform plan at ``bits``) by ``method``
    and write the artifact to ``job.out``; returns its meta. ``meta_fields`` / ``extra_files``
    are a calling method's own additions (written before meta.json, which comes last)."""
    # Loaded on the CPU in the job's dtype; SequentialQuantizer moves one decoder layer at a time
    # to the job's device (calibration in micro-batches of calib.batch_size sequences).
    model, tok, base_meta = load_artifact(model_path, "cpu", job.torch_dtype)
    if bits is not None:
        plan_raw = uniform_plan(model, bits)
    plan = validate_plan(model, plan_raw, group_size, where=plan_where)
    calib = None
    cfg = job.config or {}
    source = calib_source(cfg, calib_path)
    base = ROTATED.get(method, method)
    if base in ("gptq", "gptaq"):
        if not source:
            raise QuantConfigError(f"--method {method} needs --calib <text file>")
        calib = calibration_ids(tok, source, n_calib, seq_len, job.seed)
    extra_config = {}
    if method in ROTATED:  # QuaRot-style rotation fused into the weights, before quantizing
        try:
            extra_config["rotation"] = rotate_model(model, job.seed, device=job.device)
        except QuantConfigError as e:
            raise QuantConfigError(f"{model_path}: --method {method}: {e}") from None
    # RTN fits each group in float32; GPTQ accumulates each stage's Hessian and runs its
    # Cholesky and updates in float64 for a float32 model, float32 for a 16-bit one
    # (methods.quant.gptq); the model itself stays in the job's dtype.
    if base == "gptaq":
        extra_config["gptaq_alpha"] = GPTAQ_ALPHA
        quantizer = GPTAQQuantizer(
            model, plan, group_size, calib, clip, damp, GPTAQ_ALPHA, **layerwise(job, cfg)
        )
    else:
        quantizer = SequentialQuantizer(
            model, plan, group_size, base, calib, clip, damp, **layerwise(job, cfg)
        )
    quantized = quantizer.run()
    config = {
        "method": method,
        "group_size": group_size,
        "clip": clip,
        "damp": damp,
        "n_calib": n_calib if calib is not None else 0,
        "seq_len": seq_len if calib is not None else 0,
        "plan_avg_bits": plan_average_bits(model, plan),
        **extra_config,
    }
    fields = {
        "method": method,
        "base_model": base_meta.get("base_model", base_meta.get("name", "")),
        "source": model_path,
        "config": config,
        "plan": plan,
        "inputs": {
            "plan": plan_where if bits is None else f"uniform {bits}",
            "calib": source if calib is not None else calib_path,
        },
    }
    fields.update(meta_fields or {})
    return write_quantized_artifact(
        job, model, tok, quantized, fields, extra_files={"plan.json": plan, **(extra_files or {})}
    )


def run(job: Job) -> None:
    args = job.args
    if args.plan:
        plan_raw, where = read_plan(args.plan), args.plan
    else:
        plan_raw, where = None, "--bits"
        check_bits(args.bits, "--bits")
    meta = quantize_artifact(
        job,
        args.model,
        args.method,
        args.group_size,
        plan_raw=plan_raw,
        bits=args.bits,
        plan_where=where,
        calib_path=args.calib,
        n_calib=args.n_calib,
        seq_len=args.seq_len,
        damp=args.damp,
        clip=args.clip,
    )
    if args.record:
        job.write_record(size_record(job, meta, args.method), args.record)
    print(json.dumps(meta["size"]))


def main(argv=None) -> None:
    ap = job_parser(__doc__, papers=PAPERS)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--plan", help='JSON {"model.layers.0.mlp.down_proj": 2, ...}')
    which.add_argument("--bits", type=int, help="uniform plan: every decoder Linear at this width")
    ap.add_argument("--method", choices=list(METHODS), required=True)
    add_common_args(ap)
    run_job(ap, run, argv, errors=(QuantConfigError, FileNotFoundError))


if __name__ == "__main__":
    main()
