"""Build PIG artifacts: ``python -m methods.pig.build {pretrain,finetune} <job options> ...``.

* ``pretrain`` (variant ``theta0``): stage 0, the two towers trained contrastively on the
  pre-train split (stand-in for CLIP), saved as theta_0; or, with ``pretrain.init_from`` (paper
  scale), theta_0 = CLIP ViT-B/32's weights in the towers (:mod:`methods.pig.clip`), nothing
  trained; settings: ``papers.pig.pretrain``;
* ``finetune`` (variant = the arm: two_tower / pig / pig_nogen / pig_static; ``--seed`` = the
  run's seed; ``--benchmark`` = a ``papers.pig.benchmarks`` key, whose train split it trains
  on): one arm from theta_0 with the same optimizer, steps and batches for every arm
  (``papers.pig.finetune``; its ``logit_scale_init`` resets the learnable log inverse
  temperature s for every arm as the released code does); exports the benchmark's test
  embeddings for the retrieval suite and ``curves.json`` (training loss per logged step and,
  where the benchmark names a ``val`` split, its R@1 every ``eval_every`` steps).

Both run on the job's ``--device``, its ``--dtype`` the autocast dtype (models are created in
float32 and stay float32: :func:`methods.pig.train.place`); frames are streamed with
``papers.pig.workers`` loader processes. Every artifact folder gets ``meta.json`` last
(``job.write_meta``: its presence marks the artifact complete).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_json, sha256_file
from claimbench.job import Job, add_job_options, run_job
from methods.pig.model import ARMS, RetrievalModel, TowerConfig
from methods.pig.train import (
    HFTextTokenizer,
    Vocab,
    curves,
    export_embeddings,
    load_model,
    place,
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


def clip_theta0(tower: dict, init_from: str, local_path: str | None, where: str):
    """theta_0 from a CLIP checkpoint: (two-tower model with CLIP's weights, CLIP tokenizer, the
    checkpoint folder). ``tower`` holds the ViP settings (frames, proxies, ITS k, ...)."""
    from benchmarks.retrieval.frames import ClipPreprocess
    from methods.pig.clip import (
        check_tower_against_clip,
        clip_tower_sizes,
        load_clip,
        resolve_checkpoint,
    )

    path = resolve_checkpoint(init_from, local_path, where)
    clip = load_clip(path)
    check_tower_against_clip(tower, clip.config, where, path)
    tok = HFTextTokenizer.from_folder(path)
    cfg = TowerConfig(
        **(
            tower
            | clip_tower_sizes(clip.config)
            | dict(backbone="clip", clip=clip.config.to_dict(), bos_id=tok.bos, eos_id=tok.eos)
        )
    )
    model = RetrievalModel(cfg, "two_tower", clip_model=clip)
    model.image_transform = ClipPreprocess.from_folder(path)
    return model, tok, path


def pretrain(job: Job) -> None:
    spec = job.config["pretrain"]
    if "init_from" in spec:
        model, tok, path = clip_theta0(
            dict(spec["tower"]), spec["init_from"], spec.get("local_path"), "papers.pig.pretrain"
        )
        _fresh(job.out)
        save_model(model, tok, job.out)
        job.write_meta(
            method="clip",
            variant="theta0",
            base_model=spec["init_from"],
            config=spec,
            checkpoint=str(path),
            image_preprocessing=model.image_transform.kind,
            n_params=sum(p.numel() for p in model.parameters()),
        )
        return
    set_determinism()
    data_dir, split = job.args.data, spec["split"]
    data = read_split(data_dir, split)
    extra = [c for s in spec["vocab_splits"] for c in read_split(data_dir, s).captions]
    vocab = Vocab.build(data.captions + extra)
    tower = dict(spec["tower"])
    f = data.frames.raw(0).shape  # (T, H, W, C) of the stored frames
    tower.update(frames=f[0], image_size=f[1], channels=f[3], vocab_size=len(vocab.itos))
    model = place(RetrievalModel(TowerConfig(**tower), "two_tower"), job.device, job.dtype)
    log = train(
        model,
        vocab,
        data,
        seed=job.seed,
        gen_lambda=0.0,
        workers=job.config["workers"],
        **spec["train"],
    )
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
    train_split, tests, val_split = bench["train"], bench["tests"], bench.get("val")
    set_determinism()
    model, vocab = load_model(args.init, arm=arm)
    if "logit_scale_init" in spec:  # the released code resets s when fine-tuning starts
        with torch.no_grad():
            model.logit_scale.fill_(spec["logit_scale_init"])
    model = place(model, job.device, job.dtype)
    data = read_split(args.data, train_split)
    val = read_split(args.data, val_split) if val_split else None
    lam = 0.0 if arm in ("two_tower", "pig_nogen", "pig_static") else spec["gen_lambda"]
    workers = job.config["workers"]
    log = train(
        model,
        vocab,
        data,
        seed=job.seed,
        gen_lambda=lam,
        workers=workers,
        eval_every=spec.get("eval_every", 0) if val is not None else 0,
        val=val,
        **spec["train"],
    )
    _fresh(job.out)
    save_model(model, vocab, job.out)
    atomic_write_json(job.out / "train_log.json", log)
    atomic_write_json(job.out / "curves.json", curves(log))
    for test in tests:
        export_embeddings(
            model,
            vocab,
            read_split(args.data, test),
            test,
            job.out,
            job.config["eval_batch"],
            workers,
        )
    init_meta = Path(args.init) / "meta.json"
    job.write_meta(
        method="two_tower" if arm == "two_tower" else "pig",
        variant=arm,
        arm=arm,
        base_model="theta0",
        config=spec | {"gen_lambda_used": lam},
        n_params=sum(p.numel() for p in model.parameters()),
        inputs=_inputs(args.data, [train_split, *tests, *([val_split] if val_split else [])])
        | {str(init_meta): sha256_file(init_meta)},
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
