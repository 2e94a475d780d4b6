"""NSDS command line (one process per Snakemake job):

    python -m methods.nsds.cli scores   --model A --methods nsds,zd,... [--calib train.txt] --out D
    python -m methods.nsds.cli study    --model A --scores D --text valid.jsonl --budgets 2.5,3 ...
    python -m methods.nsds.cli quantize --model A --scores D --method nsds --budget 3 --out B ...

``scores`` writes ``D/<method>.json`` (per-layer scores and every intermediate) and ``D/meta.json``
(last). ``quantize`` turns one method's scores into a layer-wise bit plan (plan.json), has the
shared quantization layer (``methods.quant.apply``) build the packed artifact, and adds the layer
scores to it (``layer_scores.json``, then meta.json rewritten last).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_json, atomic_write_jsonl
from claimbench.models import read_meta, resolve_pretrained
from claimbench.records import make_run_record, metric, series, write_run_record
from methods.nsds.allocate import (
    BudgetError,
    average_bits,
    layer_bits,
    plan_from_bits,
    uniform_bits,
)
from methods.nsds.methods import IMPORTED, check_methods, score_all
from methods.nsds.scores import NSDSInputError
from methods.quant.quantizer import QuantConfigError

USER_ERRORS = (NSDSInputError, BudgetError, QuantConfigError, FileNotFoundError)


def _load(path: str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(device).eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(src), read_meta(path)


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _text_ids(tok, path: str, max_chars: int) -> torch.Tensor:
    p = Path(path)
    if p.suffix == ".jsonl":
        text = "\n\n".join(
            json.loads(line)["text"] for line in p.read_text(encoding="utf-8").splitlines() if line
        )
    else:
        text = p.read_text(encoding="utf-8")
    text = text[:max_chars]
    ids: list[int] = []
    for block in (b for b in text.split("\n\n") if b.strip()):
        ids.extend(tok(block + "\n\n", add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def text_windows(tok, path: str, n: int, seq_len: int) -> torch.Tensor:
    """The first ``n`` non-overlapping windows of ``seq_len`` tokens (deterministic)."""
    ids = _text_ids(tok, path, max_chars=n * seq_len * 8)
    n_avail = len(ids) // seq_len
    if n_avail < 1:
        raise NSDSInputError(f"{path}: {len(ids)} tokens, fewer than one window of {seq_len}")
    n = min(n, n_avail)
    return ids[: n * seq_len].reshape(n, seq_len)


# --------------------------------------------------------------------------------------------


def cmd_scores(args) -> None:
    torch.set_num_threads(args.threads)
    names = check_methods(args.methods.split(","), "--methods")
    with provenance.timed() as t:
        model, tok, src_meta = _load(args.model, args.device)
        calib = None
        if "lim" in names:
            if not args.calib:
                raise NSDSInputError("method lim needs --calib <text file>")
            calib = text_windows(tok, args.calib, args.n_calib, args.seq_len).to(args.device)
        results = score_all(model, names, json.loads(args.nsds_options), calib, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, res in results.items():
        atomic_write_json(out / f"{name}.json", {"method": name, **res})
    atomic_write_json(
        out / "meta.json",
        {
            "kind": "layer_scores",
            "method": "scores",
            "source": args.model,
            "base_model": src_meta.get("base_model", src_meta.get("name", "")),
            "methods": sorted(results),
            "nsds_options": json.loads(args.nsds_options),
            "calibration": {"file": args.calib, "n": args.n_calib, "seq_len": args.seq_len}
            if calib is not None
            else None,
            "seed": args.seed,
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def layer_scores_from_sensitivity(sens: dict, n_layers: int) -> list[float]:
    """One score per decoder layer from a ``claimbench.layer_sensitivity/1`` file: the sum of
    the ΔNLL of the layer's modules (``model.layers.<l>.self_attn`` and ``.mlp``)."""
    if sens.get("format") != "claimbench.layer_sensitivity/1":
        raise NSDSInputError(
            f"format {sens.get('format')!r}: expected 'claimbench.layer_sensitivity/1'"
        )
    scores = [0.0] * n_layers
    seen = set()
    for name, value in sens["modules"].items():
        parts = name.split(".")
        if len(parts) < 3 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
            raise NSDSInputError(f"module {name!r}: expected model.layers.<l>.<module>")
        layer = int(parts[2])
        if layer >= n_layers:
            raise NSDSInputError(
                f"module {name!r}: layer {layer} out of range for a {n_layers}-layer model"
            )
        scores[layer] += float(value)
        seen.add(layer)
    missing = sorted(set(range(n_layers)) - seen)
    if missing:
        raise NSDSInputError(f"no sensitivity for layer(s) {missing}")
    return scores


