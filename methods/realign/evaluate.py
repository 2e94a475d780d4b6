"""The ``realign_decode`` suite: greedy decoding on the arithmetic test set, scored per family
(exact match, mean output tokens, truncation and format-failure rates) and, against the
reference's record, the paper's token reduction. One run record per (artifact or decoding
setting, suite) plus per-sample rows (``metrics``: exact_match, mean_output_tokens, the
metrics of task ``all`` they average to) for paired checks:
task ``all`` (the task of the claims' metrics and of the record's task hash), doc id = the
problem's line in the test file, the family kept in each row.

    python -m methods.realign.evaluate single --scale S --paper realign --variant ref \\
        --model DIR --test test_id.jsonl --out results/runs/S/realign/ref/realign_decode.json
    python -m methods.realign.evaluate dera --scale S --paper realign --variant dera \\
        --ref DIR --aligned DIR --test test_id.jsonl --out results/runs/S/realign

Decode settings: the job's ``papers.realign.decode`` and ``families``. ``dera`` decodes every
lambda of ``dera_lambdas`` and writes ``<out>/dera-lam<lambda>/realign_decode.json``. InRa's
dual-path records are written by ``methods.realign.train inra`` (same contract).
"""

from __future__ import annotations

import json
from pathlib import Path

from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import load_run_record, metric
from methods.posttrain.models import check_same_tokenizer, load_model, read_meta
from methods.posttrain.rewards import extract_answer, load_problems
from methods.realign.decode import Decoded, batched, mixed_greedy, single_greedy
from methods.realign.fusion import check_lambda
from methods.realign.metrics import mean_se, token_reduction

SUITE = "realign_decode"


def score(
    problems: list[dict], dec: Decoded, doc_ids: dict[str, int] | None = None
) -> tuple[list[dict], dict[str, float], list[dict]]:
    """(metric rows, mean output tokens per family, sample rows).

    The sample rows are per-document scores of task ``all`` (the task whose metrics the claims
    compare and whose hash the record holds), keyed by the problem's line in the test file
    (``doc_ids``: problem id -> line; default the position in ``problems``), so two runs on the
    same test file pair document by document whatever families or limit they decoded; each row
    keeps its ``family``."""
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
                "task": "all",
                "doc_id": i if doc_ids is None else doc_ids[p["id"]],
                "doc_hash": p["id"],
                "family": p["family"],
                "prompt": p["prompt"],
                "target": str(p["answer"]),
                "response": text,
                # named as the metrics they average to, so a check on either pairs
                "metrics": {"exact_match": em, "mean_output_tokens": float(n)},
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


def decode_record_path(runs: str | Path, variant: str) -> Path:
    """Where a job that decodes several settings writes one: ``<runs>/<variant>/<suite>.json``."""
    if not runs:
        raise ValueError("a job that writes one decode record per lambda needs their folder")
    return Path(runs) / variant / f"{SUITE}.json"


def decode_config(job: Job) -> dict:
    """The decode settings and families: the base of every decode record's config."""
    return {**job.config["decode"], "families": job.config["families"]}


def write_decode_record(
    job: Job,
    out: str | Path,
    *,
    problems: list[dict],
    dec: Decoded,
    method: str,
    base_model: str,
    config: dict,
    test_path: str,
    variant: str | None = None,
    ref_record: str | None = None,
    extra: list[dict] | None = None,
    wall_s: float | None = None,
) -> dict:
    """Score ``dec`` and write its record (``variant``: default the job's) and samples."""
    metrics, lengths, rows = score(problems, dec, problem_lines(test_path))
    if ref_record:
        red = token_reduction(lengths, ref_lengths(ref_record))
        metrics.append(metric("all", "token_reduction", red, n=len(problems)))
    metrics += extra or []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = out.with_suffix(".samples.jsonl").name
    atomic_write_jsonl(out.parent / samples, rows)
    rec = job.record(
        method=method,
        variant=variant,
        base_model=base_model,
        suite=SUITE,
        tasks=sorted({p["family"] for p in problems}) + ["all"],
        config=config,
        metrics=metrics,
        provenance=job.provenance(wall_s=wall_s),
        task_hashes={"all": sha256_file(test_path)[:16]},
        samples=samples,
    )
    job.write_record(rec, out)
    return rec


