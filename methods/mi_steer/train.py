"""Train a tiny Llama on an MI world (methods.lm build_model + train_lm) and save the artifact."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from claimbench.job import Job, job_parser, run_job
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


def run(job: Job) -> None:
    world, data = job.args.world, Path(job.args.data)
    spec = job.config["models"].get(world)
    if spec is None:
        raise ValueError(f"papers.mi_steer.models.{world} is not set in the {job.scale} scale file")
    vocab = CharVocab()
    streams = {k: v.to(job.device) for k, v in world_streams(world, data, vocab).items()}
    tr = spec["train"]
    # No mix configured: every part of the world weighs the same (which parts a world has is
    # the world's, so this is not a schema default). Sorted: the batch is drawn part by part,
    # so the order must not depend on how the scale file was written.
    mix = dict(sorted((tr.get("mix") or {k: 1.0 for k in streams}).items()))
    model = job.to(build_model(spec, vocab, job.seed))
    log = train_lm(
        model,
        streams,
        mix,
        steps=tr["steps"],
        batch_size=tr["batch_size"],
        seq_len=tr["seq_len"],
        lr=tr["lr"],
        weight_decay=tr["weight_decay"],
        warmup_steps=tr["warmup_steps"],
        seed=job.seed,
        desc=f"mi_steer {world}",
    )
    job.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(job.out)
    vocab.save(job.out)
    job.write_meta(
        method="mi_steer_world",
        base_model=f"tiny-{world}",
        world=world,
        inputs={"data": str(data)},
        config=spec,
        n_params=n_params(model),
        final_loss=sum(r["loss"] for r in log[-20:]) / min(20, len(log)),
        loss_curve=[round(r["loss"], 4) for r in log[:: max(1, len(log) // 50)]],
    )
    print(f"{world}: final loss {log[-1]['loss']:.3f}")


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["mi_steer"], out="the model's artifact folder")
    ap.add_argument(
        "--world", required=True, choices=sorted(WORLDS), help="its papers.mi_steer.models key"
    )
    ap.add_argument("--data", required=True, help="the worlds' folder (benchmarks.data.mi_worlds)")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
