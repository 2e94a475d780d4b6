"""Data reading, word-level tokenizer, the shared training loop, artifact save/load and export.

Reads the canonical splits written by the retrieval suite's ``prepare`` step (files only:
``<split>.jsonl`` rows ``{video_id, caption, video_index}``, ``<split>.videos.json``,
``<split>.frames.npy``) and writes artifacts the suite reads back (``embeddings/<t>.*``).

Device: every batch goes to the device of the model's parameters (the job's ``--device``; the
model is moved there with ``job.to``); the exported embeddings come back to the CPU as float32.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_json
from methods.pig.model import (
    BOS,
    EOT,
    PAD,
    SPECIALS,
    UNK,
    RetrievalModel,
    TowerConfig,
    generation_loss,
    nce_loss,
)

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Vocab:
    def __init__(self, itos: list[str]):
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def build(cls, captions: list[str]) -> Vocab:
        return cls(SPECIALS + sorted({w for c in captions for w in words(c)}))

    def encode(self, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[BOS] words [EOT] [PAD]..., truncated to ``length``; returns tokens and EOT positions."""
        toks = torch.full((len(captions), length), PAD, dtype=torch.long)
        eot = torch.empty(len(captions), dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [BOS] + [self.stoi.get(w, UNK) for w in words(c)][: length - 2] + [EOT]
            toks[i, : len(ids)] = torch.tensor(ids)
            eot[i] = len(ids) - 1
        return toks, eot


@dataclass
class SplitData:
    captions: list[str]
    caption_video: np.ndarray  # video index of each caption
    videos: list[str]
    frames: np.ndarray  # uint8 (videos, T, H, W, C)


def read_split(data_dir: str | Path, name: str) -> SplitData:
    d = Path(data_dir)
    path = d / f"{name}.jsonl"
    if not path.is_file():
        raise ClaimbenchError(f"{path}: canonical split not found")
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    videos = json.loads((d / f"{name}.videos.json").read_text(encoding="utf-8"))
    frames = np.load(d / f"{name}.frames.npy", allow_pickle=False)
    if frames.shape[0] != len(videos):
        raise ClaimbenchError(
            f"{d / (name + '.frames.npy')}: {frames.shape[0]} videos, expected {len(videos)}"
        )
    return SplitData(
        [r["caption"] for r in rows],
        np.array([r["video_index"] for r in rows], dtype=np.int64),
        videos,
        frames,
    )


def set_determinism() -> None:
    """Deterministic kernels (the seeds and threads are the job's: ``claimbench.job``).

    cuBLAS needs a fixed workspace for repeatable matrix products; it must be set before the
    first CUDA matrix product of the process.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live: batches are moved there."""
    return next(model.parameters()).device


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * p))


def train(
    model: RetrievalModel,
    vocab: Vocab,
    data: SplitData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    gen_lambda: float,
    weight_decay: float,
    warmup_ratio: float,
    grad_clip: float,
    log_every: int,
) -> list[dict]:
    """Joint training L = L_nce + lambda L_gen (README "Losses"); one random caption per video
    per step. The settings are the ``train`` section of the scale file (defaults in
    ``config/schema/papers/pig.schema.yaml``).

    Batches hold distinct videos (epochs of a seeded permutation), so the contrastive
    targets are the diagonal; they are drawn on the CPU (same order on every device) and moved
    to the model's device. Returns the loss log.
    """
    rng = np.random.default_rng(seed)
    device = model_device(model)
    caps_of = [[] for _ in data.videos]
    for i, v in enumerate(data.caption_video):
        caps_of[v].append(i)
    n_vid = len(data.videos)
    batch_size = min(batch_size, n_vid)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
    )
    warmup = max(1, int(round(warmup_ratio * steps)))
    order, pos, log = rng.permutation(n_vid), 0, []
    model.train()
    uses_gen = model.arm in ("pig", "pig_nogen") and gen_lambda > 0
    for step in tqdm(range(steps), desc=model.arm, mininterval=2.0, dynamic_ncols=True):
        if pos + batch_size > n_vid:
            order, pos = rng.permutation(n_vid), 0
        vids = order[pos : pos + batch_size]
        pos += batch_size
        cap_idx = [caps_of[v][int(rng.integers(len(caps_of[v])))] for v in vids]
        tokens, eot = vocab.encode([data.captions[i] for i in cap_idx], model.cfg.context_length)
        tokens, eot = tokens.to(device), eot.to(device)
        frames = torch.from_numpy(np.ascontiguousarray(data.frames[vids])).to(device)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, warmup, lr)
        v, q_hat = model.encode_video(frames)
        t = model.encode_text(tokens, eot)
        l_nce = nce_loss(v, t, model.logit_scale)
        l_gen = generation_loss(q_hat, t) if uses_gen else torch.zeros((), device=device)
        loss = l_nce + gen_lambda * l_gen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            log.append(
                {"step": step, "loss": loss.item(), "nce": l_nce.item(), "gen": l_gen.item()}
            )
    model.eval()
    return log


