"""The quantization papers' perplexity: WikiText-2 (and C4) over fixed 2048-token windows.

    python -m benchmarks.perplexity --scale paper --paper nsds --variant llama-3.1-8b-nsds-b3 \\
        --artifact artifacts/paper/nsds/llama-3.1-8b-nsds-b3 \\
        --out results/runs/paper/nsds/llama-3.1-8b-nsds-b3/ppl.json

The convention of GPTQ (Frantar et al., 2023, ``datautils.py`` / ``llama.py``), which the NSDS
and D2Quant tables follow (methods/nsds/README.md, methods/d2quant/README.md):

* ``consecutive`` (WikiText-2): the test split's text column joined with ``"\\n\\n"``, tokenised
  once (the tokenizer's own special tokens, i.e. one BOS at the very start for Llama), cut into
  non-overlapping ``seq_len`` windows; the last partial window is dropped;
* ``random_docs`` (C4): ``n_windows`` windows of ``seq_len`` tokens, each from a document drawn
  with Python's ``random.seed(seed)`` among those at least ``seq_len`` tokens long, at a random
  offset (GPTQ's ``get_c4`` validation windows);
* each window is one forward pass with no context before it; every token but the first is
  predicted; ppl = exp(total NLL / predicted tokens) (GPTQ: exp of the mean of the windows'
  mean losses, the same number since every window predicts ``seq_len - 1`` tokens).

Metrics per data set ``<name>``: ``<name>/ppl`` with a delta-method stderr over windows
(``claimbench.stats.ratio_stderr``: windows are the units, se(ppl) = ppl * se(mean NLL)) and
``<name>/nll`` (nats per predicted token). Per-window samples carry ``ppl: [log-likelihood,
predicted tokens]``, so two variants on the same windows are compared window by window.

Settings are the scale's ``eval.ppl`` (``seq_len``, ``batch_size``, ``datasets``); the model
loads in the job's ``--dtype`` on its ``--device``; logits are upcast to float32 per batch.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
from pathlib import Path
from typing import Any

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_jsonl
from claimbench.job import Job, job_parser, run_job
from claimbench.models import read_meta, resolve_pretrained
from claimbench.records import metric, sample_row
from claimbench.stats import ratio_stderr, rolling_metric

SUITE = "ppl"
WINDOWS = ("consecutive", "random_docs")


def load_texts(spec: dict[str, Any], where: str = "eval.ppl") -> list[str]:
    """The ``column`` of one split of a data set, read through ``datasets`` from the local cache
    (hub id), a folder written by ``Dataset.save_to_disk``, or a builder over local files
    (``path: text|json|parquet`` with ``data_files``)."""
    import datasets

    path, split, column = spec["path"], spec["split"], spec.get("column", "text")
    try:
        if Path(path).is_dir() and (
            (Path(path) / "dataset_info.json").is_file()
            or (Path(path) / "dataset_dict.json").is_file()
        ):
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(
                path, spec.get("name"), split=split, data_files=spec.get("data_files")
            )
    except (FileNotFoundError, ConnectionError, ValueError, KeyError) as e:
        raise ClaimbenchError(
            f"{where}: path {path!r} (split {split!r}): cannot be read offline "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "run `claimbench prefetch` where the network is reachable"
        ) from None
    if column not in ds.column_names:
        raise ClaimbenchError(f"{where}: column {column!r} is not one of {ds.column_names}")
    return list(ds[column])


def consecutive_windows(ids, seq_len: int):
    """``ids`` (1-D token tensor) cut into ``[n, seq_len]`` non-overlapping windows, the last
    partial window dropped."""
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


def random_doc_windows(tokenizer, texts: list[str], seq_len: int, n: int, seed: int):
    """GPTQ's C4 windows: ``n`` times, draw documents until one has at least ``seq_len + 1``
    tokens, then a random ``seq_len`` slice of it (``random.seed(seed)``, as ``get_c4``)."""
    import torch

    rng = random.Random(seed)
    out, cache = [], {}
    for _ in range(n):
        for _tries in range(100 * len(texts)):
            i = rng.randint(0, len(texts) - 1)
            if i not in cache:
                cache[i] = tokenizer(texts[i], return_tensors="pt").input_ids[0]
            if cache[i].numel() > seq_len:
                break
        else:
            raise ClaimbenchError(f"random_docs: no document has more than {seq_len} tokens")
        ids = cache[i]
        j = rng.randint(0, ids.numel() - seq_len - 1)
        out.append(ids[j : j + seq_len])
    return torch.stack(out)


def make_windows(tokenizer, texts: list[str], spec: dict[str, Any], seq_len: int, seed: int):
    """The ``[n, seq_len]`` token windows of one data set (see the module docstring)."""
    if spec.get("windows", "consecutive") == "random_docs":
        return random_doc_windows(tokenizer, texts, seq_len, spec["n_windows"], seed)
    ids = tokenizer(spec.get("join", "\n\n").join(texts), return_tensors="pt").input_ids[0]
    windows = consecutive_windows(ids, seq_len)
    if spec.get("n_windows"):
        windows = windows[: spec["n_windows"]]
    return windows


def window_logliks(model, windows, batch_size: int, device: str) -> list[float]:
    """Sum of log p(token | window prefix) over tokens 1..L-1 of each window (float32 maths)."""
    import torch

    out: list[float] = []
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
            )
            out += (-nll.view(batch.shape[0], -1).sum(dim=1).double()).tolist()
            del logits, nll
    return out


def score(name: str, logliks: list[float], seq_len: int) -> tuple[list[dict], dict[str, Any]]:
    """Metrics ``<name>/ppl`` and ``<name>/nll`` of per-window log-likelihoods."""
    tokens = seq_len - 1
    pairs = [(ll, float(tokens)) for ll in logliks]
    nll = -sum(logliks) / (tokens * len(logliks))
    se = ratio_stderr(pairs)
    se_nll = se[1] if se else None
    ppl, se_ppl = rolling_metric("ppl", nll, se_nll) if se else (math.exp(nll), None)
    n = len(logliks)
    metrics = [
        metric(name, "ppl", ppl, stderr=se_ppl, n=n, higher_is_better=False),
        metric(name, "nll", nll, stderr=se_nll, n=n, higher_is_better=False),
    ]
    return metrics, {"ppl": ppl, "nll": nll, "windows": n, "tokens": n * tokens}


def load_model(pretrained: str, dtype: str, device: str):
    """Tokenizer and causal LM from a ``from_pretrained`` folder, in ``dtype`` on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pretrained)
    # Straight onto the GPU (no whole-model copy in host memory first); a job that sees several
    # GPUs (a 70B model's bf16 weights) spreads the layers over them.
    several = device != "cpu" and str(device).startswith("cuda") and torch.cuda.device_count() > 1
    device_map = None if device == "cpu" else ("auto" if several else device)
    model = AutoModelForCausalLM.from_pretrained(
        pretrained, dtype=getattr(torch, dtype), device_map=device_map
    )
    return tok, (model if several else model.to(device)).eval()


