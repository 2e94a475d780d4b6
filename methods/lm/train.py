"""Causal-LM training on a mix of English text and the arithmetic world (CPU, seeded).

Batches mix fixed-length windows from two token streams: the text split and the arithmetic
training problems (each problem ``prompt + completion + EOS``; the long step-by-step form with
probability ``long_fraction``). Loss is plain next-token cross-entropy; AdamW with linear warmup
and cosine decay; gradient norm clipped to 1.0.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase


def arith_examples(path: str | Path, long_fraction: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            form = p["long"] if rng.random() < long_fraction else p["short"]
            out.append(f"{p['prompt']} {form}\n")
    return out


def token_stream(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def text_stream(path: str | Path, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    text = Path(path).read_text(encoding="utf-8")
    # Tokenize paragraph blocks so the fast tokenizer never sees one multi-MB string.
    blocks = [b for b in text.split("\n\n") if b.strip()]
    ids: list[int] = []
    for b in blocks:
        ids.extend(tokenizer(b + "\n\n", add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    if len(stream) <= length:
        raise ValueError(f"token stream of {len(stream)} tokens is shorter than seq_len {length}")
    starts = torch.randint(0, len(stream) - length, (n,), generator=gen)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(
    model: torch.nn.Module,
    streams: dict[str, torch.Tensor],
    mix: dict[str, float],
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    weight_decay: float = 0.1,
    warmup_steps: int = 20,
    seed: int = 0,
    desc: str = "train",
) -> list[dict]:
    """Train in place; returns the per-step log (step, loss, lr)."""
    gen = torch.Generator().manual_seed(seed)
    counts = _split_batch(batch_size, mix)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    model.train()
    log = []
    bar = tqdm(range(steps), desc=desc, mininterval=2.0, dynamic_ncols=True)
    for step in bar:
        parts = [sample_windows(streams[k], c, seq_len, gen) for k, c in counts.items() if c]
        batch = torch.cat(parts)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup_steps, lr)
        loss = model(input_ids=batch, labels=batch).loss  # HF shifts the labels by one

        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        log.append({"step": step, "loss": value, "lr": opt.param_groups[0]["lr"]})
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
    model.eval()
    return log


def train_from_config(
    model: torch.nn.Module,
    streams: dict[str, torch.Tensor],
    train_cfg: dict,
    *,
    seed: int,
    desc: str,
) -> list[dict]:
    """``train_lm`` with the text/arithmetic mix and settings of a scale's ``train`` section
    (validated, with its schema defaults filled in)."""
    frac = train_cfg["arith_fraction"]
    return train_lm(
        model,
        streams,
        {"text": 1 - frac, "arith": frac},
        steps=train_cfg["steps"],
        batch_size=train_cfg["batch_size"],
        seq_len=train_cfg["seq_len"],
        lr=train_cfg["lr"],
        weight_decay=train_cfg["weight_decay"],
        warmup_steps=train_cfg["warmup_steps"],
        seed=seed,
        desc=desc,
    )


def loss_series(
    log: list[dict],
    max_points: int = 200,
    key: str = "loss",
    name: str = "train_loss",
    label: str = "training loss",
) -> dict:
    """The training-loss curve of a ``train_lm`` log as a run-record series (``train_loss``;
    ``key`` picks another per-step column of the log, e.g. an MTP model's ``main_ce``).

    Each block of ``len(log) // max_points`` steps is averaged (x: the block's last step), so
    the curve is readable and its length bounded; a method writes it into its own record.
    """
    from claimbench.records import series

    stride = max(1, len(log) // max_points)
    xs, ys = [], []
    for i in range(0, len(log), stride):
        block = log[i : i + stride]
        xs.append(block[-1]["step"])
        ys.append(sum(r[key] for r in block) / len(block))
    return series(name, xs, ys, "step", label)


def _split_batch(batch_size: int, mix: dict[str, float]) -> dict[str, int]:
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"training mix {mix} has no positive weight")
    counts = {k: int(round(batch_size * v / total)) for k, v in mix.items()}
    diff = batch_size - sum(counts.values())
    first = max(mix, key=mix.get)
    counts[first] += diff
    return counts