@torch.no_grad()
def encode_videos(model: RetrievalModel, frames: np.ndarray, batch: int = 64) -> torch.Tensor:
    """The offline index: one L2-normalised float32 vector per video (on the model's device)."""
    model.eval()
    device = model_device(model)
    out = [
        model.encode_video(
            torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])).to(device)
        )[0]
        for i in range(0, len(frames), batch)
    ]
    return F.normalize(torch.cat(out), dim=-1).float()


@torch.no_grad()
def encode_texts(model: RetrievalModel, vocab: Vocab, captions: list[str], batch: int = 256):
    """One L2-normalised float32 vector per caption (on the model's device)."""
    model.eval()
    device = model_device(model)
    out = []
    for i in range(0, len(captions), batch):
        tokens, eot = vocab.encode(captions[i : i + batch], model.cfg.context_length)
        out.append(model.encode_text(tokens.to(device), eot.to(device)))
    return F.normalize(torch.cat(out), dim=-1).float()


def export_embeddings(model, vocab, data: SplitData, name: str, out: Path) -> None:
    """What the retrieval suite reads: embeddings/<name>.{text,video}.npy + ids.json."""
    emb = out / "embeddings"
    emb.mkdir(parents=True, exist_ok=True)
    np.save(emb / f"{name}.text.npy", encode_texts(model, vocab, data.captions).cpu().numpy())
    np.save(emb / f"{name}.video.npy", encode_videos(model, data.frames).cpu().numpy())
    atomic_write_json(
        emb / f"{name}.ids.json",
        {"captions": [data.videos[i] for i in data.caption_video], "videos": data.videos},
    )


def save_model(model: RetrievalModel, vocab: Vocab, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    atomic_write_json(out / "config.json", {"arm": model.arm, "tower": model.cfg.to_dict()})
    atomic_write_json(out / "vocab.json", vocab.itos)


def load_model(folder: str | Path, arm: str | None = None) -> tuple[RetrievalModel, Vocab]:
    """Load an artifact; with ``arm`` different from the saved one, start that arm from these
    weights (the two towers), building G from the loaded text tower (theta_0 -> arm).

    The model is built and loaded in float32 on the CPU (so that a new arm's modules are
    initialised the same way everywhere); the caller moves it with ``job.to(model)``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ClaimbenchError(f"{folder}: not a pig artifact (no config.json)")
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    vocab = Vocab(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    saved_arm = cfg["arm"]
    model = RetrievalModel(TowerConfig(**cfg["tower"]), saved_arm)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    if arm is not None and arm != saved_arm:
        if saved_arm != "two_tower":
            raise ClaimbenchError(f"{folder}: can start a new arm only from a two-tower model")
        model.arm = arm
        model.add_pig_modules()
    model.eval()
    return model, vocab
