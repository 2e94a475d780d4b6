"""Cross-run measurements of the noisy-rewards grid (checks N3-N5 of
methods/noisy_rewards/README.md), as one run record:
``python -m methods.noisy_rewards.summary <job options> --records R1 R2 ... --out summary.json``.

Reads the ``train`` records of the RL runs (variant names ``p<p>``, ``rpr``, ``weak_p<p>``, with
``-s<seed>`` for later seeds), averages each over seeds, and writes:

* ``peak_accuracy@p<p>`` (mean over seeds) and ``accuracy_vs_p`` as a series (the report plots
  accuracy against p; ``final`` beside ``peak``);
* ``steps_to_threshold@p<p>``: the first evaluation step whose greedy accuracy reaches
  start + 0.9 x (clean peak - start) (90% of the clean run's peak gain), per seed against
  that seed's clean run, averaged; a run that never reaches it counts as steps + eval_every
  (censored); ``n3_monotone_violations``: adjacent decreases of that curve over increasing p;
* ``n4_rpr_gain_fraction`` = (RPR peak - start) / (clean peak - start) (only when the clean run
  gained);
* ``robustness_gap@base`` / ``@weak`` = peak(p=0) - peak(p=0.4); N5's premise (the paper's
  weaker base is the less accurate one, App. A): ``start_accuracy@base`` / ``@weak`` (the p = 0
  runs' step-0 greedy accuracy, mean over seeds) and ``n5_premise_gap`` = start(B) -
  start(B_weak); ``n5_gap_difference`` = weak gap - base gap only when the premise holds
  (``n5_premise_gap`` > 0): with a B_weak at least as accurate as B the comparison does not
  test the paper's claim and is left out (the claim cannot be decided).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from claimbench.job import Job, job_parser, run_job
from claimbench.records import load_run_record, metric, series

NAME_RE = re.compile(r"^(?P<arm>.+?)(?:-s(?P<seed>\d+))?$")


def _metric(rec: dict, name: str) -> float:
    for m in rec["metrics"]:
        if m["metric"] == name:
            return m["value"]
    raise ValueError(f"{rec['variant']}: no metric {name!r} in its train record")


def _curve(rec: dict) -> tuple[list[float], list[float]]:
    for s in rec.get("series") or []:
        if s["name"] == "greedy accuracy":
            return s["x"], s["y"]
    raise ValueError(f"{rec['variant']}: no greedy accuracy curve in its train record")


def steps_to_threshold(x, y, threshold: float, censored: float) -> float:
    for step, acc in zip(x, y, strict=True):
        if step > 0 and acc >= threshold:
            return float(step)
    return float(censored)


def monotone_violations(values: list[float]) -> int:
    return sum(1 for a, b in zip(values, values[1:], strict=False) if b < a)


def summarise(records: list[dict]) -> tuple[list[dict], list[dict]]:
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for rec in records:
        m = NAME_RE.match(rec["variant"])
        runs[m["arm"]][rec["seed"]] = rec
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    metrics, curves = [], []

    def flip_arms(prefix: str) -> dict[float, str]:
        out = {}
        for arm in runs:
            mm = re.fullmatch(rf"{prefix}p(\d+(?:\.\d+)?)", arm)
            if mm:
                out[float(mm[1])] = arm
        return dict(sorted(out.items()))

    for group, prefix in (("base", ""), ("weak", "weak_")):
        arms = flip_arms(prefix)
        if not arms:
            continue
        peak = {
            p: mean([_metric(r, "peak_accuracy") for r in runs[a].values()])
            for p, a in arms.items()
        }
        final = {
            p: mean([_metric(r, "final_accuracy") for r in runs[a].values()])
            for p, a in arms.items()
        }
        for p in arms:
            metrics.append(metric(group, f"peak_accuracy@p{p}", peak[p]))
        ps = list(arms)
        curves += [
            series(
                f"peak accuracy vs p ({group})",
                ps,
                [peak[p] for p in ps],
                "flip probability p",
                "greedy exact match",
            ),
            series(
                f"final accuracy vs p ({group})",
                ps,
                [final[p] for p in ps],
                "flip probability p",
                "greedy exact match",
            ),
        ]
        if 0.0 in arms and 0.4 in arms:
            metrics.append(
                metric(group, "robustness_gap", peak[0.0] - peak[0.4], higher_is_better=False)
            )
        if 0.0 not in arms:
            continue
        clean = runs[arms[0.0]]
        metrics.append(
            metric(
                group,
                "start_accuracy",
                mean([_metric(r, "start_accuracy") for r in clean.values()]),
            )
        )
        steps = {}
        for p, arm in arms.items():
            per_seed = []
            for seed, rec in runs[arm].items():
                ref = clean.get(seed)
                if ref is None:
                    continue
                start, cpeak = _metric(ref, "start_accuracy"), _metric(ref, "peak_accuracy")
                x, y = _curve(rec)
                cens = x[-1] + (x[-1] - x[-2] if len(x) > 1 else 1)
                per_seed.append(steps_to_threshold(x, y, start + 0.9 * (cpeak - start), cens))
            if per_seed:
                steps[p] = mean(per_seed)
                metrics.append(
                    metric(group, f"steps_to_threshold@p{p}", steps[p], higher_is_better=False)
                )
        if group == "base" and steps:
            sp = list(steps)
            curves.append(
                series(
                    "steps to threshold vs p",
                    sp,
                    [steps[p] for p in sp],
                    "flip probability p",
                    "steps",
                )
            )
            metrics.append(
                metric(
                    "base",
                    "n3_monotone_violations",
                    monotone_violations([steps[p] for p in sp]),
                    higher_is_better=False,
                )
            )
        if group == "base" and "rpr" in runs:
            gains = []
            for seed, rec in runs["rpr"].items():
                ref = clean.get(seed)
                if ref is None:
                    continue
                start = _metric(ref, "start_accuracy")
                gains.append(
                    (_metric(rec, "peak_accuracy") - start, _metric(ref, "peak_accuracy") - start)
                )
            if gains:
                rg, cg = mean([g[0] for g in gains]), mean([g[1] for g in gains])
                metrics.append(metric("base", "clean_gain", cg))
                metrics.append(metric("base", "rpr_gain", rg))
                if cg > 0:
                    metrics.append(metric("base", "n4_rpr_gain_fraction", rg / cg))
    gaps = {m["task"]: m["value"] for m in metrics if m["metric"] == "robustness_gap"}
    starts = {m["task"]: m["value"] for m in metrics if m["metric"] == "start_accuracy"}
    if {"base", "weak"} <= set(starts):
        premise = starts["base"] - starts["weak"]
        metrics.append(metric("weak", "n5_premise_gap", premise))
        if {"base", "weak"} <= set(gaps) and premise > 0:
            metrics.append(metric("weak", "n5_gap_difference", gaps["weak"] - gaps["base"]))
    return metrics, curves


def run(job: Job) -> None:
    """One ``summary`` record (variant = the job's); its seed is the job's (the rule passes the
    grid's first seed, that of the first input record)."""
    paths = job.args.records
    records = [load_run_record(p) for p in paths]
    metrics, curves = summarise(records)
    if not metrics:
        raise ValueError(f"no flip-grid runs among {len(records)} records")
    rec = job.record(
        method="summary",
        base_model=records[0]["base_model"],
        suite="summary",
        tasks=sorted({m["task"] for m in metrics}),
        config={"records": [str(Path(p)) for p in paths]},
        metrics=metrics,
        series=curves,
    )
    job.write_record(rec)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["noisy_rewards"], out="the summary record to write")
    ap.add_argument("--records", nargs="+", required=True, help="train records of the RL runs")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
