"""NSDS command line (one process per Snakemake job; every subcommand is a ``claimbench.job``):

    python -m methods.nsds.cli scores   <job> --model A --methods nsds,zd,... [--calib train.txt]
    python -m methods.nsds.cli study    <job> --model A --scores D --text valid.jsonl --details F
    python -m methods.nsds.cli quantize <job> --model A --scores D --method nsds --budget 3 ...
    python -m methods.nsds.cli import-scores <job> --model A --method mi --sensitivity S
    python -m methods.nsds.cli draws    <job> --records d0/lm_eval.json,d1/lm_eval.json,...

``<job>`` is ``--scale --paper nsds --variant --out`` (and optionally ``--seed --threads
--device --dtype --scale-file``). Settings come from the scale's ``papers.nsds`` section
(``job.config``; defaults in config/schema/papers/nsds.schema.yaml): the NSDS options, the
calibration and study windows, the study's methods and budgets, the backend and group size.
Models load in the job's dtype on its device.

``scores`` writes ``<out>/<method>.json`` (per-layer scores and every intermediate) and
``<out>/meta.json`` (last). ``quantize`` turns one method's scores into a layer-wise bit plan and
has the shared quantization layer (``methods.quant.apply``) build the packed artifact at ``<out>``
with the layer scores beside it (``layer_scores.json``; meta.json last).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from claimbench.io import atomic_write_json, atomic_write_jsonl
from claimbench.job import Job, add_job_options, run_job
from claimbench.models import read_meta, resolve_pretrained
from claimbench.records import metric, series
from methods.nsds.allocate import (
    BudgetError,
    average_bits,
    layer_bits,
    plan_from_bits,
    uniform_bits,
)
from methods.nsds.baselines import random_scores
from methods.nsds.methods import IMPORTED, check_methods, score_all
from methods.nsds.scores import NSDSInputError, options_from
from methods.quant.quantizer import QuantConfigError

USER_ERRORS = (NSDSInputError, BudgetError, QuantConfigError, FileNotFoundError)


def _load(path: str, job: Job):
    """(model, tokenizer, meta) of an artifact, the model in the job's dtype on its device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(src, **job.load_kwargs()).to(job.device).eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(src), read_meta(path)


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


