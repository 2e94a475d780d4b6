"""ExPO weight extrapolation baseline (paper section 4, Table 1; methods/gopd/README.md),
training-free: ``python -m methods.gopd.expo <job options> --student S --teacher T [--teacher T2]
--alpha 0.5 --valid V --record R [--eval-domains]``.

theta = theta_Tbar + alpha (theta_Tbar - theta_student), theta_Tbar the mean of the teachers'
weights (one teacher: the teacher itself), in the job's dtype. Writes a ``save_pretrained``
artifact, a ``train`` run record (validation exact match at the scale's
``papers.gopd.train.max_new_tokens``, per domain of ``papers.gopd.multi_teacher.domains`` with
``--eval-domains``; per-document scores in ``<record>.samples.jsonl``) and ``meta.json`` last.
"""

from __future__ import annotations

from pathlib import Path

from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric
from methods.gopd.baselines import check_alpha, expo_weights
from methods.gopd.train import domain_metrics, greedy_scores, problem_lines, valid_rows
from methods.posttrain.cli import save_artifact
from methods.posttrain.models import check_same_tokenizer, load_model, read_meta
from methods.posttrain.rewards import load_problems


def run_config(job: Job) -> dict:
    """The settings ExPO reads: the G-OPD runs' answer length, and the domains with
    ``--eval-domains``."""
    cfg = {"max_new_tokens": job.config["train"]["max_new_tokens"]}
    if job.args.eval_domains:
        mt = job.config.get("multi_teacher")
        if not mt:
            raise ValueError(
                f"--eval-domains needs papers.gopd.multi_teacher in the {job.scale} scale"
            )
        cfg["eval_domains"] = mt["domains"]
    return cfg


def run(job: Job) -> None:
    args = job.args
    cfg = run_config(job)
    alpha = check_alpha(args.alpha)
    load = {"device": job.device, "dtype": job.torch_dtype}
    student, tok = load_model(args.student, **load)
    teachers = []
    for i, path in enumerate(args.teacher):
        m, ttok = load_model(path, **load)
        check_same_tokenizer(tok, ttok, f"teacher {i}")
        teachers.append(m.state_dict())
    student.load_state_dict(expo_weights(student.state_dict(), teachers, alpha))
    save_artifact(student, tok, job.out, [])
    acc, per_doc = greedy_scores(student, tok, load_problems(args.valid), cfg["max_new_tokens"])
    per_domain, domain_rows = domain_metrics(student, tok, args.valid, cfg)
    samples = Path(args.record).with_suffix(".samples.jsonl")
    atomic_write_jsonl(
        samples, valid_rows("valid", per_doc, problem_lines(args.valid)) + domain_rows
    )
    prov = job.provenance(job.wall_s)
    metrics = [
        metric("valid", "greedy_exact_match", acc["accuracy"], n=acc["n"], higher_is_better=True),
        *per_domain,
    ]
    base_name = read_meta(args.student).get("name", Path(args.student).name)
    cfg_rec = {**cfg, "alpha": alpha, "teachers": list(args.teacher)}
    record = job.record(
        method="expo",
        base_model=base_name,
        suite="train",
        tasks=["valid", *(m["task"] for m in per_domain)],
        config=cfg_rec,
        metrics=metrics,
        provenance=prov,
        task_hashes={
            t: sha256_file(args.valid) for t in ["valid", *(m["task"] for m in per_domain)]
        },
        samples=samples.name,
    )
    job.write_record(record, args.record)
    job.write_meta(
        method="expo",
        base_model=base_name,
        inputs={"student": args.student, "teachers": list(args.teacher)},
        config=cfg_rec,
        provenance=prov,
    )


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["gopd"])
    ap.add_argument("--student", required=True, help="the student's artifact folder")
    ap.add_argument("--teacher", action="append", required=True, help="teacher artifact folder")
    ap.add_argument("--alpha", type=float, required=True, help="extrapolation weight")
    ap.add_argument("--valid", required=True, help="validation problems (JSONL)")
    ap.add_argument("--record", required=True, help="the train run record to write")
    ap.add_argument(
        "--eval-domains", action="store_true", help="add per-domain validation exact match"
    )
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
