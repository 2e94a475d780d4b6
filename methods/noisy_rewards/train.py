"""One RL run of the noisy-rewards paper from a start artifact:
``python -m methods.noisy_rewards.train --start A --train T --valid V --config JSON --reward JSON
--out DIR --record R --variant NAME``.

Writes a ``save_pretrained`` folder (the final policy, evaluated by the lm-eval rule), its
``train_log.jsonl``, a ``train`` run record (peak / final greedy accuracy, length, truncation,
training reward, with the curves as ``series``) and ``meta.json`` last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.entry import add_run_options, run_entry
from claimbench.io import atomic_write_json, sha256_file
from claimbench.records import make_run_record, metric, series, write_run_record
from methods.noisy_rewards.ppo import train_rl
from methods.noisy_rewards.rewards import RewardFunction
from methods.posttrain.cli import save_artifact
from methods.posttrain.models import load_model, read_meta
from methods.posttrain.rewards import load_problems


def summarise(rows: list[dict], evals: list[dict], n_valid: int) -> list[dict]:
    acc = [e["accuracy"] for e in evals]
    peak = max(range(len(acc)), key=lambda i: (acc[i], -i))
    last = rows[-max(1, len(rows) // 10) :]
    fin = evals[-1]
    return [
        metric("valid", "start_accuracy", acc[0], n=n_valid),
        metric("valid", "peak_accuracy", acc[peak], n=n_valid),
        metric("valid", "peak_step", evals[peak]["step"], higher_is_better=False),
        metric("valid", "final_accuracy", fin["accuracy"], n=n_valid),
        metric("valid", "final_length", fin["length"], higher_is_better=False),
        metric("valid", "final_truncation_rate", fin["truncation_rate"], higher_is_better=False),
        metric(
            "valid",
            "max_truncation_rate",
            max(e["truncation_rate"] for e in evals),
            higher_is_better=False,
        ),
        metric("train", "reward_final", sum(r["reward"] for r in last) / len(last)),
        metric(
            "train",
            "format_failure_rate",
            sum(r["format_failure_rate"] for r in rows) / len(rows),
            higher_is_better=False,
        ),
    ]


def curves(rows: list[dict], evals: list[dict]) -> list[dict]:
    x, ex = [r["step"] for r in rows], [e["step"] for e in evals]
    return [
        series("greedy accuracy", ex, [e["accuracy"] for e in evals], "step", "exact match"),
        series("training reward", x, [r["reward"] for r in rows], "step", "mean reward"),
        series(
            "training accuracy (rollouts)",
            x,
            [r["train_accuracy"] for r in rows],
            "step",
            "exact match",
        ),
        series("response length (rollouts)", x, [r["length"] for r in rows], "step", "tokens"),
        series("greedy response length", ex, [e["length"] for e in evals], "step", "tokens"),
        series(
            "truncation rate (rollouts)",
            x,
            [r["truncation_rate"] for r in rows],
            "step",
            "fraction",
        ),
    ]


def run(args) -> None:
    cfg, rcfg = json.loads(args.config), json.loads(args.reward)
    torch.set_num_threads(args.threads)
    reward = RewardFunction(rcfg, seed=args.seed)  # bad p / empty phrases fail before loading
    with provenance.timed() as t:
        model, tok = load_model(args.start, trainable=True, device=args.device)
        model.requires_grad_(True)
        train = load_problems(args.train, cfg.get("families"))
        valid = load_problems(args.valid, cfg.get("families"), cfg.get("eval_n"))
        rows, evals = train_rl(model, tok, train, valid, reward, cfg, seed=args.seed)
        save_artifact(model, tok, Path(args.out), rows)
    prov = provenance.capture(t["started_at"], t["wall_s"])
    base_name = read_meta(args.start).get("name", Path(args.start).name)
    full = {"rl": cfg, "reward": rcfg}
    rec = make_run_record(
        scale=args.scale,
        paper="noisy_rewards",
        method=cfg.get("algo", "ppo"),
        variant=args.variant,
        base_model=base_name,
        suite="train",
        tasks=["valid", "train"],
        seed=args.seed,
        config=full,
        metrics=summarise(rows, evals, len(valid)),
        provenance=prov,
        series=curves(rows, evals),
        task_hashes={"train": sha256_file(args.train)[:16], "valid": sha256_file(args.valid)[:16]},
    )
    write_run_record(args.record, rec)
    atomic_write_json(
        Path(args.out) / "meta.json",
        {
            "name": args.variant,
            "method": cfg.get("algo", "ppo"),
            "paper": "noisy_rewards",
            "base_model": base_name,
            "inputs": {args.train: sha256_file(args.train), args.start: base_name},
            "seed": args.seed,
            "config": full,
            "provenance": prov,
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for a in (
        "--start",
        "--train",
        "--valid",
        "--config",
        "--reward",
        "--out",
        "--record",
        "--variant",
    ):
        ap.add_argument(a, required=True)
    add_run_options(ap)
    run_entry(ap, run, argv)


if __name__ == "__main__":
    main()