def problem_lines(path: str | Path) -> dict[str, int]:
    """Problem id -> its line (from 0) in the test file: the documents' ids in the samples."""
    ids: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                pid = json.loads(line)["id"]
                if pid in ids:
                    raise ValueError(f"{path}: line {i + 1}: id: {pid!r}: repeats a problem id")
                ids[pid] = i
    return ids


def test_problems(path: str, families: list[str] | None, limit: int | None) -> list[dict]:
    rows = load_problems(path, families)
    return rows[:limit] if limit else rows


def decode_single(model, tok, problems, cfg) -> Decoded:
    return batched(
        lambda ps: single_greedy(model, tok, ps, max_new_tokens=cfg["max_new_tokens"]),
        [p["prompt"] for p in problems],
        cfg["batch_size"],
    )


def decode_mixed(path_u, path_a, lam, tok, problems, cfg) -> Decoded:
    return batched(
        lambda ps: mixed_greedy(path_u, path_a, lam, tok, ps, max_new_tokens=cfg["max_new_tokens"]),
        [p["prompt"] for p in problems],
        cfg["batch_size"],
    )


def lam_name(lam: float) -> str:
    return f"{float(lam):g}"


def run_single(job: Job) -> None:
    args = job.args
    if not args.model:
        raise ValueError("single needs --model (the artifact folder to decode)")
    cfg = decode_config(job)
    problems = test_problems(args.test, cfg["families"], cfg.get("limit"))
    model, tok = load_model(args.model, device=job.device, dtype=job.torch_dtype)
    dec = decode_single(model, tok, problems, cfg)
    meta = read_meta(args.model)
    write_decode_record(
        job,
        job.out,
        problems=problems,
        dec=dec,
        method=meta.get("method", "realign"),
        base_model=meta.get("base_model", job.variant),
        config={**cfg, "decode": "greedy", "paths": 1},
        test_path=args.test,
        ref_record=args.ref_record or None,
    )


def run_dera(job: Job) -> None:
    """DeRa: decode-time mixing of the reference's and the aligned model's logits."""
    args = job.args
    if not (args.ref and args.aligned):
        raise ValueError("dera needs --ref and --aligned (the two models it mixes)")
    cfg = decode_config(job)
    problems = test_problems(args.test, cfg["families"], cfg.get("limit"))
    lams = [check_lambda(x) for x in job.config["dera_lambdas"]]
    ref, tok = load_model(args.ref, device=job.device, dtype=job.torch_dtype)
    aligned, tok_a = load_model(args.aligned, device=job.device, dtype=job.torch_dtype)
    check_same_tokenizer(tok, tok_a, "aligned model")
    for lam in lams:
        variant = f"dera-lam{lam_name(lam)}"
        t0 = job.wall_s
        dec = decode_mixed((ref, None), (aligned, None), lam, tok, problems, cfg)
        write_decode_record(
            job,
            decode_record_path(job.out, variant),
            problems=problems,
            dec=dec,
            method="dera",
            variant=variant,
            base_model=read_meta(args.ref).get("name", "ref"),
            config={**cfg, "decode": "greedy", "paths": 2, "lambda": lam},
            test_path=args.test,
            ref_record=args.ref_record or None,
            wall_s=job.wall_s - t0,
        )


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(
        __doc__,
        papers=["realign"],
        out="single: the record file; dera: the folder of the <variant>/ records",
    )
    ap.add_argument("what", choices=["single", "dera"])
    ap.add_argument("--model", default="", help="single: the artifact folder to decode")
    ap.add_argument("--ref", default="", help="dera: the reference model")
    ap.add_argument("--aligned", default="", help="dera: the aligned model")
    ap.add_argument("--test", required=True, help="test problems (JSONL)")
    ap.add_argument("--ref-record", default="", help="the reference's decode record")
    runs = {"single": run_single, "dera": run_dera}
    run_job(ap, lambda job: runs[job.args.what](job), argv)


if __name__ == "__main__":
    main()
