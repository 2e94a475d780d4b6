"""Build MTP-D artifacts: ``python -m methods.mtp_d.build {train,extend}``.

``train``: a main model (the foundation's tiny Llama factory) trained from scratch jointly with
K MTP heads, with the shared trainer ``methods.lm.train.train_lm``; the variant picks the loss.
``extend``: looped extension of a trained artifact (copy modules, freeze everything old, train
only the new modules with the MTP-D loss).

An artifact is ``<out>/`` (main model, ``save_pretrained``, loadable alone) + ``<out>/mtp_heads/``
(the modules, their own config) + ``train_log.jsonl`` + ``meta.json`` (written last).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, add_job_options, run_job
from claimbench.records import metric

# Variants trained from scratch: what each changes in the loss (the paper's four runs, Table 1:
# NTP, MTP, MTP-D and MTP-D without the stop-gradient; see README.md).
VARIANTS = {
    "ntp": {"heads": 0},  # plain next-token model, no heads
    "mtp": {"beta": 0.0},  # main CE + head CE (DeepSeek-style MTP)
    "mtp_d": {},  # + top-N forward KL to the detached main head
    "mtp_d_nosg": {"stop_grad": False},  # ablation: KL without the stop-gradient
}
# On a pretrained, frozen trunk (papers.mtp_d.trunk): the stop-gradient ablation is void
TRUNK_VARIANTS = ("ntp", "mtp", "mtp_d")
ARCH_NAME = "mtp_d-arch"  # base_model name of an architecture given inline in papers.mtp_d


def architecture(job: Job) -> tuple[str, dict]:
    """(name, spec) of the main model: a ``models`` entry by name, or the sizes inline."""
    arch = job.config["architecture"]
    if isinstance(arch, str):
        spec = job.scale_config["models"][arch]
        return arch, {k: v for k, v in spec.items() if k != "train"}
    return ARCH_NAME, dict(arch)


def _streams(job: Job, tok):
    from methods.lm.train import arith_examples, text_stream, token_stream

    args = job.args
    long_fraction = job.scale_config["data"]["arith"]["long_fraction"]
    return {
        "text": text_stream(args.text, tok),
        "arith": token_stream(arith_examples(args.arith, long_fraction, seed=job.seed), tok),
    }


def _train(model, streams, train_cfg, seed, desc):
    from methods.lm.train import train_from_config

    log = train_from_config(model, streams, train_cfg, seed=seed, desc=desc)
    for row, parts in zip(log, model.history, strict=True):
        row.update(parts)
    return log


def use_engine(job: Job) -> bool:
    """The paper scale's trainer (``papers.mtp_d.engine``, methods/mtp_d/engine.py): accelerate,
    bf16 autocast over float32 weights, gradient accumulation, checkpoints and resume. Several
    processes (``accelerate launch``) without it would each train and write the artifact."""
    engine = bool(job.config.get("engine"))
    if not engine and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ClaimbenchError(
            "papers.mtp_d.engine: missing, but the job was started as "
            f"{os.environ['WORLD_SIZE']} processes (resources.train_gpus > 1 needs the engine)"
        )
    return engine


def _engine_train(job: Job, model, streams, train_cfg, desc) -> tuple[list[dict], dict, object]:
    """Train through the engine; returns (log, meta extras, accelerator). The model is float32
    on the CPU (bit-for-bit the init of every dtype); the engine moves it to this process's
    device and runs it under autocast in the job's dtype. Checkpoints go beside the artifact
    (``.<variant>.ckpt``) and are removed once the artifact is written."""
    from methods.mtp_d.engine import make_accelerator, train_engine

    eng = job.config["engine"]
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(job.dtype, "no")
    acc = make_accelerator(mixed_precision=precision, cpu=job.device == "cpu")
    ckpt = job.out.parent / f".{job.out.name}.ckpt"
    log, meta = train_engine(
        model,
        streams,
        train_cfg,
        seed=job.seed,
        desc=desc,
        accelerator=acc,
        ckpt_dir=ckpt,
        checkpoint_every=eng["checkpoint_every"],
        keep=eng["keep"],
    )
    micro = int(train_cfg.get("micro_batch_size") or train_cfg["batch_size"] // acc.num_processes)
    meta["engine"] = {
        "processes": acc.num_processes,
        "micro_batch_size": micro,
        "accumulation": train_cfg["batch_size"] // (micro * acc.num_processes),
        "mixed_precision": precision,
        "checkpoint_every": eng["checkpoint_every"],
        "checkpoints": str(ckpt),
    }
    return log, meta, acc


def _finish_engine(acc, ckpt: str) -> None:
    """After the artifact is written: every process waits, the main one drops the checkpoints."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(ckpt, ignore_errors=True)


