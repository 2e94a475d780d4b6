"""The ``realign_decode`` suite: greedy decoding on the arithmetic test set, scored per family
(exact match, mean output tokens, truncation and format-failure rates) and, against the
reference's record, the paper's token reduction. One run record per (artifact or decoding
setting, suite) plus per-sample rows (``metrics``: exact_match, output_tokens) for paired checks.

    python -m methods.realign.evaluate single --model DIR --variant ref ...
    python -m methods.realign.evaluate dera --ref DIR --aligned DIR --lams 0.5,1,2 ...

InRa's dual-path records are written by ``methods.realign.train inra`` (same contract).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.entry import add_run_options, run_entry
from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.records import load_run_record, make_run_record, metric, write_run_record
from methods.posttrain.models import check_same_tokenizer, load_model, read_meta
from methods.posttrain.rewards import extract_answer, load_problems
from methods.realign.decode import Decoded, batched, mixed_greedy, single_greedy
from methods.realign.fusion import check_lambda
from methods.realign.metrics import mean_se, token_reduction

SUITE = "realign_decode"


def score(problems: list[dict], dec: Decoded) -> tuple[list[dict], dict[str, float], list[dict]]:
    """(metric rows, mean output tokens per family, sample rows)."""
    fams = sorted({p["family"] for p in problems})
    metrics, lengths, rows = [], {}, []
    per = {f: {"em": [], "len": [], "trunc": [], "fail": []} for f in fams}
    for i, (p, text, n, tr) in enumerate(
        zip(problems, dec.texts, dec.n_tokens, dec.truncated, strict=True)
    ):
        got = extract_answer(text)
        em = float(got is not None and got == int(p["answer"]))
        d = per[p["family"]]
        d["em"].append(em)
        d["len"].append(float(n))
        d["trunc"].append(float(tr))
        d["fail"].append(float(got is None))
        rows.append(
            {
                "task": p["family"],
                "doc_id": i,  # position in the (filtered) test list; the problem id is doc_hash
                "doc_hash": p["id"],
                "prompt": p["prompt"],
                "target": str(p["answer"]),
                "response": text,
                "metrics": {"exact_match": em, "output_tokens": float(n)},
            }
        )
    all_em, all_len = [], []
    for f in fams:
        d = per[f]
        em, em_se = mean_se(d["em"])
        ln, ln_se = mean_se(d["len"])
        n = len(d["em"])
        lengths[f] = ln
        all_em += d["em"]
        all_len += d["len"]
        metrics += [
            metric(f, "exact_match", em, stderr=em_se, n=n, higher_is_better=True),
            metric(f, "mean_output_tokens", ln, stderr=ln_se, n=n, higher_is_better=None),
            metric(f, "truncation_rate", mean_se(d["trunc"])[0], n=n, higher_is_better=False),
            metric(f, "format_failure_rate", mean_se(d["fail"])[0], n=n, higher_is_better=False),
        ]
    em, em_se = mean_se(all_em)
    ln, ln_se = mean_se(all_len)
    metrics += [
        metric("all", "exact_match", em, stderr=em_se, n=len(all_em), higher_is_better=True),
        metric("all", "mean_output_tokens", ln, stderr=ln_se, n=len(all_len)),
    ]
    return metrics, lengths, rows


def ref_lengths(record_path: str | Path) -> dict[str, float]:
    """Mean output tokens per family from the reference's decode record."""
    rec = load_run_record(record_path)
    return {
        m["task"]: m["value"]
        for m in rec["metrics"]
        if m["metric"] == "mean_output_tokens" and m["task"] != "all"
    }


