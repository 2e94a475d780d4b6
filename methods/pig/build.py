"""Build PIG artifacts: ``python -m methods.pig.build {pretrain,finetune} ...``.

* ``pretrain``: stage 0, the two towers trained contrastively on the pre-train split (stand-in
  for CLIP), saved as theta_0;
* ``finetune``: one arm (two_tower / pig / pig_nogen / pig_static) from theta_0 with the same
  optimizer, steps and batches for every arm; exports the test embeddings for the suite.

Every artifact folder gets ``meta.json`` last (its presence marks the artifact complete).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from claimbench import provenance
from claimbench.errors import ClaimbenchError, exit_on_user_error
from claimbench.io import atomic_write_json, sha256_file
from methods.pig.model import ARMS, RetrievalModel, TowerConfig
from methods.pig.train import (
    Vocab,
    export_embeddings,
    load_model,
    read_split,
    save_model,
    set_determinism,
    train,
)


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _inputs(data: Path, names: list[str]) -> dict:
    return {str(data / f"{n}.jsonl"): sha256_file(data / f"{n}.jsonl") for n in names}


def pretrain(args) -> None:
    spec = json.loads(args.spec)
    if "init_from" in spec:
        raise ClaimbenchError(
            f"papers.pig.pretrain.init_from: {spec['init_from']!r}: initialising the ViP video "
            "tower and the text tower from a CLIP checkpoint is not implemented yet (only the "
            "from-scratch stage-0 stand-in is); see methods/pig/README.md"
        )
    set_determinism(args.seed, args.threads)
    with provenance.timed() as t:
        data = read_split(args.data, args.split)
        extra = [c for s in args.vocab_splits for c in read_split(args.data, s).captions]
        vocab = Vocab.build(data.captions + extra)
        tower = dict(spec["tower"])
        f = data.frames.shape
        tower.update(frames=f[1], image_size=f[2], channels=f[4], vocab_size=len(vocab.itos))
        cfg = TowerConfig(**tower)
        model = RetrievalModel(cfg, "two_tower")
        tr = spec["train"]
        log = train(model, vocab, data, seed=args.seed, gen_lambda=0.0, **tr)
        out = Path(args.out)
        _fresh(out)
        save_model(model, vocab, out)
        atomic_write_json(out / "train_log.json", log)
    atomic_write_json(
        out / "meta.json",
        {
            "method": "clip_standin",
            "variant": "theta0",
            "base_model": "scratch",
            "seed": args.seed,
            "config": spec,
            "inputs": _inputs(args.data, [args.split, *args.vocab_splits]),
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def finetune(args) -> None:
    spec = json.loads(args.spec)
    if args.arm not in ARMS:
        raise ClaimbenchError(f"--arm: {args.arm!r} is not one of {list(ARMS)}")
    set_determinism(args.seed, args.threads)
    with provenance.timed() as t:
        model, vocab = load_model(args.init, arm=args.arm)
        data = read_split(args.data, args.split)
        lam = 0.0 if args.arm in ("two_tower", "pig_nogen", "pig_static") else spec["gen_lambda"]
        log = train(model, vocab, data, seed=args.seed, gen_lambda=lam, **spec["train"])
        out = Path(args.out)
        _fresh(out)
        save_model(model, vocab, out)
        atomic_write_json(out / "train_log.json", log)
        for test in args.tests:
            export_embeddings(model, vocab, read_split(args.data, test), test, out)
    atomic_write_json(
        out / "meta.json",
        {
            "method": "two_tower" if args.arm == "two_tower" else "pig",
            "variant": args.arm,
            "arm": args.arm,
            "base_model": "theta0",
            "seed": args.seed,
            "config": spec | {"gen_lambda_used": lam},
            "n_params": sum(p.numel() for p in model.parameters()),
            "inputs": _inputs(args.data, [args.split, *args.tests])
            | {str(Path(args.init) / "meta.json"): sha256_file(Path(args.init) / "meta.json")},
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("pretrain", "finetune"):
        p = sub.add_parser(name)
        p.add_argument("--spec", required=True, help="JSON of the stage's config section")
        p.add_argument("--data", type=Path, required=True, help="folder of the canonical splits")
        p.add_argument("--split", required=True, help="training split name")
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", type=Path, required=True)
    sub.choices["pretrain"].add_argument(
        "--vocab-splits", type=lambda s: [x for x in s.split(",") if x], default=[]
    )
    ft = sub.choices["finetune"]
    ft.add_argument("--arm", required=True)
    ft.add_argument("--init", type=Path, required=True, help="theta_0 artifact folder")
    ft.add_argument("--tests", type=lambda s: [x for x in s.split(",") if x], required=True)
    args = ap.parse_args(argv)
    with exit_on_user_error():
        pretrain(args) if args.what == "pretrain" else finetune(args)


if __name__ == "__main__":
    main()