def perplexity(
    model,
    tokenizer,
    datasets_: dict[str, dict],
    seq_len: int,
    batch_size: int,
    device: str,
    seed: int = 0,
    where: str = "eval.ppl",
) -> dict[str, dict]:
    """{name: {"metrics", "summary", "logliks", "windows"}} for each data set spec."""
    out = {}
    for name, spec in datasets_.items():
        texts = load_texts(spec, f"{where}.datasets.{name}")
        windows = make_windows(tokenizer, texts, spec, seq_len, seed)
        if windows.shape[0] == 0:
            raise ClaimbenchError(
                f"{where}.datasets.{name}: fewer than seq_len {seq_len} tokens of text"
            )
        logliks = window_logliks(model, windows, batch_size, device)
        metrics, summary = score(name, logliks, seq_len)
        out[name] = {"metrics": metrics, "summary": summary, "logliks": logliks, "windows": windows}
    return out


def settings(job: Job) -> dict[str, Any]:
    """The suite's settings (the record's ``config``): the scale's ``eval.ppl``, command-line
    overrides applied."""
    cfg = job.scale_config["eval"].get("ppl")
    if cfg is None:
        raise ClaimbenchError(
            f"{job.args.scale_file or f'config/scales/{job.scale}.yaml'}: eval.ppl: not set "
            "(the perplexity suite needs its seq_len and datasets)"
        )
    names = [d for d in (job.args.datasets or "").split(",") if d] or list(cfg["datasets"])
    unknown = [d for d in names if d not in cfg["datasets"]]
    if unknown:
        raise ClaimbenchError(
            f"--datasets {','.join(unknown)}: not in eval.ppl.datasets {list(cfg['datasets'])}"
        )
    datasets_ = {d: dict(cfg["datasets"][d]) for d in names}
    if job.args.n_windows:
        for spec in datasets_.values():
            spec["n_windows"] = job.args.n_windows
    return {
        "seq_len": job.args.seq_len or cfg["seq_len"],
        "batch_size": job.args.batch_size or cfg["batch_size"],
        "datasets": datasets_,
        "dtype": job.dtype,
        "device": job.device,
    }