def write_decode_record(
    out: str | Path,
    *,
    problems: list[dict],
    dec: Decoded,
    scale: str,
    method: str,
    variant: str,
    base_model: str,
    seed: int,
    config: dict,
    test_path: str,
    started_at: str,
    wall_s: float,
    ref_record: str | None = None,
    extra: list[dict] | None = None,
) -> dict:
    metrics, lengths, rows = score(problems, dec)
    if ref_record:
        red = token_reduction(lengths, ref_lengths(ref_record))
        metrics.append(metric("all", "token_reduction", red, n=len(problems)))
    metrics += extra or []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = out.with_suffix(".samples.jsonl").name
    atomic_write_jsonl(out.parent / samples, rows)
    rec = make_run_record(
        scale=scale,
        paper="realign",
        method=method,
        variant=variant,
        base_model=base_model,
        suite=SUITE,
        tasks=sorted({p["family"] for p in problems}) + ["all"],
        seed=seed,
        config=config,
        metrics=metrics,
        provenance=provenance.capture(started_at, wall_s),
        task_hashes={"all": sha256_file(test_path)[:16]},
        samples=samples,
    )
    write_run_record(out, rec)
    return rec


def test_problems(path: str, families: list[str] | None, limit: int | None) -> list[dict]:
    rows = load_problems(path, families)
    return rows[:limit] if limit else rows


def decode_single(model, tok, problems, cfg) -> Decoded:
    return batched(
        lambda ps: single_greedy(model, tok, ps, max_new_tokens=cfg["max_new_tokens"]),
        [p["prompt"] for p in problems],
        cfg.get("batch_size", 64),
    )


def decode_mixed(path_u, path_a, lam, tok, problems, cfg) -> Decoded:
    return batched(
        lambda ps: mixed_greedy(path_u, path_a, lam, tok, ps, max_new_tokens=cfg["max_new_tokens"]),
        [p["prompt"] for p in problems],
        cfg.get("batch_size", 64),
    )


def parse_lams(text: str) -> list[float]:
    return [check_lambda(x) for x in text.split(",") if x.strip()]


def lam_name(lam: float) -> str:
    return f"{float(lam):g}"


def run(args) -> None:
    cfg = json.loads(args.config)
    torch.set_num_threads(args.threads)
    problems = test_problems(args.test, cfg.get("families"), cfg.get("limit"))
    if args.what == "single":
        with provenance.timed() as t:
            model, tok = load_model(args.model, device=args.device)
            dec = decode_single(model, tok, problems, cfg)
        meta = read_meta(args.model)
        write_decode_record(
            args.out,
            problems=problems,
            dec=dec,
            scale=args.scale,
            method=meta.get("method", "realign"),
            variant=args.variant,
            base_model=meta.get("base_model", args.variant),
            seed=args.seed,
            config={**cfg, "decode": "greedy", "paths": 1},
            test_path=args.test,
            started_at=t["started_at"],
            wall_s=t["wall_s"],
            ref_record=args.ref_record or None,
        )
        return
    # DeRa: decode-time mixing of the reference's and the aligned model's logits.
    lams = parse_lams(args.lams)
    outs = args.out.split(",")
    if len(outs) != len(lams):
        raise ValueError(f"dera: {len(lams)} lambdas but {len(outs)} output records")
    ref, tok = load_model(args.ref, device=args.device)
    aligned, tok_a = load_model(args.aligned, device=args.device)
    check_same_tokenizer(tok, tok_a, "aligned model")
    for lam, out in zip(lams, outs, strict=True):
        with provenance.timed() as t:
            dec = decode_mixed((ref, None), (aligned, None), lam, tok, problems, cfg)
        write_decode_record(
            out,
            problems=problems,
            dec=dec,
            scale=args.scale,
            method="dera",
            variant=f"dera-lam{lam_name(lam)}",
            base_model=read_meta(args.ref).get("name", "ref"),
            seed=args.seed,
            config={**cfg, "decode": "greedy", "paths": 2, "lambda": lam},
            test_path=args.test,
            started_at=t["started_at"],
            wall_s=t["wall_s"],
            ref_record=args.ref_record or None,
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("what", choices=["single", "dera"])
    ap.add_argument("--model", default="")
    ap.add_argument("--ref", default="")
    ap.add_argument("--aligned", default="")
    ap.add_argument("--lams", default="")
    ap.add_argument("--variant", default="")
    ap.add_argument("--test", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True, help="record path (dera: one per lambda, commas)")
    ap.add_argument("--ref-record", default="", help="the reference's decode record")
    add_run_options(ap)
    run_entry(ap, run, argv)


if __name__ == "__main__":
    main()
