"""Build post-trained artifacts with the shared loops:
``python -m methods.posttrain.cli {sft,grpo} --start A --train data.jsonl --config JSON --out DIR``.

``sft`` trains on the arithmetic world's demonstrations (prompt and padding masked); ``grpo``
runs GRPO with the binary correctness reward (format failures counted). Each writes a
``save_pretrained`` folder, ``train_log.jsonl`` and ``meta.json`` (last), and optionally a run
record (suite ``train``) with the training curves as ``series``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.entry import add_run_options, run_entry
from claimbench.io import atomic_write_json, atomic_write_jsonl, sha256_file
from claimbench.records import make_run_record, metric, series, write_run_record
from methods.posttrain.loops import SFTObjective, greedy_accuracy, train_demos, train_grpo
from methods.posttrain.models import load_model, read_meta
from methods.posttrain.rewards import demonstration, load_problems


def save_artifact(model, tok, out: Path, rows: list[dict]) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_jsonl(out / "train_log.jsonl", rows)


def run(args) -> None:
    cfg = json.loads(args.config)
    torch.set_num_threads(args.threads)
    with provenance.timed() as t:
        model, tok = load_model(args.start, trainable=True, device=args.device)
        model.requires_grad_(True)
        train = load_problems(args.train, cfg.get("families"))
        metrics, curves = [], []
        if args.what == "sft":
            pr, co = zip(*[demonstration(p, cfg["form"]) for p in train], strict=True)
            rows = train_demos(
                model,
                tok,
                list(pr),
                list(co),
                SFTObjective(),
                steps=cfg["steps"],
                minibatch=cfg["minibatch"],
                lr=cfg["lr"],
                warmup_steps=cfg.get("warmup_steps", 0),
                weight_decay=cfg.get("weight_decay", 0.0),
                seed=args.seed,
            )
            curves.append(
                series(
                    "SFT loss",
                    [r["step"] for r in rows],
                    [r["loss"] for r in rows],
                    "step",
                    "nats/token",
                )
            )
        else:
            rows, stats = train_grpo(
                model,
                tok,
                train,
                steps=cfg["steps"],
                prompts_per_step=cfg["prompts_per_step"],
                n=cfg["n"],
                lr=cfg["lr"],
                max_new_tokens=cfg["max_new_tokens"],
                temperature=cfg.get("temperature", 1.0),
                seed=args.seed,
            )
            x = [r["step"] for r in rows]
            curves += [
                series("training reward", x, [r["reward"] for r in rows], "step", "mean reward"),
                series("entropy (rollouts)", x, [r["entropy"] for r in rows], "step", "nats/token"),
                series("response length", x, [r["length"] for r in rows], "step", "tokens"),
            ]
            metrics += [
                metric(
                    "train",
                    "format_failure_rate",
                    stats.format_failure_rate,
                    n=stats.n,
                    higher_is_better=False,
                ),
                metric(
                    "train", "reward_final", sum(r["reward"] for r in rows[-5:]) / len(rows[-5:])
                ),
            ]
        save_artifact(model, tok, Path(args.out), rows)
        if args.valid:
            acc = greedy_accuracy(
                model,
                tok,
                load_problems(args.valid, cfg.get("families")),
                cfg.get("max_new_tokens", 16),
            )
            metrics += [
                metric(
                    "valid",
                    "greedy_exact_match",
                    acc["accuracy"],
                    n=acc["n"],
                    higher_is_better=True,
                ),
                metric(
                    "valid",
                    "format_failures",
                    acc["format_failures"],
                    n=acc["n"],
                    higher_is_better=False,
                ),
            ]
    prov = provenance.capture(t["started_at"], t["wall_s"])
    base_name = read_meta(args.start).get("name", Path(args.start).name)
    if args.record:
        rec = make_run_record(
            scale=args.scale,
            paper=args.paper,
            method=args.what,
            variant=args.variant,
            base_model=base_name,
            suite="train",
            tasks=sorted({m["task"] for m in metrics}) or ["train"],
            seed=args.seed,
            config=cfg,
            metrics=metrics,
            provenance=prov,
            series=curves,
            task_hashes={
                "train": sha256_file(args.train),
                **({"valid": sha256_file(args.valid)} if args.valid else {}),
            },
        )
        write_run_record(args.record, rec)
    atomic_write_json(
        Path(args.out) / "meta.json",
        {
            "name": args.variant,
            "method": args.what,
            "paper": args.paper,
            "base_model": base_name,
            "inputs": {args.train: sha256_file(args.train), args.start: base_name},
            "seed": args.seed,
            "config": cfg,
            "provenance": prov,
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("what", choices=["sft", "grpo"])
    for a in ("--start", "--train", "--config", "--out", "--variant", "--paper"):
        ap.add_argument(a, required=True)
    ap.add_argument("--valid", default="")
    ap.add_argument("--record", default="")
    add_run_options(ap)
    run_entry(ap, run, argv)


if __name__ == "__main__":
    main()
