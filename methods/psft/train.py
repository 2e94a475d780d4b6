"""Train one arm of the PSFT comparison from a start model on arithmetic-world demonstrations:
``python -m methods.psft.train --arm {sft,psft,sft_kl,sft_lowlr,psft_warmup} ...``.

Writes the artifact (``save_pretrained`` folder, ``train_log.jsonl``, ``meta.json`` last) and a
run record (suite ``train``) with the final teacher-forced entropy / KL to the start model and
the training curves (entropy, clip fraction, KL to start) as ``series``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.entry import add_run_options, run_entry
from claimbench.io import atomic_write_json, sha256_file
from claimbench.records import make_run_record, metric, series, write_run_record
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


def run(args) -> None:
    cfg = json.loads(args.config)
    torch.set_num_threads(args.threads)
    arm = args.arm
    if arm not in ARMS:
        raise ValueError(f"unknown PSFT arm {arm!r} (known: {', '.join(ARMS)})")
    lr = cfg["lr"] * (cfg["lowlr_factor"] if arm == "sft_lowlr" else 1.0)
    with provenance.timed() as t:
        model, tok = load_model(args.start, trainable=True, device=args.device)
        model.requires_grad_(True)
        start, _ = load_model(args.start, device=args.device)
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
            seed=args.seed,
            eval_batch=eval_batch,
            start_model=start,
            eval_every=cfg["eval_every"],
        )
        out = Path(args.out)
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
    prov = provenance.capture(t["started_at"], t["wall_s"])
    base_name = read_meta(args.start).get("name", Path(args.start).name)
    rec = make_run_record(
        scale=args.scale,
        paper="psft",
        method=arm,
        variant=args.variant,
        base_model=base_name,
        suite="train",
        tasks=["demo_valid", "train"],
        seed=args.seed,
        config=cfg_rec,
        metrics=metrics,
        provenance=prov,
        series=curves,
        task_hashes={"train": sha256_file(args.train), "demo_valid": sha256_file(args.valid)},
    )
    write_run_record(args.record, rec)
    atomic_write_json(
        out / "meta.json",
        {
            "name": args.variant,
            "method": arm,
            "paper": "psft",
            "base_model": base_name,
            "inputs": {
                args.start: sha256_file(Path(args.start) / "meta.json")
                if (Path(args.start) / "meta.json").is_file()
                else "",
                args.train: sha256_file(args.train),
            },
            "seed": args.seed,
            "config": cfg_rec,
            "tokens_seen": tokens,
            "provenance": prov,
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for a in (
        "--arm",
        "--start",
        "--train",
        "--valid",
        "--config",
        "--out",
        "--record",
        "--scale",
        "--variant",
    ):
        ap.add_argument(a, required=True)
    add_run_options(ap, scale=None)
    run_entry(ap, run, argv)


if __name__ == "__main__":
    main()