def cmd_import_scores(args) -> None:
    """Layer scores of an imported method (``mi``) from another suite's sensitivity file."""
    if args.method not in IMPORTED:
        raise NSDSInputError(f"--method {args.method!r}: importable methods are {list(IMPORTED)}")
    path = Path(args.sensitivity)
    if not path.exists():
        raise NSDSInputError(f"--sensitivity {path}: no such file")
    sens = json.loads(path.read_text())
    n_layers = int(
        json.loads((Path(resolve_pretrained(args.model)) / "config.json").read_text())[
            "num_hidden_layers"
        ]
    )
    scores = layer_scores_from_sensitivity(sens, n_layers)
    atomic_write_json(
        Path(args.out),
        {
            "method": args.method,
            "scores": scores,
            "data_free": False,
            "imported_from": str(path),
            "score": sens.get("score"),
            "text": sens.get("text"),
        },
    )


def _read_scores(folder: str, names) -> dict[str, list[float]]:
    out = {}
    for n in names:
        p = Path(folder) / f"{n}.json"
        if not p.exists():
            raise FileNotFoundError(f"{p}: no layer scores for method {n!r} (run the scores job)")
        out[n] = json.loads(p.read_text())["scores"]
    return out


def _minmax(s) -> list[float]:
    s = np.asarray(s, dtype=np.float64)
    span = s.max() - s.min()
    return ((s - s.min()) / span if span > 0 else np.zeros_like(s)).tolist()


