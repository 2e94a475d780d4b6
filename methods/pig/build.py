"""Build PIG artifacts: ``python -m methods.pig.build {pretrain,finetune} <job options> ...``.

* ``pretrain`` (variant ``theta0``): stage 0, the two towers trained contrastively on the
  pre-train split (stand-in for CLIP), saved as theta_0; settings: ``papers.pig.pretrain``;
* ``finetune`` (variant = the arm: two_tower / pig / pig_nogen / pig_static; ``--seed`` = the
  run's seed; ``--benchmark`` = a ``papers.pig.benchmarks`` key, whose train split it trains
  on): one arm from theta_0 with the same optimizer, steps and batches for every arm
  (``papers.pig.finetune``); exports the benchmark's test embeddings for the retrieval suite.

Both run on the job's ``--device`` in its ``--dtype`` (models are created in float32 and moved
with ``job.to``). Every artifact folder gets ``meta.json`` last (``job.write_meta``: its
presence marks the artifact complete).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_json, sha256_file
from claimbench.job import Job, add_job_options, run_job
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


def pretrain(job: Job) -> None:
    spec = job.config["pretrain"]
    if "init_from" in spec:
        raise ClaimbenchError(
            f"papers.pig.pretrain.init_from: {spec['init_from']!r}: initialising the ViP video "
            "tower and the text tower from a CLIP checkpoint is not implemented yet (only the "
            "from-scratch stage-0 stand-in is); see methods/pig/README.md"
        )
    set_determinism()
    data_dir, split = job.args.data, spec["split"]
    data = read_split(data_dir, split)
    extra = [c for s in spec["vocab_splits"] for c in read_split(data_dir, s).captions]
    vocab = Vocab.build(data.captions + extra)
    tower = dict(spec["tower"])
    f = data.frames.shape
    tower.update(frames=f[1], image_size=f[2], channels=f[4], vocab_size=len(vocab.itos))
    model = job.to(RetrievalModel(TowerConfig(**tower), "two_tower"))
    log = train(model, vocab, data, seed=job.seed, gen_lambda=0.0, **spec["train"])
    _fresh(job.out)
    save_model(model, vocab, job.out)
    atomic_write_json(job.out / "train_log.json", log)
    job.write_meta(
        method="clip_standin",
        variant="theta0",
        base_model="scratch",
        config=spec,
        inputs=_inputs(data_dir, [split, *spec["vocab_splits"]]),
    )


def finetune(job: Job) -> None:
    spec, arm, args = job.config["finetune"], job.variant, job.args
    if arm not in ARMS:
        raise ClaimbenchError(f"--variant: {arm!r} is not a PIG arm (one of {list(ARMS)})")
    bench = job.config["benchmarks"].get(args.benchmark)
    if bench is None:
        raise ClaimbenchError(
            f"--benchmark: {args.benchmark!r} is not in papers.pig.benchmarks "
            f"({sorted(job.config['benchmarks'])})"
        )
    train_split, tests = bench["train"], bench["tests"]
    set_determinism()
    model, vocab = load_model(args.init, arm=arm)
    model = job.to(model)
    data = read_split(args.data, train_split)
    lam = 0.0 if arm in ("two_tower", "pig_nogen", "pig_static") else spec["gen_lambda"]
    log = train(model, vocab, data, seed=job.seed, gen_lambda=lam, **spec["train"])
    _fresh(job.out)
    save_model(model, vocab, job.out)
    atomic_write_json(job.out / "train_log.json", log)
    for test in tests:
        export_embeddings(model, vocab, read_split(args.data, test), test, job.out)
    init_meta = Path(args.init) / "meta.json"
    job.write_meta(
        method="two_tower" if arm == "two_tower" else "pig",
        variant=arm,
        arm=arm,
        base_model="theta0",
        config=spec | {"gen_lambda_used": lam},
        n_params=sum(p.numel() for p in model.parameters()),
        inputs=_inputs(args.data, [train_split, *tests]) | {str(init_meta): sha256_file(init_meta)},
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="what", required=True)
    pre = add_job_options(sub.add_parser("pretrain", help="stage 0 -> theta_0"), papers=["pig"])
    pre.set_defaults(run=pretrain)
    ft = add_job_options(sub.add_parser("finetune", help="one arm from theta_0"), papers=["pig"])
    ft.set_defaults(run=finetune)
    for p in (pre, ft):
        p.add_argument("--data", type=Path, required=True, help="folder of the canonical splits")
    ft.add_argument("--init", type=Path, required=True, help="theta_0 artifact folder")
    ft.add_argument(
        "--benchmark", required=True, help="papers.pig.benchmarks key: its train and test splits"
    )
    run_job(ap, None, argv)


if __name__ == "__main__":
    main()