def _save(out: Path, model, tok, log) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.main.generation_config.pad_token_id = tok.pad_token_id
    model.main.save_pretrained(out)
    tok.save_pretrained(out)
    if model.heads is not None:
        model.heads.save(out)
    atomic_write_jsonl(out / "train_log.jsonl", log)


def _meta(job: Job, log: list[dict], **extra) -> None:
    from methods.lm.train import loss_series

    args = job.args
    tail = log[-max(1, len(log) // 20) :]
    final_loss = sum(r["loss"] for r in tail) / len(tail)
    final_main_ce = sum(r["main_ce"] for r in tail) / len(tail)
    if args.record:
        # The training curves reach the report through this record (suite "train").
        curves = [loss_series(log)]
        if len(log) and "main_ce" in log[0]:
            curves.append(loss_series(log, key="main_ce", name="main_ce", label="main-head CE"))
        record = job.record(
            suite="train",
            method="mtp_d",
            base_model=extra.get("base_model", ""),
            tasks=["train"],
            config={k: extra.get(k) for k in ("heads", "loss", "train")},
            metrics=[
                metric("train", "final_loss", final_loss, n=len(tail), higher_is_better=False),
                metric(
                    "train", "final_main_ce", final_main_ce, n=len(tail), higher_is_better=False
                ),
            ],
            series=curves,
        )
        job.write_record(record, args.record)
    job.write_meta(
        kind="tiny",
        method="mtp_d",
        variant=job.variant,
        load={},
        threads=job.threads,
        device=job.device,
        final_loss=final_loss,
        final_main_ce=final_main_ce,
        main_weights_sha256=sha256_file(job.out / "model.safetensors"),
        inputs={
            p: sha256_file(p)
            for p in (args.text, args.arith, str(Path(args.tokenizer) / "tokenizer.json"))
            if Path(p).is_file()  # a hub trunk's tokenizer lives in the hub cache
        },
        **extra,
    )


def untie_output_head(main) -> None:
    """Give the output head O its own matrix, initialised as a copy of the embedding E.

    DeepSeek-V3 (Section 2.2) keeps E and O as two matrices, each shared between the main model
    and the MTP modules; the foundation's tiny models tie them. ``save_pretrained`` then stores
    both and ``from_pretrained`` keeps them apart (``tie_word_embeddings`` is false).
    """
    from torch import nn

    main.config.tie_word_embeddings = False
    text_cfg = main.config.get_text_config() if hasattr(main.config, "get_text_config") else None
    if text_cfg is not None:
        text_cfg.tie_word_embeddings = False
    main.lm_head.weight = nn.Parameter(main.get_input_embeddings().weight.detach().clone())


def _trunk_log(model, streams, train_cfg: dict, seed: int, batches: int = 8) -> list[dict]:
    """The frozen trunk's main-head CE on the first ``batches`` training batches (the windows
    the heads' run draws first): the log of ``ntp`` on a pretrained trunk, which trains nothing."""
    from methods.lm.train import _split_batch, sample_windows

    frac = train_cfg["arith_fraction"]
    counts = _split_batch(train_cfg["batch_size"], {"text": 1 - frac, "arith": frac})
    gen = torch.Generator().manual_seed(seed)
    log = []
    with torch.no_grad():
        for step in range(min(batches, train_cfg["steps"])):
            parts = [
                sample_windows(streams[k], c, train_cfg["seq_len"], gen)
                for k, c in counts.items()
                if c
            ]
            ce = float(model(input_ids=torch.cat(parts)).loss)
            log.append({"step": step, "loss": ce, "lr": 0.0, "main_ce": ce})
    return log


def build_on_trunk(job: Job) -> None:
    """MTP heads on a pretrained trunk (``papers.mtp_d.trunk``, README.md "Paper scale"): the
    trunk, its embedding and output head are frozen and only the K modules train (the paper's
    looped extension does the same with the trunk it pre-trained); ``ntp`` is the trunk itself,
    the plain-decoding reference. Looped extension continues from these artifacts unchanged."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from claimbench.models import loadable_source
    from methods.lm.model import n_params
    from methods.mtp_d.heads import MTPHeads
    from methods.mtp_d.loss import MTPLM, MTPLoss, freeze_for_extension

    cfg = job.config
    if job.variant not in TRUNK_VARIANTS:
        raise ClaimbenchError(
            f"papers.mtp_d.variants: {job.variant!r} on a frozen trunk (papers.mtp_d.trunk) "
            f"is not one of {sorted(TRUNK_VARIANTS)} (the stop-gradient ablation changes only "
            f"the trunk's gradient)"
        )
    if not job.args.trunk:
        raise ClaimbenchError("papers.mtp_d.trunk is set: the job needs --trunk <base artifact>")
    if job.variant == "ntp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ClaimbenchError("ntp on a pretrained trunk trains nothing: start it as one process")
    src = loadable_source(job.args.trunk)
    tok = AutoTokenizer.from_pretrained(src)
    # float32 master weights (the engine autocasts; the one-process loop casts to the job dtype)
    main = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
    if main.config.model_type != "llama":
        raise ClaimbenchError(
            f"papers.mtp_d.trunk: {cfg['trunk']!r} is a {main.config.model_type!r} model; the "
            f"MTP modules are Llama decoder layers (a Llama-architecture trunk is needed)"
        )
    k = int(VARIANTS[job.variant].get("heads", cfg["heads"]))
    torch.manual_seed(job.seed + 1)
    heads = MTPHeads(main.config, k) if k else None
    loss = MTPLoss.from_config({**cfg["loss"], **VARIANTS[job.variant]}, k, len(tok)) if k else None
    tc = cfg["train"]
    streams = _streams(job, tok)
    engine, trainable = {}, []
    model = MTPLM(main, heads, loss)
    if heads is None:
        model = job.to(model)
        log = _trunk_log(model, streams, tc, job.seed)
    elif use_engine(job):
        trainable = freeze_for_extension(model, 0)
        log, engine, acc = _engine_train(job, model, streams, tc, f"trunk {job.variant}")
        if not acc.is_main_process:
            return acc.wait_for_everyone()
    else:
        model = job.to(model)
        trainable = freeze_for_extension(model, 0)
        log = _train(model, streams, tc, job.seed, f"trunk {job.variant}")
    _save(job.out, model, tok, log)
    _meta(
        job,
        log,
        base_model=cfg["trunk"],
        trunk=str(src),
        heads=k,
        trainable=trainable,
        loss=None if loss is None else loss.__dict__,
        train=tc,
        tokens_seen=0 if heads is None else tc["steps"] * tc["batch_size"] * tc["seq_len"],
        n_params_main=n_params(main),
        n_params_heads=0 if heads is None else n_params(heads),
        **engine,
    )
    if engine:
        _finish_engine(acc, engine["engine"]["checkpoints"])


def build_train(job: Job) -> None:
    from transformers import AutoTokenizer

    from methods.lm.model import build_model, n_params
    from methods.mtp_d.heads import MTPHeads
    from methods.mtp_d.loss import MTPLM, MTPLoss

    if job.config.get("trunk"):
        return build_on_trunk(job)
    use_engine(job)  # refuses several processes without the engine
    if job.variant not in VARIANTS:
        raise ClaimbenchError(
            f"variant {job.variant!r} is not one of {sorted(VARIANTS)} (loop extensions use "
            f"the 'extend' command)"
        )
    cfg = job.config
    base_model, spec = architecture(job)
    k = int(VARIANTS[job.variant].get("heads", cfg["heads"]))
    if job.variant != "ntp" and k < 1:
        raise ClaimbenchError(f"papers.mtp_d.heads: K = {k} must be >= 1")
    loss_cfg = {**cfg["loss"], **VARIANTS[job.variant]}
    tok = AutoTokenizer.from_pretrained(job.args.tokenizer)
    main = build_model(spec, tok, seed=job.seed)
    if not cfg.get("tie_embeddings", True):
        untie_output_head(main)
    torch.manual_seed(job.seed + 1)
    heads = MTPHeads(main.config, k) if k else None
    loss = MTPLoss.from_config(loss_cfg, k, len(tok)) if k else None
    # trunk and heads are built in float32 (bit-for-bit the same init at every dtype), then
    # trained on the job's device in the job's dtype
    tc = cfg["train"]
    engine = {}
    if use_engine(job):
        model = MTPLM(main, heads, loss)
        log, engine, acc = _engine_train(job, model, _streams(job, tok), tc, f"mtp_d {job.variant}")
        if not acc.is_main_process:
            return acc.wait_for_everyone()
    else:
        model = job.to(MTPLM(main, heads, loss))
        log = _train(model, _streams(job, tok), tc, job.seed, f"mtp_d {job.variant}")
    _save(job.out, model, tok, log)
    _meta(
        job,
        log,
        **engine,
        base_model=base_model,
        heads=k,
        tie_embeddings=bool(cfg.get("tie_embeddings", True)),
        loss=None if loss is None else loss.__dict__,
        train=tc,
        spec=spec,
        tokens_seen=tc["steps"] * tc["batch_size"] * tc["seq_len"],
        n_params_main=n_params(main),
        n_params_heads=0 if heads is None else n_params(heads),
    )
    if engine:
        _finish_engine(acc, engine["engine"]["checkpoints"])


def build_extend(job: Job) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from methods.lm.model import n_params
    from methods.mtp_d.heads import extend_looped, load_heads
    from methods.mtp_d.loss import MTPLM, MTPLoss, freeze_for_extension

    if "loop" not in job.config:
        raise ClaimbenchError("papers.mtp_d.loop: section missing (looped extension settings)")
    train_cfg = job.config["loop"]["train"]
    src = Path(job.args.source)
    tok = AutoTokenizer.from_pretrained(src)
    # the engine trains float32 weights under autocast; the one-process loop in the job's dtype
    load = {"dtype": torch.float32} if use_engine(job) else job.load_kwargs()
    main = LlamaForCausalLM.from_pretrained(src, **load)
    old = load_heads(src, main)  # in the main model's dtype
    heads = extend_looped(old, job.args.factor)
    loss = MTPLoss.from_config(job.config["loss"], heads.num_modules, len(tok))
    engine = {}
    if use_engine(job):
        model = MTPLM(main, heads, loss)
        trainable = freeze_for_extension(model, old.num_modules)
        log, engine, acc = _engine_train(
            job, model, _streams(job, tok), train_cfg, f"loop {job.variant}"
        )
        if not acc.is_main_process:
            return acc.wait_for_everyone()
    else:
        model = job.to(MTPLM(main, heads, loss))
        trainable = freeze_for_extension(model, old.num_modules)
        log = _train(model, _streams(job, tok), train_cfg, job.seed, f"loop {job.variant}")
    _save(job.out, model, tok, log)
    src_meta = json.loads((src / "meta.json").read_text())
    _meta(
        job,
        log,
        base_model=src_meta.get("base_model", ""),
        source=str(src),
        source_main_weights_sha256=src_meta.get("main_weights_sha256"),
        heads=heads.num_modules,
        heads_trained=old.num_modules,
        factor=job.args.factor,
        trainable=trainable,
        loss=loss.__dict__,
        train=train_cfg,
        n_params_heads=n_params(heads),
        **engine,
    )
    if engine:
        _finish_engine(acc, engine["engine"]["checkpoints"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    for name, run in (("train", build_train), ("extend", build_extend)):
        p = add_job_options(sub.add_parser(name), papers=["mtp_d"], out="the artifact folder")
        p.add_argument("--tokenizer", required=True, help="tokenizer folder")
        p.add_argument("--text", required=True, help="pre-training text")
        p.add_argument("--arith", required=True, help="arithmetic training problems (JSONL)")
        p.add_argument("--record", default="", help="also write the training record (curves) here")
        p.add_argument(
            "--trunk", default="", help="base model artifact: heads on this frozen trunk"
        )
        p.set_defaults(run=run)
    p = sub.choices["extend"]
    p.add_argument("--source", required=True, help="artifact with trained MTP heads")
    p.add_argument(
        "--factor",
        type=int,
        required=True,
        help="heads x factor (one loop step: papers.mtp_d.loop.factors grow step by step)",
    )
    run_job(ap, None, argv)


if __name__ == "__main__":
    main()