def cmd_study(args) -> None:
    from methods.nsds.study import run_study

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    names = [n for n in check_methods(args.methods.split(","), "--methods") if n != "uniform"]
    budgets = _floats(args.budgets)
    for b in budgets:
        layer_bits([0.0], b)  # bad budgets fail before any work
    with provenance.timed() as t:
        model, tok, src_meta = _load(args.model, args.device)
        windows = text_windows(tok, args.text, args.n_windows, args.seq_len).to(args.device)
        scores = _read_scores(args.scores, names)
        checkpoint = Path(args.details).with_name(f".{Path(args.details).name}.plans.jsonl")
        res = run_study(
            model,
            windows,
            scores,
            budgets,
            args.group_size,
            args.n_random,
            args.seed,
            checkpoint=checkpoint,
        )
    metrics = [
        metric("fp", "ppl", res["fp_ppl"], n=res["n_windows"], higher_is_better=False),
        metric("all_high", "ppl", res["all_high_ppl"], higher_is_better=False),
        metric("all_low", "ppl", res["all_low_ppl"], higher_is_better=False),
    ]
    for m, rho in res["spearman"].items():
        metrics.append(metric(m, "spearman_damage", rho, n=res["n_layers"], higher_is_better=True))
    data_free = [
        res["spearman"][m] for m in ("zd", "mse", "ewq", "kurtboost") if m in res["spearman"]
    ]
    if data_free:
        metrics.append(
            metric(
                "data_free_median",
                "spearman_damage",
                float(np.median(data_free)),
                higher_is_better=True,
            )
        )
    for key, row in res["alloc"].items():
        for m, v in row.items():
            if m == "random_all":
                metrics.append(
                    metric(
                        "random_median",
                        f"ppl_b{key}",
                        float(np.median(v)),
                        n=len(v),
                        higher_is_better=False,
                    )
                )
                metrics.append(
                    metric(
                        "random_mean",
                        f"ppl_b{key}",
                        float(np.mean(v)),
                        n=len(v),
                        higher_is_better=False,
                    )
                )
                if "nsds" in row:
                    worse = float(np.mean([r > row["nsds"]["ppl"] for r in v]))
                    metrics.append(
                        metric(
                            "nsds",
                            f"frac_random_worse_b{key}",
                            worse,
                            n=len(v),
                            higher_is_better=True,
                        )
                    )
            else:
                metrics.append(metric(m, f"ppl_b{key}", v["ppl"], higher_is_better=False))
    n = res["n_layers"]
    sers = [
        series(
            f"{args.variant} · oracle damage per layer (ΔPPL, layer at {2} bits, rest 4)",
            list(range(n)),
            res["oracle_damage"],
            x_label="layer",
            y_label="ΔPPL",
        )
    ]
    for m in [x for x in ("nsds", "nsds_nv", "nsds_se", "zd", "kurtboost", "lim") if x in scores]:
        sers.append(
            series(
                f"{args.variant} · {m} layer score (min-max)",
                list(range(n)),
                _minmax(scores[m]),
                x_label="layer",
                y_label="score",
            )
        )
    samples = [
        {
            "doc_id": i,
            "task": "oracle",
            "metrics": {"damage": res["oracle_damage"][i], **{m: scores[m][i] for m in scores}},
        }
        for i in range(n)
    ]
    record = make_run_record(
        scale=args.scale,
        paper="nsds",
        method="study",
        variant=args.variant,
        base_model=src_meta.get("base_model", src_meta.get("name", "")),
        suite="alloc",
        tasks=sorted({m["task"] for m in metrics}),
        seed=args.seed,
        config={
            "budgets": budgets,
            "group_size": args.group_size,
            "quantizer": "rtn (methods.quant.quantizer), asymmetric, in memory",
            "n_random": args.n_random,
            "n_windows": res["n_windows"],
            "seq_len": args.seq_len,
            "text": args.text,
            "methods": names,
        },
        metrics=metrics,
        provenance=provenance.capture(t["started_at"], t["wall_s"]),
        samples=Path(args.out).name.replace(".json", ".samples.jsonl"),
        series=sers,
    )
    atomic_write_jsonl(Path(args.out).with_suffix(".samples.jsonl"), samples)
    atomic_write_json(args.details, {"source": args.model, "variant": args.variant, **res})
    write_run_record(args.out, record)
    checkpoint.unlink(missing_ok=True)  # the results are written; a rerun starts afresh


