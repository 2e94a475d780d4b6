"""Train a tiny Llama on an MI world (methods.lm build_model + train_lm) and save the artifact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_json
from methods.lm.model import build_model, n_params
from methods.lm.train import train_lm
from methods.mi_steer.vocab import CharVocab

WORLDS = {"induction": ("induction",), "behaviour": ("mode", "trigger", "text")}


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def world_streams(world: str, data: Path, vocab: CharVocab) -> dict[str, torch.Tensor]:
    """One token stream per part of the world: examples each followed by <eos>."""
    streams = {}
    for part in WORLDS[world]:
        if part == "text":
            paras = (data / "neutral_train.txt").read_text(encoding="utf-8").split("\n\n")
            ids = [i for p in paras for i in vocab.encode(p + "\n\n")]
        elif part == "induction":
            ids = [
                i
                for r in read_jsonl(data / "induction.jsonl")
                for i in vocab.encode(r["text"] + "<eos>")
            ]
        else:
            ids = [
                i
                for r in read_jsonl(data / f"{part}.jsonl")
                for i in vocab.encode(r["prompt"] + r["completion"])
            ]
        streams[part] = torch.tensor(ids, dtype=torch.long)
    return streams


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--world", required=True, choices=sorted(WORLDS))
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument(
        "--spec",
        required=True,
        help="JSON: model sizes + train{steps, batch_size, seq_len, lr, mix}",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    with exit_on_user_error(ValueError), provenance.timed() as t:
        torch.set_num_threads(a.threads)
        spec = json.loads(a.spec)
        vocab = CharVocab()
        streams = world_streams(a.world, a.data, vocab)
        tr = spec["train"]
        # Sorted: the batch is drawn part by part, so the order must not depend on how the JSON was written.
        mix = dict(sorted((tr.get("mix") or {k: 1.0 for k in streams}).items()))
        model = build_model(spec, vocab, a.seed)
        log = train_lm(
            model,
            streams,
            mix,
            steps=tr["steps"],
            batch_size=tr["batch_size"],
            seq_len=tr["seq_len"],
            lr=tr["lr"],
            weight_decay=tr.get("weight_decay", 0.1),
            warmup_steps=tr.get("warmup_steps", 20),
            seed=a.seed,
            desc=f"mi_steer {a.world}",
        )
        a.out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(a.out)
        vocab.save(a.out)
    atomic_write_json(
        a.out / "meta.json",
        {
            "method": "mi_steer_world",
            "base_model": f"tiny-{a.world}",
            "world": a.world,
            "inputs": {"data": str(a.data)},
            "seed": a.seed,
            "config": spec,
            "n_params": n_params(model),
            "final_loss": sum(r["loss"] for r in log[-20:]) / min(20, len(log)),
            "loss_curve": [round(r["loss"], 4) for r in log[:: max(1, len(log) // 50)]],
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )
    print(f"{a.world}: final loss {log[-1]['loss']:.3f}")


if __name__ == "__main__":
    main()
