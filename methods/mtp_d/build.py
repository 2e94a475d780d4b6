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
import shutil
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.errors import ClaimbenchError, exit_on_user_error
from claimbench.io import atomic_write_json, atomic_write_jsonl, sha256_file

# Variants trained from scratch: what each changes in the loss (spec §6 runs 1-4).
VARIANTS = {
    "ntp": {"heads": 0},  # plain next-token model, no heads
    "mtp": {"beta": 0.0},  # main CE + head CE (DeepSeek-style MTP)
    "mtp_d": {},  # + top-N forward KL to the detached main head
    "mtp_d_nosg": {"stop_grad": False},  # ablation: KL without the stop-gradient
}


def _streams(args, tok):
    from methods.lm.train import arith_examples, text_stream, token_stream

    return {
        "text": text_stream(args.text, tok),
        "arith": token_stream(arith_examples(args.arith, args.long_fraction, seed=args.seed), tok),
    }


def _train(model, streams, train_cfg, seed, desc):
    from methods.lm.train import train_from_config

    log = train_from_config(model, streams, train_cfg, seed=seed, desc=desc)
    for row, parts in zip(log, model.history, strict=True):
        row.update(parts)
    return log


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


def _meta(args, out: Path, extra: dict, log: list[dict], t: dict) -> None:
    tail = log[-max(1, len(log) // 20) :]
    meta = {
        "name": args.variant,
        "kind": "tiny",
        "method": "mtp_d",
        "variant": args.variant,
        "load": {},
        "seed": args.seed,
        "threads": args.threads,
        "device": args.device,
        "final_loss": sum(r["loss"] for r in tail) / len(tail),
        "final_main_ce": sum(r["main_ce"] for r in tail) / len(tail),
        "main_weights_sha256": sha256_file(out / "model.safetensors"),
        "inputs": {
            p: sha256_file(p)
            for p in (args.text, args.arith, str(Path(args.tokenizer) / "tokenizer.json"))
        },
        "provenance": provenance.capture(t["started_at"], t["wall_s"]),
    }
    meta.update(extra)
    atomic_write_json(out / "meta.json", meta)


def build_train(args) -> None:
    from transformers import AutoTokenizer

    from methods.lm.model import build_model, n_params
    from methods.mtp_d.heads import MTPHeads
    from methods.mtp_d.loss import MTPLM, MTPLoss

    if args.variant not in VARIANTS:
        raise ClaimbenchError(
            f"variant {args.variant!r} is not one of {sorted(VARIANTS)} (loop extensions use "
            f"the 'extend' command)"
        )
    torch.set_num_threads(args.threads)
    spec, cfg = json.loads(args.spec), json.loads(args.config)
    k = int(VARIANTS[args.variant].get("heads", cfg["heads"]))
    if args.variant != "ntp" and k < 1:
        raise ClaimbenchError(f"papers.mtp_d.heads: K = {k} must be >= 1")
    loss_cfg = {**cfg.get("loss", {}), **VARIANTS[args.variant]}
    out = Path(args.out)
    with provenance.timed() as t:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        main = build_model(spec, tok, seed=args.seed)
        torch.manual_seed(args.seed + 1)
        heads = MTPHeads(main.config, k) if k else None
        loss = MTPLoss.from_config(loss_cfg, k, len(tok)) if k else None
        model = MTPLM(main, heads, loss).to(args.device)
        log = _train(model, _streams(args, tok), cfg["train"], args.seed, f"mtp_d {args.variant}")
        _save(out, model, tok, log)
    tc = cfg["train"]
    _meta(
        args,
        out,
        {
            "base_model": args.base_model,
            "heads": k,
            "loss": None if loss is None else loss.__dict__,
            "train": tc,
            "spec": spec,
            "tokens_seen": tc["steps"] * tc["batch_size"] * tc["seq_len"],
            "n_params_main": n_params(main),
            "n_params_heads": 0 if heads is None else n_params(heads),
        },
        log,
        t,
    )


def build_extend(args) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from methods.lm.model import n_params
    from methods.mtp_d.heads import extend_looped, load_heads
    from methods.mtp_d.loss import MTPLM, MTPLoss, freeze_for_extension

    torch.set_num_threads(args.threads)
    cfg = json.loads(args.config)
    src = Path(args.source)
    out = Path(args.out)
    with provenance.timed() as t:
        tok = AutoTokenizer.from_pretrained(src)
        main = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
        old = load_heads(src, main)
        heads = extend_looped(old, args.factor)
        loss = MTPLoss.from_config(cfg.get("loss", {}), heads.num_modules, len(tok))
        model = MTPLM(main, heads, loss).to(args.device)
        trainable = freeze_for_extension(model, old.num_modules)
        log = _train(model, _streams(args, tok), cfg["train"], args.seed, f"loop {args.variant}")
        _save(out, model, tok, log)
    src_meta = json.loads((src / "meta.json").read_text())
    _meta(
        args,
        out,
        {
            "base_model": src_meta.get("base_model", ""),
            "source": str(src),
            "source_main_weights_sha256": src_meta.get("main_weights_sha256"),
            "heads": heads.num_modules,
            "heads_trained": old.num_modules,
            "factor": args.factor,
            "trainable": trainable,
            "loss": loss.__dict__,
            "train": cfg["train"],
            "n_params_heads": n_params(heads),
        },
        log,
        t,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("train", "extend"):
        p = sub.add_parser(name)
        for a in ("--variant", "--config", "--tokenizer", "--text", "--arith", "--out"):
            p.add_argument(a, required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--long-fraction", type=float, default=0.3)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--device", default="cpu")
    p = sub.choices["train"]
    p.add_argument("--spec", required=True, help="main model spec (JSON), as in models.<name>")
    p.add_argument("--base-model", required=True, help="name of the architecture in models")
    p = sub.choices["extend"]
    p.add_argument("--source", required=True, help="artifact with trained MTP heads")
    p.add_argument("--factor", type=int, default=2)
    args = ap.parse_args(argv)
    with exit_on_user_error(ValueError):
        {"train": build_train, "extend": build_extend}[args.what](args)


if __name__ == "__main__":
    main()
