"""Response lengths and the paper's token reduction from the stored lm-eval samples of the
paper-scale reasoning tasks (README.md, "Paper scale"; Table 1):

    python -m methods.realign.paper_tokens <job options> --model ART --samples S.jsonl \\
        --ref-samples REF.jsonl --ref-model REF_ART

``--samples`` is a variant's ``lm_eval.samples.jsonl`` (every sample's raw generation in
``raw_response``: the 8 samples per problem of the ``realign_*`` tasks); tokens are counted with
the variant's tokenizer (``--model``: its artifact folder), the reference's with its own.
Writes one ``realign_tokens`` record: per task ``mean_response_tokens`` (mean over all samples;
stderr over problems) and task ``all`` ``token_reduction`` = 100 x mean over the benchmarks of
(1 - len_variant / len_ref) (``metrics.token_reduction``; Table 1's lambda = 0.5 row: 17.42).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric
from methods.realign.metrics import mean_se, token_reduction

SUITE = "realign_tokens"
TASKS = ("realign_aime24", "realign_aime25", "realign_math500")  # Table 1's three benchmarks


def responses(path: str | Path) -> dict[str, list[list[str]]]:
    """{task: [the samples of one problem, ...]} of the ``TASKS`` rows of a samples file."""
    out: dict[str, list[list[str]]] = defaultdict(list)
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("task") not in TASKS:
            continue
        raw = row.get("raw_response")
        if raw is None:
            raise ValueError(f"{path}:{n}: task {row['task']} row has no raw_response")
        out[row["task"]].append([raw] if isinstance(raw, str) else list(raw))
    return dict(out)


def mean_tokens(per_task: dict[str, list[list[str]]], count) -> dict[str, tuple[float, float]]:
    """{task: (mean tokens over all samples, stderr over problems)}; ``count(text)`` = tokens."""
    out = {}
    for task, problems in per_task.items():
        per_problem = [sum(count(t) for t in p) / len(p) for p in problems if p]
        if not per_problem:
            raise ValueError(f"task {task}: no samples")
        out[task] = mean_se(per_problem)
    return out


def _counter(artifact: str):
    from transformers import AutoTokenizer

    from claimbench.models import resolve_pretrained

    tok = AutoTokenizer.from_pretrained(resolve_pretrained(artifact))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def run(job: Job) -> None:
    a = job.args
    ours = mean_tokens(responses(a.samples), _counter(a.model))
    ref = mean_tokens(responses(a.ref_samples), _counter(a.ref_model))
    missing = sorted(set(TASKS) - set(ours)) + sorted(set(TASKS) - set(ref))
    if missing:
        raise ValueError(f"no samples of task(s) {sorted(set(missing))} in --samples/--ref-samples")
    metrics = [
        metric(t, "mean_response_tokens", m, stderr=se, higher_is_better=None)
        for t, (m, se) in sorted(ours.items())
    ]
    red = token_reduction({t: v[0] for t, v in ours.items()}, {t: ref[t][0] for t in TASKS})
    metrics.append(metric("all", "token_reduction", red, higher_is_better=None))
    rec = job.record(
        method="tokens",
        base_model=job.variant,
        suite=SUITE,
        tasks=sorted({m["task"] for m in metrics}),
        config={"tasks": list(TASKS), "samples": str(a.samples), "ref_samples": str(a.ref_samples)},
        metrics=metrics,
    )
    job.write_record(rec)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["realign"], out="the realign_tokens record this job writes")
    ap.add_argument("--model", required=True, help="the variant's artifact folder (tokenizer)")
    ap.add_argument("--samples", required=True, help="the variant's lm_eval.samples.jsonl")
    ap.add_argument("--ref-model", required=True, help="the reference's artifact folder")
    ap.add_argument("--ref-samples", required=True, help="the reference's lm_eval.samples.jsonl")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
