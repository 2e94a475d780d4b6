"""The lambda sweeps in one run record (suite ``realign_sweep``): length and exact match against
lambda for TrRa, DeRa and InRa as ``series`` (the report plots them) and the derived numbers of
the directional claims in ``claims.yaml`` (the paper's Table 1 and Figures 2-4; README.md):

* TrRa: increases of the mean length along increasing lambda (count, largest relative one),
  on the mean over the sweep's seeds (one run per lambda at tiny, 3 at small);
* TrRa vs DeRa: mean-length ratio and exact-match gap at each shared lambda;
* InRa: increases of the mean length along 0 <= lambda <= 1, and length(lambda<0) / length(0).

    python -m methods.realign.sweep --scale tiny --paper realign --variant sweep \\
        --records a.json,b.json,... --out sweep.json
"""

from __future__ import annotations

from pathlib import Path

from claimbench.job import Job, job_parser, run_job
from claimbench.records import load_run_record, metric, series
from methods.realign.metrics import monotone_violations


def _value(rec: dict, name: str, task: str = "all") -> float:
    for m in rec["metrics"]:
        if m["task"] == task and m["metric"] == name:
            return m["value"]
    raise ValueError(f"record {rec['variant']}: no metric {task}.{name}")


def _points(recs: list[dict], method: str) -> list[tuple[float, dict]]:
    pts = [
        (float(r["config"]["lambda"]) if "lambda" in r["config"] else None, r)
        for r in recs
        if r["method"] == method
    ]
    return sorted((lam, r) for lam, r in pts if lam is not None)


def _seed_mean(runs: list[dict]) -> dict:
    """The mean over seeds of one lambda's TrRa runs, as a record-like dict (metrics of task
    ``all``): the small scale's sweep runs 3 seeds and its checks read their means."""
    names = ("mean_output_tokens", "exact_match")
    return {
        "variant": runs[0]["variant"],
        "metrics": [
            {"task": "all", "metric": k, "value": sum(_value(r, k) for r in runs) / len(runs)}
            for k in names
        ],
    }


def build(recs: list[dict]) -> tuple[list[dict], list[dict]]:
    by_lam: dict[float, list[dict]] = {}
    for r in recs:
        v = r["variant"]
        if v.startswith("trra-lam") and r["method"] == "trra":
            lam = float(r["config"].get("lambda", v.removeprefix("trra-lam").split("-s")[0]))
            by_lam.setdefault(lam, []).append(r)
    trra = [(lam, _seed_mean(by_lam[lam])) for lam in sorted(by_lam)]
    n_seeds = min((len(v) for v in by_lam.values()), default=0)
    dera = _points(recs, "dera")
    inra = _points(recs, "inra")
    curves, metrics = [], []
    for name, pts in (("TrRa", trra), ("DeRa", dera), ("InRa", inra)):
        if not pts:
            continue
        lams = [lam for lam, _ in pts]
        label = f" (mean of {n_seeds} seeds)" if name == "TrRa" and n_seeds > 1 else ""
        curves.append(
            series(
                f"{name}: mean output tokens vs lambda",
                lams,
                [_value(r, "mean_output_tokens") for _, r in pts],
                "lambda",
                f"mean output tokens{label}",
            )
        )
        curves.append(
            series(
                f"{name}: exact match vs lambda",
                lams,
                [_value(r, "exact_match") for _, r in pts],
                "lambda",
                f"exact match{label}",
            )
        )
    if trra:
        count, worst = monotone_violations([_value(r, "mean_output_tokens") for _, r in trra])
        metrics += [
            metric("trra_sweep", "length_increases", count, n=len(trra)),
            metric("trra_sweep", "max_relative_length_increase", worst, n=len(trra)),
            metric("trra_sweep", "seeds", n_seeds, n=len(trra)),
        ]
    dmap = {lam: r for lam, r in dera}
    for lam, r in trra:
        if lam in dmap:
            d = dmap[lam]
            task = f"lam{lam:g}"
            metrics += [
                metric(
                    task,
                    "trra_over_dera_length",
                    _value(r, "mean_output_tokens") / _value(d, "mean_output_tokens"),
                ),
                metric(
                    task,
                    "trra_minus_dera_exact_match",
                    _value(r, "exact_match") - _value(d, "exact_match"),
                ),
            ]
    if inra:
        mono = [(lam, r) for lam, r in inra if 0.0 <= lam <= 1.0]
        count, worst = monotone_violations([_value(r, "mean_output_tokens") for _, r in mono])
        metrics += [
            metric("inra_sweep", "length_increases", count, n=len(mono)),
            metric("inra_sweep", "max_relative_length_increase", worst, n=len(mono)),
        ]
        zero = [r for lam, r in inra if lam == 0.0]
        neg = [r for lam, r in inra if lam < 0.0]
        if zero and neg:
            base = _value(zero[0], "mean_output_tokens")
            metrics.append(
                metric(
                    "inra_sweep",
                    "negative_over_zero_length",
                    min(_value(r, "mean_output_tokens") for r in neg) / base,
                )
            )
    return metrics, curves


def run(job: Job) -> None:
    paths = [p for p in job.args.records.split(",") if p]
    recs = [load_run_record(p) for p in paths]
    metrics, curves = build(recs)
    rec = job.record(
        method="sweep",
        base_model="ref",
        suite="realign_sweep",
        config={"records": sorted(Path(p).parent.name for p in paths)},
        metrics=metrics,
        series=curves,
    )
    job.write_record(rec)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["realign"], out="the sweep record this job writes")
    ap.add_argument("--records", required=True, help="comma-separated realign_decode records")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
