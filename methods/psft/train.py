"""Train one arm of the PSFT comparison from a start model on arithmetic-world demonstrations:
``python -m methods.psft.train <job options> --arm {sft,psft,sft_kl,sft_lowlr,psft_warmup}
--start A --train train.jsonl --valid valid.jsonl --record train.json``; the settings are the
scale file's ``papers.psft.train``.

Writes the artifact (``save_pretrained`` folder, ``train_log.jsonl``, ``meta.json`` last) and a
run record (suite ``train``) with the final teacher-forced entropy / KL to the start model and
the training curves (entropy, clip fraction, KL to start) as ``series``.
"""

from __future__ import annotations

import math
from pathlib import Path

from claimbench.io import sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.posttrain.cli import save_artifact
from methods.posttrain.loops import SFTKLObjective, SFTObjective, train_demos
from methods.posttrain.models import load_model, read_meta
from methods.posttrain.rewards import demonstration, load_problems
from methods.posttrain.tokens import encode_pairs
from methods.psft.objective import PSFTObjective, WarmupPSFTObjective

ARMS = ("sft", "psft", "sft_kl", "sft_lowlr", "psft_warmup")


def build_objective(arm: str, cfg: dict, start_model):
    if arm in ("sft", "sft_lowlr"):
        return SFTObjective()
    if arm == "psft":
        return PSFTObjective(cfg["eps_low"], cfg["eps_high"])
    if arm == "sft_kl":
        return SFTKLObjective(start_model, cfg["kl_coef"])
    if arm == "psft_warmup":
        return WarmupPSFTObjective(
            cfg["psft_warmup_steps"], cfg["inner_steps"], cfg["eps_low"], cfg["eps_high"]
        )
    raise ValueError(f"unknown PSFT arm {arm!r} (known: {', '.join(ARMS)})")


def run(job: Job) -> None:
    args, cfg = job.args, job.config["train"]
    arm = args.arm
    if arm not in ARMS:
        raise ValueError(f"unknown PSFT arm {arm!r} (known: {', '.join(ARMS)})")
    lr = cfg["lr"] * (cfg["lowlr_factor"] if arm == "sft_lowlr" else 1.0)
    model, tok = load_model(args.start, trainable=True, device=job.device, dtype=job.torch_dtype)
    model.requires_grad_(True)
    # the frozen start model: SFT-KL's reference and the KL-to-start of every arm's curves
    start, _ = load_model(args.start, device=job.device, dtype=job.torch_dtype)
    train = load_problems(args.train, cfg.get("families"))
    prompts, comps = zip(*[demonstration(p, cfg["form"]) for p in train], strict=True)
    valid = load_problems(args.valid, cfg.get("families"), limit=cfg["eval_batch"])
    eval_batch = encode_pairs(
        tok, *map(list, zip(*[demonstration(p, cfg["form"]) for p in valid], strict=True))
    ).to(model.device)
    rows = train_demos(
        model,
        tok,
        list(prompts),
        list(comps),
        build_objective(arm, cfg, start),
        steps=cfg["steps"],
        minibatch=cfg["minibatch"],
        inner_steps=cfg["inner_steps"],
        lr=lr,
        weight_decay=cfg["weight_decay"],
        warmup_steps=cfg["warmup_steps"],
        grad_clip=cfg["grad_clip"],
        seed=job.seed,
        eval_batch=eval_batch,
        start_model=start,
        eval_every=cfg["eval_every"],
    )
    out = job.out
    save_artifact(model, tok, out, rows)
    ev = [r for r in rows if "eval_entropy" in r]
    last = ev[-1]
    tokens = sum(r["tokens"] for r in rows)
    cfg_rec = {**cfg, "arm": arm, "effective_lr": lr}
    metrics = [
        metric(
            "demo_valid",
            "entropy_final",
            last["eval_entropy"],
            n=eval_batch.n_tokens,
            higher_is_better=None,
        ),
        metric(
            "demo_valid",
            "log_entropy_final",
            math.log(max(last["eval_entropy"], 1e-12)),
            n=eval_batch.n_tokens,
        ),
        metric(
            "demo_valid",
            "kl_to_start_final",
            last["eval_kl_to_start"],
            n=eval_batch.n_tokens,
            higher_is_better=False,
        ),
        metric("train", "tokens_seen", tokens),
        metric("train", "loss_final", rows[-1]["loss"]),
    ]
    curves = [
        series(
            "entropy (valid demos)",
            [r["step"] for r in ev],
            [r["eval_entropy"] for r in ev],
            "step",
            "nats/token",
        ),
        series(
            "KL to start (valid demos)",
            [r["step"] for r in ev],
            [r["eval_kl_to_start"] for r in ev],
            "step",
            "nats/token",
        ),
        series(
            "entropy (train batch)",
            [r["step"] for r in rows],
            [r["train_entropy"] for r in rows],
            "step",
            "nats/token",
        ),
    ]
    if arm in ("psft", "psft_warmup"):
        metrics.append(
            metric("train", "clip_frac_mean", sum(r["clip_frac"] for r in rows) / len(rows))
        )
        curves.append(
            series(
                "clip fraction",
                [r["step"] for r in rows],
                [r["clip_frac"] for r in rows],
                "step",
                "share of tokens",
            )
        )
    prov = job.provenance()
    base_name = read_meta(args.start).get("name", Path(args.start).name)
    rec = job.record(
        suite="train",
        method=arm,
        base_model=base_name,
        tasks=["demo_valid", "train"],
        config=cfg_rec,
        metrics=metrics,
        provenance=prov,
        series=curves,
        task_hashes={"train": sha256_file(args.train), "demo_valid": sha256_file(args.valid)},
    )
    job.write_record(rec, args.record)
    start_meta = Path(args.start) / "meta.json"
    job.write_meta(
        method=arm,
        base_model=base_name,
        inputs={
            args.start: sha256_file(start_meta) if start_meta.is_file() else "",
            args.train: sha256_file(args.train),
        },
        config=cfg_rec,
        tokens_seen=tokens,
        provenance=prov,
    )


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["psft"], out="the artifact folder this arm writes")
    ap.add_argument("--arm", required=True, choices=ARMS, help="which arm of the comparison")
    ap.add_argument("--start", required=True, help="artifact folder of the start model")
    ap.add_argument("--train", required=True, help="arithmetic-world training problems (JSONL)")
    ap.add_argument("--valid", required=True, help="held-out problems: entropy / KL demos")
    ap.add_argument("--record", required=True, help="the train run record this arm writes")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