def cmd_quantize(args) -> None:
    from methods.quant import apply as quant_apply

    b = args.budget
    with provenance.timed() as t:
        src_meta = read_meta(args.model)
        if args.method == "uniform":
            n_layers = int(
                json.loads((Path(resolve_pretrained(args.model)) / "config.json").read_text())[
                    "num_hidden_layers"
                ]
            )
            bits = uniform_bits(n_layers, b)
            scores = None
        else:
            check_methods([args.method], "--method")
            scores = _read_scores(args.scores, [args.method])[args.method]
            bits = layer_bits(scores, b)
        plan = plan_from_bits(bits)
        out = Path(args.out)
        side = out.parent / f".{out.name}.plan"
        side.mkdir(parents=True, exist_ok=True)
        plan_path = side / "plan.json"
        atomic_write_json(plan_path, plan)
        argv = [
            "--model", args.model, "--plan", str(plan_path), "--method", args.backend,
            "--group-size", str(args.group_size), "--seed", str(args.seed),
            "--threads", str(args.threads), "--out", str(out),
        ]  # fmt: skip
        if args.backend == "gptq":
            argv += [
                "--calib",
                args.calib,
                "--n-calib",
                str(args.n_calib),
                "--seq-len",
                str(args.seq_len),
            ]
        quant_apply.main(argv)
    layer_scores = {
        "method": args.method,
        "budget": b,
        "scores": scores,
        "bits": bits,
        "avg_bits_nominal": average_bits(bits),
        "n_high": sum(1 for x in bits if x == max(bits)) if len(set(bits)) > 1 else 0,
    }
    atomic_write_json(out / "layer_scores.json", layer_scores)
    meta = read_meta(out)
    meta.update(
        {
            "method": args.method,
            "allocation": {
                "method": args.method,
                "budget": b,
                "backend": args.backend,
                "bits": bits,
            },
            "nsds_source_meta": {k: src_meta.get(k) for k in ("name", "base_model", "kind")},
        }
    )
    atomic_write_json(out / "meta.json", meta)  # rewritten last: the artifact is complete
    shutil.rmtree(side, ignore_errors=True)
    n = len(bits)
    sers = [
        series(
            f"bits per layer · {args.source} b{b:g}",
            list(range(n)),
            bits,
            x_label="layer",
            y_label="bits",
        )
    ]
    if scores is not None:
        sers.append(
            series(
                f"layer score (min-max) · {args.source}",
                list(range(n)),
                _minmax(scores),
                x_label="layer",
                y_label="score",
            )
        )
    record = make_run_record(
        scale=args.scale,
        paper="nsds",
        method=args.method,
        variant=args.variant,
        base_model=meta.get("base_model", ""),
        suite="plan",
        tasks=["plan", "size"],
        seed=args.seed,
        config={"budget": b, "backend": args.backend, "group_size": args.group_size},
        metrics=[
            metric("plan", "avg_bits_nominal", average_bits(bits), higher_is_better=False),
            metric("plan", "n_high_layers", layer_scores["n_high"], higher_is_better=None),
            *(
                metric("size", k, meta["size"][k], higher_is_better=False)
                for k in ("avg_bits", "nominal_bits", "file_bytes", "size_ratio_vs_fp16")
            ),
            metric(
                "size", "reload_max_abs_diff", meta["reload_max_abs_diff"], higher_is_better=False
            ),
        ],
        provenance=provenance.capture(t["started_at"], t["wall_s"]),
        series=sers,
    )
    write_run_record(args.record, record)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--model", required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--scale", default="tiny")
        p.add_argument("--device", default="cpu")

    p = sub.add_parser("scores", help="per-layer scores of every method")
    common(p)
    p.add_argument("--methods", required=True)
    p.add_argument("--nsds-options", default="{}", help="JSON overrides of NSDSOptions")
    p.add_argument("--calib", help="calibration text for the calibration baselines (LIM)")
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_scores)

    p = sub.add_parser("study", help="oracle damage + in-memory allocation study")
    common(p)
    p.add_argument("--scores", required=True, help="folder written by `scores`")
    p.add_argument("--methods", required=True)
    p.add_argument("--budgets", required=True)
    p.add_argument("--text", required=True, help="held-out text (.jsonl with text, or .txt)")
    p.add_argument("--n-windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--group-size", type=int, required=True)
    p.add_argument("--n-random", type=int, default=20)
    p.add_argument("--variant", required=True)
    p.add_argument("--out", required=True, help="run record path (suite alloc)")
    p.add_argument("--details", required=True, help="every measurement of the study (JSON)")
    p.set_defaults(fn=cmd_study)

    p = sub.add_parser("import-scores", help="layer scores from another suite's sensitivity file")
    p.add_argument("--model", required=True, help="the model the sensitivity was measured on")
    p.add_argument("--method", required=True, help=f"one of {list(IMPORTED)}")
    p.add_argument("--sensitivity", required=True, help="claimbench.layer_sensitivity/1 JSON")
    p.add_argument("--out", required=True, help="<scores folder>/<method>.json")
    p.set_defaults(fn=cmd_import_scores)

    p = sub.add_parser("quantize", help="bit plan from one method's scores + packed artifact")
    common(p)
    p.add_argument("--scores", help="folder written by `scores` (not needed for uniform)")
    p.add_argument("--method", required=True)
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--backend", choices=["rtn", "gptq"], default="gptq")
    p.add_argument("--group-size", type=int, required=True)
    p.add_argument("--calib")
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--source", required=True, help="source name (labels)")
    p.add_argument("--variant", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--record", required=True, help="run record of the plan (suite plan)")
    p.set_defaults(fn=cmd_quantize)
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(*USER_ERRORS):
        args.fn(args)


if __name__ == "__main__":
    main()