def cmd_scores(job: Job) -> None:
    args, cfg = job.args, job.config
    names = check_methods(args.methods.split(","), "--methods")
    n_calib, seq_len = cfg["calib"]["n"], cfg["calib"]["seq_len"]
    model, tok, src_meta = _load(args.model, job)
    calib = None
    if "lim" in names:
        if not args.calib:
            raise NSDSInputError("method lim needs --calib <text file>")
        calib = text_windows(tok, args.calib, n_calib, seq_len).to(job.device)
    # NSDS's SVDs and kurtoses run per matrix in float64 (methods.nsds.scores); the model stays
    # in the job's dtype.
    results = score_all(model, names, cfg["nsds"], calib, job.seed)
    job.out.mkdir(parents=True, exist_ok=True)
    for name, res in results.items():
        atomic_write_json(job.out / f"{name}.json", {"method": name, **res})
    job.write_meta(
        kind="layer_scores",
        method="scores",
        source=args.model,
        base_model=src_meta.get("base_model", src_meta.get("name", "")),
        methods=sorted(results),
        nsds_options=cfg["nsds"],
        calibration={"file": args.calib, "n": n_calib, "seq_len": seq_len}
        if calib is not None
        else None,
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


def cmd_import_scores(job: Job) -> None:
    """Layer scores of an imported method (``mi``) from another suite's sensitivity file."""
    args = job.args
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
        job.out,
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


def _unembed_stats(folder: str, model, energy: float) -> dict:
    """r/d of the unembedding subspace and the spread of the writing-density weights, from the
    NSDS scores (``<folder>/nsds.json``); scores written before these were kept give r/d from
    the model's lm_head alone (no β_WD)."""
    from methods.nsds.scores import unembedding_stats, unembedding_subspace

    p = Path(folder) / "nsds.json"
    stats = (json.loads(p.read_text()).get("nsds") or {}).get("unembed") if p.exists() else None
    if stats:
        return stats
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return unembedding_stats(unembedding_subspace(head.weight.detach(), energy), [], tied)


def _unembed_metrics(u: dict) -> list[dict]:
    """Metrics of task ``unembed``: is writing density informative on this source?"""
    rows = [
        metric("unembed", "rank_ratio", u["rank_ratio"], n=u["dim"], higher_is_better=None),
        metric("unembed", "rank", u["rank"], higher_is_better=None),
        metric("unembed", "dim", u["dim"], higher_is_better=None),
        metric("unembed", "tied", float(u["tied"]), higher_is_better=None),
    ]
    for k in ("wd_beta_mean", "wd_beta_min", "wd_beta_max"):
        if u.get(k) is not None:
            rows.append(metric("unembed", k, u[k], n=u["wd_beta_n"], higher_is_better=None))
    return rows


def _minmax(s) -> list[float]:
    s = np.asarray(s, dtype=np.float64)
    span = s.max() - s.min()
    return ((s - s.min()) / span if span > 0 else np.zeros_like(s)).tolist()


def cmd_study(job: Job) -> None:
    from methods.nsds.study import run_study

    args, cfg = job.args, job.config
    names = [n for n in check_methods(cfg["study_methods"], "study_methods") if n != "uniform"]
    budgets = [float(b) for b in cfg["study_budgets"]]
    for b in budgets:
        layer_bits([0.0], b)  # bad budgets fail before any work
    group_size, n_random = cfg["group_size"], cfg["n_random"]
    n_windows, seq_len = cfg["study"]["n_windows"], cfg["study"]["seq_len"]
    model, tok, src_meta = _load(args.model, job)
    windows = text_windows(tok, args.text, n_windows, seq_len).to(job.device)
    scores = _read_scores(args.scores, names)
    checkpoint = Path(args.details).with_name(f".{Path(args.details).name}.plans.jsonl")
    # The study keeps each projection's original weight (in the job's dtype) to swap RTN copies
    # in and out; each RTN copy is computed in float32 per matrix (methods.quant.quantizer).
    res = run_study(
        model, windows, scores, budgets, group_size, n_random, job.seed, checkpoint=checkpoint
    )
    metrics = [
        metric("fp", "ppl", res["fp_ppl"], n=res["n_windows"], higher_is_better=False),
        metric("all_high", "ppl", res["all_high_ppl"], higher_is_better=False),
        metric("all_low", "ppl", res["all_low_ppl"], higher_is_better=False),
    ]
    for m, rho in res["spearman"].items():
        metrics.append(metric(m, "spearman_damage", rho, n=res["n_layers"], higher_is_better=True))
    if "nsds" in names:
        energy = options_from(cfg.get("nsds")).energy
        metrics.extend(_unembed_metrics(_unembed_stats(args.scores, model, energy)))
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
            f"{job.variant} · oracle damage per layer (ΔPPL, layer at {2} bits, rest 4)",
            list(range(n)),
            res["oracle_damage"],
            x_label="layer",
            y_label="ΔPPL",
        )
    ]
    for m in [x for x in ("nsds", "nsds_nv", "nsds_se", "zd", "kurtboost", "lim") if x in scores]:
        sers.append(
            series(
                f"{job.variant} · {m} layer score (min-max)",
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
    record = job.record(
        suite="alloc",
        method="study",
        base_model=src_meta.get("base_model", src_meta.get("name", "")),
        tasks=sorted({m["task"] for m in metrics}),
        config={
            "budgets": budgets,
            "group_size": group_size,
            "quantizer": "rtn (methods.quant.quantizer), asymmetric, in memory",
            "n_random": n_random,
            "n_windows": res["n_windows"],
            "seq_len": seq_len,
            "text": args.text,
            "methods": names,
        },
        metrics=metrics,
        samples=job.out.name.replace(".json", ".samples.jsonl"),
        series=sers,
    )
    atomic_write_jsonl(job.out.with_suffix(".samples.jsonl"), samples)
    atomic_write_json(args.details, {"source": args.model, "variant": job.variant, **res})
    job.write_record(record)
    checkpoint.unlink(missing_ok=True)  # the results are written; a rerun starts afresh


def cmd_quantize(job: Job) -> None:
    from methods.quant.apply import quantize_artifact

    args, cfg = job.args, job.config
    b, backend, group_size = args.budget, cfg["backend"], cfg["group_size"]
    src_meta = read_meta(args.model)
    draw = args.draw
    if draw < 0 or (draw and args.method != "random"):
        raise NSDSInputError(f"--draw {draw}: only method random takes a draw >= 1")
    n_layers = int(
        json.loads((Path(resolve_pretrained(args.model)) / "config.json").read_text())[
            "num_hidden_layers"
        ]
    )
    if args.method == "uniform":
        bits = uniform_bits(n_layers, b)
        scores = None
    else:
        check_methods([args.method], "--method")
        if draw:
            # draw k of the random control: its own ranking (seed + k); the GPTQ calibration
            # windows stay those of the job's seed, so the draws differ only in their plans
            scores = random_scores(n_layers, job.seed + draw)
        else:
            scores = _read_scores(args.scores, [args.method])[args.method]
        bits = layer_bits(scores, b)
    plan = plan_from_bits(bits)
    layer_scores = {
        "method": args.method,
        "budget": b,
        "scores": scores,
        "bits": bits,
        "avg_bits_nominal": average_bits(bits),
        "n_high": sum(1 for x in bits if x == max(bits)) if len(set(bits)) > 1 else 0,
    }
    calib = {}
    if backend == "gptq":
        calib = {
            "calib_path": args.calib,
            "n_calib": cfg["calib"]["n"],
            "seq_len": cfg["calib"]["seq_len"],
        }
    meta = quantize_artifact(
        job,
        args.model,
        backend,
        group_size,
        plan_raw=plan,
        plan_where=f"{args.method} allocation at {b:g} bits (layer_scores.json)",
        **calib,
        meta_fields={
            "method": args.method,
            "allocation": {
                "method": args.method,
                "budget": b,
                "backend": backend,
                "bits": bits,
                **({"draw": draw, "random_seed": job.seed + draw} if draw else {}),
            },
            "nsds_source_meta": {k: src_meta.get(k) for k in ("name", "base_model", "kind")},
        },
        extra_files={"layer_scores.json": layer_scores},
    )
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
    record = job.record(
        suite="plan",
        method=args.method,
        base_model=meta.get("base_model", ""),
        tasks=["plan", "size"],
        config={
            "budget": b,
            "backend": backend,
            "group_size": group_size,
            **({"draw": draw, "random_seed": job.seed + draw} if draw else {}),
        },
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
        series=sers,
    )
    job.write_record(record, args.record)


def draws_summary(records: list[dict]) -> list[dict]:
    """Median, min, max and spread (max - min) over the draws of the random control of every
    (task, metric) that each draw's record holds; n = the number of draws."""
    keys = [(m["task"], m["metric"]) for m in records[0]["metrics"]]
    values = {k: [] for k in keys}
    for r in records:
        got = {(m["task"], m["metric"]): m for m in r["metrics"]}
        for k in keys:
            if k in got:
                values[k].append(got[k])
    out = []
    for (task, name), rows in values.items():
        if len(rows) != len(records):
            continue
        v = np.asarray([row["value"] for row in rows], dtype=np.float64)
        hib = rows[0]["higher_is_better"]
        for stat, x, h in (
            ("median", np.median(v), hib),
            ("min", v.min(), hib),
            ("max", v.max(), hib),
            ("spread", v.max() - v.min(), None),
        ):
            out.append(metric(task, f"{name}_{stat}", float(x), n=len(v), higher_is_better=h))
    return out


def cmd_draws(job: Job) -> None:
    """One record (suite ``random_draws``) summarising the random control's packed draws."""
    from claimbench.records import load_run_record

    args = job.args
    paths = args.records.split(",")
    if len(paths) < 2:
        raise NSDSInputError(f"--records {args.records!r}: expected two draws or more")
    records = [load_run_record(p) for p in paths]
    metrics = draws_summary(records)
    if not metrics:
        raise NSDSInputError(f"--records {args.records!r}: no metric common to every draw")
    record = job.record(
        suite="random_draws",
        method="random",
        base_model=records[0].get("base_model", ""),
        config={
            "draws": [r["variant"] for r in records],
            "suite": sorted({r["suite"] for r in records}),
        },
        metrics=metrics,
    )
    job.write_record(record)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def job_sub(name, help, out):
        return add_job_options(sub.add_parser(name, help=help), papers=["nsds"], out=out)

    p = job_sub("scores", "per-layer scores of every method", "scores folder")
    p.add_argument("--model", required=True)
    p.add_argument("--methods", required=True)
    p.add_argument("--calib", help="calibration text for the calibration baselines (LIM)")
    p.set_defaults(run=cmd_scores)

    p = job_sub("study", "oracle damage + in-memory allocation study", "run record (suite alloc)")
    p.add_argument("--model", required=True)
    p.add_argument("--scores", required=True, help="folder written by `scores`")
    p.add_argument("--text", required=True, help="held-out text (.jsonl with text, or .txt)")
    p.add_argument("--details", required=True, help="every measurement of the study (JSON)")
    p.set_defaults(run=cmd_study)

    p = job_sub(
        "import-scores",
        "layer scores from another suite's sensitivity file",
        "<scores folder>/<method>.json",
    )
    p.add_argument("--model", required=True, help="the model the sensitivity was measured on")
    p.add_argument("--method", required=True, help=f"one of {list(IMPORTED)}")
    p.add_argument("--sensitivity", required=True, help="claimbench.layer_sensitivity/1 JSON")
    p.set_defaults(run=cmd_import_scores)

    p = job_sub("quantize", "bit plan from one method's scores + packed artifact", "artifact")
    p.add_argument("--model", required=True)
    p.add_argument("--scores", help="folder written by `scores` (not needed for uniform)")
    p.add_argument("--method", required=True)
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--calib", help="calibration text (backend gptq)")
    p.add_argument("--source", required=True, help="source name (labels)")
    p.add_argument("--record", required=True, help="run record of the plan (suite plan)")
    p.add_argument(
        "--draw",
        type=int,
        default=0,
        help="method random: draw k >= 1 ranks layers with seed + k (0: the scores folder's)",
    )
    p.set_defaults(run=cmd_quantize)

    p = job_sub("draws", "median and spread over the random control's draws", "run record")
    p.add_argument("--records", required=True, help="comma-separated records, one per draw")
    p.set_defaults(run=cmd_draws)
    return ap


def main(argv=None) -> None:
    run_job(build_parser(), None, argv, errors=USER_ERRORS)


if __name__ == "__main__":
    main()
