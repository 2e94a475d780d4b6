"""Quantize an artifact with a per-module bit plan:

``python -m methods.quant.apply --model A --plan plan.json --method {rtn,gptq} --group-size G
[--calib text.txt] --out B [--record run.json --scale S --paper P --variant V]``

Writes ``B/packed/`` (compressed-tensors pack-quantized), ``B/`` a float32 copy decoded from
it (loads with ``from_pretrained``; what ``eval_lm`` measures), ``B/plan.json`` and
``B/meta.json`` (last) with the real on-disk size and average bits per weight.
"""

from __future__ import annotations

import argparse
import json

import torch

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.records import make_run_record, metric, write_run_record
from methods.quant.artifact import load_artifact, write_quantized_artifact
from methods.quant.model import (
    SequentialQuantizer,
    calibration_ids,
    plan_average_bits,
    read_plan,
    validate_plan,
)
from methods.quant.quantizer import QuantConfigError


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="artifact folder holding meta.json")
    ap.add_argument("--group-size", type=int, required=True)
    ap.add_argument("--calib", help="calibration text (.txt, or .jsonl with a text field)")
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--clip", action="store_true", help="range-clipping search (1.00 -> 0.80)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--record", help="optional run record (suite 'quant': size and bits)")
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--paper", default="quant")
    ap.add_argument("--variant")


def size_record(args, meta: dict, method: str) -> dict:
    s = meta["size"]
    metrics = [
        metric("size", "avg_bits", s["avg_bits"], higher_is_better=False),
        metric("size", "nominal_bits", s["nominal_bits"], higher_is_better=False),
        metric("size", "file_bytes", s["file_bytes"], higher_is_better=False),
        metric("size", "size_ratio_vs_fp16", s["size_ratio_vs_fp16"], higher_is_better=False),
        metric("size", "reload_max_abs_diff", meta["reload_max_abs_diff"], higher_is_better=False),
    ]
    return make_run_record(
        scale=args.scale,
        paper=args.paper,
        method=method,
        variant=args.variant or method,
        base_model=meta.get("base_model", ""),
        suite="quant",
        tasks=["size"],
        seed=args.seed,
        config=meta["config"],
        metrics=metrics,
        provenance=meta["provenance"],
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--plan", required=True, help='JSON {"model.layers.0.mlp.down_proj": 2, ...}')
    ap.add_argument("--method", choices=["rtn", "gptq"], required=True)
    add_common_args(ap)
    args = ap.parse_args(argv)
    with exit_on_user_error(QuantConfigError, FileNotFoundError):
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        plan_raw = read_plan(args.plan)
        with provenance.timed() as t:
            model, tok, base_meta = load_artifact(args.model)
            plan = validate_plan(model, plan_raw, args.group_size, where=args.plan)
            calib = None
            if args.method == "gptq":
                if not args.calib:
                    raise QuantConfigError("--method gptq needs --calib <text file>")
                calib = calibration_ids(tok, args.calib, args.n_calib, args.seq_len, args.seed)
            quantized = SequentialQuantizer(
                model, plan, args.group_size, args.method, calib, args.clip, args.damp
            ).run()
        config = {
            "method": args.method,
            "group_size": args.group_size,
            "clip": args.clip,
            "damp": args.damp,
            "n_calib": args.n_calib if calib is not None else 0,
            "seq_len": args.seq_len if calib is not None else 0,
            "plan_avg_bits": plan_average_bits(model, plan),
        }
        meta = write_quantized_artifact(
            model,
            tok,
            quantized,
            args.out,
            {
                "method": args.method,
                "base_model": base_meta.get("base_model", base_meta.get("name", "")),
                "source": args.model,
                "seed": args.seed,
                "config": config,
                "plan": plan,
                "inputs": {"plan": args.plan, "calib": args.calib},
            },
            t["started_at"],
            t["wall_s"],
            extra_files={"plan.json": plan},
        )
        if args.record:
            write_run_record(args.record, size_record(args, meta, args.method))
        print(json.dumps(meta["size"]))


if __name__ == "__main__":
    main()
