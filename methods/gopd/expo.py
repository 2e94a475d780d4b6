"""ExPO weight extrapolation baseline (spec gopd.md section 2.7), training-free:
``python -m methods.gopd.expo --student S --teacher T [--teacher T2] --alpha 0.5 --out DIR ...``.

theta = theta_Tbar + alpha (theta_Tbar - theta_student), theta_Tbar the mean of the teachers'
weights (one teacher: the teacher itself). Writes a ``save_pretrained`` artifact, a ``train``
run record (validation exact match, per domain when ``config.eval_domains`` is set) and
``meta.json`` last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_json, sha256_file
from claimbench.records import make_run_record, metric, write_run_record
from methods.gopd.baselines import check_alpha, expo_weights
from methods.gopd.train import domain_metrics
from methods.posttrain.cli import save_artifact
from methods.posttrain.loops import greedy_accuracy
from methods.posttrain.models import check_same_tokenizer, load_model, read_meta
from methods.posttrain.rewards import load_problems


def run(args) -> None:
    cfg = json.loads(args.config)
    torch.set_num_threads(args.threads)
    alpha = check_alpha(args.alpha)
    with provenance.timed() as t:
        student, tok = load_model(args.student)
        teachers = []
        for i, path in enumerate(args.teacher):
            m, ttok = load_model(path)
            check_same_tokenizer(tok, ttok, f"teacher {i}")
            teachers.append(m.state_dict())
        student.load_state_dict(expo_weights(student.state_dict(), teachers, alpha))
        save_artifact(student, tok, Path(args.out), [])
        acc = greedy_accuracy(
            student, tok, load_problems(args.valid, cfg.get("families")), cfg["max_new_tokens"]
        )
        per_domain = domain_metrics(student, tok, args.valid, cfg)
    metrics = [
        metric("valid", "greedy_exact_match", acc["accuracy"], n=acc["n"], higher_is_better=True),
        *per_domain,
    ]
    prov = provenance.capture(t["started_at"], t["wall_s"])
    base_name = read_meta(args.student).get("name", Path(args.student).name)
    cfg_rec = {**cfg, "alpha": alpha, "teachers": list(args.teacher)}
    write_run_record(
        args.record,
        make_run_record(
            scale=args.scale,
            paper="gopd",
            method="expo",
            variant=args.variant,
            base_model=base_name,
            suite="train",
            tasks=["valid", *(m["task"] for m in per_domain)],
            seed=args.seed,
            config=cfg_rec,
            metrics=metrics,
            provenance=prov,
            task_hashes={
                t: sha256_file(args.valid) for t in ["valid", *(m["task"] for m in per_domain)]
            },
        ),
    )
    atomic_write_json(
        Path(args.out) / "meta.json",
        {
            "name": args.variant,
            "method": "expo",
            "paper": "gopd",
            "base_model": base_name,
            "inputs": {"student": args.student, "teachers": list(args.teacher)},
            "seed": args.seed,
            "config": cfg_rec,
            "provenance": prov,
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for a in ("--student", "--valid", "--config", "--out", "--record", "--variant"):
        ap.add_argument(a, required=True)
    ap.add_argument("--teacher", action="append", required=True, help="teacher artifact folder")
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    with exit_on_user_error(ValueError, FileNotFoundError):
        run(args)


if __name__ == "__main__":
    main()
