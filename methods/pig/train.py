"""Data reading, word-level tokenizer, the shared training loop, artifact save/load and export.

Reads the canonical splits written by the retrieval suite's ``prepare`` step (files only:
``<split>.jsonl`` rows ``{video_id, caption, video_index}``, ``<split>.videos.json``, and the
frames, streamed one video at a time by ``benchmarks.retrieval.frames``) and writes artifacts
the suite reads back (``embeddings/<t>.*``).

Device and dtype: :func:`place` moves the float32 model to the job's ``--device``; a job
``--dtype`` other than float32 runs forward passes under ``torch.autocast`` in that dtype (float32
master weights and optimizer state; a gradient scaler for float16). Every batch goes to the
model's device; the exported embeddings come back to the CPU as float32. At float32 (tiny, small)
nothing is autocast and the runs are bit-for-bit those of a plain float32 model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from benchmarks.retrieval.frames import (
    ClipPreprocess,
    VideoFrames,
    as_frames,
    open_split_frames,
    video_loader,
)
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


class HFTextTokenizer:
    """CLIP's BPE tokenizer (a ``transformers`` tokenizer folder) with :class:`Vocab`'s interface:
    ``[BOS] tokens [EOS] [PAD]...`` truncated to ``length``, and the EOT (= EOS) positions."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad = self.eos if pad is None else pad
        if self.bos is None or self.eos is None:
            raise ClaimbenchError(
                f"{tokenizer.name_or_path}: the tokenizer needs BOS and EOS tokens (CLIP's "
                "<|startoftext|> / <|endoftext|>)"
            )

    @classmethod
    def from_folder(cls, folder: str | Path) -> HFTextTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))

    def save(self, folder: Path) -> None:
        self.tok.save_pretrained(str(folder))

    def encode(self, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        toks = torch.full((len(captions), length), self.pad, dtype=torch.long)
        eot = torch.empty(len(captions), dtype=torch.long)
        body = self.tok(list(captions), add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(body):
            ids = [self.bos, *ids[: length - 2], self.eos]
            toks[i, : len(ids)] = torch.tensor(ids)
            eot[i] = len(ids) - 1
        return toks, eot


@dataclass
class SplitData:
    captions: list[str]
    caption_video: np.ndarray  # video index of each caption
    videos: list[str]
    frames: VideoFrames | np.ndarray  # streamed per video (or uint8 (videos, T, H, W, C))


def read_split(data_dir: str | Path, name: str) -> SplitData:
    d = Path(data_dir)
    path = d / f"{name}.jsonl"
    if not path.is_file():
        raise ClaimbenchError(f"{path}: canonical split not found")
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    videos = json.loads((d / f"{name}.videos.json").read_text(encoding="utf-8"))
    frames = open_split_frames(d, name, videos)
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


def place(model: RetrievalModel, device, dtype: str | torch.dtype = "float32") -> RetrievalModel:
    """The float32 model on ``device``; ``dtype`` (the job's) other than float32 becomes the
    autocast dtype of its forward passes (mixed precision, float32 master weights)."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = model.to(device=device, dtype=torch.float32)
    model.amp_dtype = None if dtype == torch.float32 else dtype
    return model


def autocast(model: torch.nn.Module):
    """``torch.autocast`` in the model's mixed-precision dtype, or nothing (float32)."""
    amp = getattr(model, "amp_dtype", None)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(model_device(model).type, dtype=amp)


def model_frames(model: RetrievalModel, frames) -> VideoFrames:
    """The dataset of ``frames`` as the model's video tower takes them: stored uint8 frames
    (scratch towers) or ``cfg.frames`` per video through CLIP's preprocessing (CLIP towers)."""
    ds = as_frames(frames)
    transform = getattr(model, "image_transform", None)
    if model.cfg.backbone == "clip":
        if transform is None:
            raise ClaimbenchError("a CLIP-backbone model needs its image preprocessing")
        return ds.prepared(model.cfg.frames, transform)
    return ds


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
    workers: int = 0,
    eval_every: int = 0,
    val: SplitData | None = None,
) -> list[dict]:
    """Joint training L = L_nce + lambda L_gen (README "Losses"); one random caption per video
    per step. The settings are the ``train`` section of the scale file (defaults in
    ``config/schema/papers/pig.schema.yaml``).

    Batches hold distinct videos (epochs of a seeded permutation), so the contrastive
    targets are the diagonal; they are drawn on the CPU (same order on every device), their
    frames read by a DataLoader (``workers`` processes) one video at a time, and moved to the
    model's device. Returns the loss log; with ``val`` and ``eval_every``, rows ``{"step",
    "val_R1"}`` join it: text-to-video R@1 on ``val`` before the first update (step 0, the
    starting point every arm shares), every ``eval_every`` updates and after the last (the
    learning curves; the draws of the training batches are unchanged).
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
    plan = []  # (videos, captions) of every step, drawn first: the same draws as step by step
    for _ in range(steps):
        if pos + batch_size > n_vid:
            order, pos = rng.permutation(n_vid), 0
        vids = order[pos : pos + batch_size]
        pos += batch_size
        plan.append((vids, [caps_of[v][int(rng.integers(len(caps_of[v])))] for v in vids]))
    loader = video_loader(
        model_frames(model, data.frames),
        batches=[[int(v) for v in vids] for vids, _ in plan],
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler(
        device.type, enabled=getattr(model, "amp_dtype", None) == torch.float16
    )
    model.train()
    uses_gen = model.arm in ("pig", "pig_nogen") and gen_lambda > 0
    batches = zip(range(steps), plan, loader, strict=True)
    evals = val is not None and eval_every > 0
    if evals:
        log.append({"step": 0, "val_R1": val_r1(model, vocab, val, workers=workers)})
        model.train()
    for step, (_, cap_idx), frames in tqdm(
        batches, total=steps, desc=model.arm, mininterval=2.0, dynamic_ncols=True
    ):
        tokens, eot = vocab.encode([data.captions[i] for i in cap_idx], model.cfg.context_length)
        tokens, eot = tokens.to(device), eot.to(device)
        frames = frames.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, warmup, lr)
        with autocast(model):
            v, q_hat = model.encode_video(frames)
            t = model.encode_text(tokens, eot)
            l_nce = nce_loss(v.float(), t.float(), model.logit_scale)
            l_gen = (
                generation_loss(q_hat.float(), t.float())
                if uses_gen
                else torch.zeros((), device=device)
            )
            loss = l_nce + gen_lambda * l_gen
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % log_every == 0 or step == steps - 1:
            log.append(
                {"step": step, "loss": loss.item(), "nce": l_nce.item(), "gen": l_gen.item()}
            )
        if evals and ((step + 1) % eval_every == 0 or step == steps - 1):
            log.append({"step": step + 1, "val_R1": val_r1(model, vocab, val, workers=workers)})
            model.train()
    model.eval()
    return log


@torch.no_grad()
def val_r1(model: RetrievalModel, vocab, data: SplitData, workers: int = 0) -> float:
    """Text-to-video R@1 (points) of ``data`` through the online path (stored vectors, dot
    products), as the retrieval suite scores it."""
    from benchmarks.retrieval.metrics import summarize, t2v_ranks

    video = encode_videos(model, data.frames, workers=workers)
    text = encode_texts(model, vocab, data.captions)
    sim = (text @ video.T).cpu().double().numpy()
    return float(summarize(t2v_ranks(sim, data.caption_video))["R1"])


def curves(log: list[dict]) -> list[dict]:
    """The learning curves of a :func:`train` log as run-record series: ``train_loss`` (and
    ``train_nce``, ``train_gen`` where L_gen is on) per logged step, ``val_R1`` per evaluation."""
    from claimbench.records import series

    out = []
    rows = [r for r in log if "loss" in r]
    for key, name, label in (
        ("loss", "train_loss", "training loss L"),
        ("nce", "train_nce", "L_nce"),
        ("gen", "train_gen", "L_gen"),
    ):
        if rows and (key != "gen" or any(r["gen"] for r in rows)):
            out.append(
                series(name, [r["step"] for r in rows], [r[key] for r in rows], "step", label)
            )
    ev = [r for r in log if "val_R1" in r]
    if ev:
        out.append(
            series(
                "val_R1", [r["step"] for r in ev], [r["val_R1"] for r in ev], "step", "val t2v R@1"
            )
        )
    return out


@torch.no_grad()
def encode_videos(model: RetrievalModel, frames, batch: int = 64, workers: int = 0) -> torch.Tensor:
    """The offline index: one L2-normalised float32 vector per video (on the model's device),
    frames streamed in order (``batch`` videos at a time, ``workers`` loader processes)."""
    model.eval()
    device = model_device(model)
    loader = video_loader(
        model_frames(model, frames),
        batch_size=batch,
        workers=workers,
        pin_memory=device.type == "cuda",
    )
    out = []
    for x in loader:
        with autocast(model):
            out.append(model.encode_video(x.to(device, non_blocking=True))[0].float())
    return F.normalize(torch.cat(out), dim=-1).float()


@torch.no_grad()
def encode_texts(model: RetrievalModel, vocab, captions: list[str], batch: int = 256):
    """One L2-normalised float32 vector per caption (on the model's device)."""
    model.eval()
    device = model_device(model)
    out = []
    for i in range(0, len(captions), batch):
        tokens, eot = vocab.encode(captions[i : i + batch], model.cfg.context_length)
        with autocast(model):
            out.append(model.encode_text(tokens.to(device), eot.to(device)).float())
    return F.normalize(torch.cat(out), dim=-1).float()


def export_embeddings(
    model, vocab, data: SplitData, name: str, out: Path, batch: int = 64, workers: int = 0
) -> None:
    """What the retrieval suite reads: embeddings/<name>.{text,video}.npy + ids.json."""
    emb = out / "embeddings"
    emb.mkdir(parents=True, exist_ok=True)
    np.save(emb / f"{name}.text.npy", encode_texts(model, vocab, data.captions).cpu().numpy())
    video = encode_videos(model, data.frames, batch, workers)
    np.save(emb / f"{name}.video.npy", video.cpu().numpy())
    atomic_write_json(
        emb / f"{name}.ids.json",
        {"captions": [data.videos[i] for i in data.caption_video], "videos": data.videos},
    )


def save_model(model: RetrievalModel, vocab, out: Path) -> None:
    """Weights (float32), config, and the text side: ``vocab.json`` (word vocabulary) or, for a
    CLIP backbone, ``tokenizer/`` and ``preprocessor_config.json`` (so later jobs need only this
    folder)."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    atomic_write_json(out / "config.json", {"arm": model.arm, "tower": model.cfg.to_dict()})
    if isinstance(vocab, HFTextTokenizer):
        if (out / "tokenizer").exists():
            shutil.rmtree(out / "tokenizer")
        vocab.save(out / "tokenizer")
        model.image_transform.save(out)
    else:
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
    saved_arm = cfg["arm"]
    tower = TowerConfig(**cfg["tower"])
    if tower.backbone == "clip":
        vocab = HFTextTokenizer.from_folder(folder / "tokenizer")
    else:
        vocab = Vocab(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    model = RetrievalModel(tower, saved_arm)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    if tower.backbone == "clip":
        model.image_transform = ClipPreprocess.from_folder(folder)
    if arm is not None and arm != saved_arm:
        if saved_arm != "two_tower":
            raise ClaimbenchError(f"{folder}: can start a new arm only from a two-tower model")
        model.arm = arm
        model.add_pig_modules()
    model.eval()
    return model, vocab