def evaluate(job: Job) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    torch.set_num_threads(job.threads)
    config = settings(job)
    pretrained = resolve_pretrained(job.args.artifact)
    meta = read_meta(job.args.artifact)
    tok, model = load_model(pretrained, job.dtype, job.device)
    res = perplexity(
        model,
        tok,
        config["datasets"],
        config["seq_len"],
        config["batch_size"],
        job.device,
        seed=job.seed,
        where=f"{job.args.scale_file or f'config/scales/{job.scale}.yaml'}: eval.ppl",
    )
    metrics, rows, hashes = [], [], {}
    for name, r in res.items():
        metrics += r["metrics"]
        windows = r["windows"]
        hashes[name] = hashlib.sha256(windows.numpy().astype("int64").tobytes()).hexdigest()[:16]
        for i, (ll, w) in enumerate(zip(r["logliks"], windows, strict=True)):
            ids = w.numpy().astype("int64").tobytes()
            rows.append(
                sample_row(
                    name,
                    i,
                    metrics={"ppl": [ll, config["seq_len"] - 1]},
                    prompt=tok.decode(w[:64]),
                    doc_hash=hashlib.sha256(ids).hexdigest()[:16],
                )
            )
    samples_name = job.out.with_suffix(".samples.jsonl").name
    atomic_write_jsonl(job.out.parent / samples_name, rows)
    config["summary"] = {name: r["summary"] for name, r in res.items()}
    config["model"] = {
        "pretrained": pretrained
        if meta.get("load", {}).get("hub_id")
        else os.path.relpath(pretrained),
        "kind": meta.get("kind"),
    }
    record = job.record(
        suite=SUITE,
        method=meta.get("method", job.paper),
        base_model=meta.get("base_model", job.variant),
        tasks=list(res),
        config=config,
        metrics=metrics,
        task_hashes=hashes,
        samples=samples_name,
    )
    job.write_record(record)
    return record


def parser() -> argparse.ArgumentParser:
    ap = job_parser(__doc__, out="the run record (.json) this evaluation writes")
    ap.add_argument("--artifact", required=True, help="artifact folder (holds meta.json)")
    ap.add_argument("--datasets", default="", help="comma-separated; default: eval.ppl.datasets")
    ap.add_argument("--seq-len", type=int, default=None, help="default: eval.ppl.seq_len")
    ap.add_argument("--batch-size", type=int, default=None, help="default: eval.ppl.batch_size")
    ap.add_argument("--n-windows", type=int, default=None, help="at most this many windows")
    return ap


def main(argv: list[str] | None = None) -> None:
    run_job(parser(), evaluate, argv)


if __name__ == "__main__":
    main()
