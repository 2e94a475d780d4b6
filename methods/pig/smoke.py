"""PIG's part of ``make gpu-smoke``: the paper-scale code path on a micro CLIP, end to end.

:func:`gpu_smoke` builds a micro ``CLIPModel`` folder (``claimbench.micro.micro_clip``, plus a
CLIP-style tokenizer BOS and ``preprocessor_config.json``), writes a handful of videos as
per-video frame files with JSON Lines captions, and then runs the functions the paper-scale
jobs run: ``benchmarks.retrieval.prepare.prepare`` (frames indexed in place, not copied),
``methods.pig.build.clip_theta0`` (``init_from``: CLIP weights into the towers; the towers'
embeddings must equal ``CLIPModel.get_text_features`` / ``get_image_features``),
``methods.pig.train.save_model`` / ``load_model`` / ``place`` / ``train`` (Two-Tower and PIG, a few
steps with mixed precision in ``dtype`` on ``device``, frames streamed by a DataLoader) and
``export_embeddings`` + the retrieval suite's scoring (R@1/5).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

# CLIP's preprocessing settings (openai/clip-vit-base-patch32), at the micro image size.
MICRO_PREPROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 32},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 32, "width": 32},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "CLIPImageProcessor",
}
MICRO_TOWER = dict(frames=3, n_proxies=3, context_length=32, its_top_k=4)


def micro_clip_checkpoint(out: Path, seed: int = 0) -> Path:
    """A micro CLIP folder laid out like ``openai/clip-vit-base-patch32``: ``CLIPModel`` weights,
    a tokenizer whose BOS differs from EOS (as CLIP's <|startoftext|> / <|endoftext|>), and
    ``preprocessor_config.json``."""
    from transformers import AutoTokenizer

    from claimbench.micro import micro_clip

    path = micro_clip(out, seed=seed, image_size=32, patch_size=8)
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.bos_token = "<|im_start|>"  # an id inside the micro vocabulary
    tok.save_pretrained(str(path))
    (path / "preprocessor_config.json").write_text(json.dumps(MICRO_PREPROCESSOR))
    return path


def write_videos(root: Path, n: int, frames: int = 5, seed: int = 0) -> list[str]:
    """``n`` videos as ``<root>/frames/<id>.npy`` (uint8, 40 x 48) and ``<root>/captions.jsonl``
    (two captions each, from ``claimbench.micro.CORPUS``)."""
    from claimbench.micro import CORPUS

    rng = np.random.default_rng(seed)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    ids = [f"video{i}" for i in range(n)]
    rows = []
    for i, vid in enumerate(ids):
        base = rng.integers(0, 256, size=(1, 40, 48, 3))
        noise = rng.integers(-20, 21, size=(frames, 40, 48, 3))
        np.save(root / "frames" / f"{vid}.npy", np.clip(base + noise, 0, 255).astype(np.uint8))
        rows.append({"clip_id": vid, "text": [CORPUS[2 * i], CORPUS[2 * i + 1]]})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ids


def _check_clip_equality(model, tok, ckpt: Path) -> float:
    """Before training, our towers' embeddings equal CLIPModel's on the same inputs."""
    from transformers import CLIPModel

    from claimbench.micro import CORPUS

    ref = CLIPModel.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    tokens, eot = tok.encode(CORPUS[:4], model.cfg.context_length)
    g = torch.Generator().manual_seed(0)
    px = torch.randn(2, model.cfg.frames, 3, 32, 32, generator=g)
    with torch.no_grad():
        ours_t = model.encode_text(tokens, eot)
        ref_t = ref.get_text_features(input_ids=tokens).pooler_output
        h, _ = model.video(px, with_globals=False)
        ours_i = h[:, model.video.frame_cls_index() - model.cfg.n_global]
        ref_i = ref.get_image_features(pixel_values=px.flatten(0, 1)).pooler_output
    err = max(
        (ours_t - ref_t).abs().max().item(),
        (ours_i.flatten(0, 1) - ref_i).abs().max().item(),
    )
    if err > 1e-5:
        raise AssertionError(f"pig: CLIP init: towers differ from CLIPModel by {err:.2e}")
    return err


def gpu_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    """Run PIG's paper-scale code path end to end on a micro CLIP; return lines to print."""
    from methods.pig.train import set_determinism

    deterministic = torch.are_deterministic_algorithms_enabled()
    set_determinism()  # as the PIG jobs run (deterministic kernels), restored afterwards
    try:
        return _smoke(device, dtype, Path(workdir))
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    from benchmarks.retrieval import metrics as M
    from benchmarks.retrieval.prepare import prepare
    from benchmarks.retrieval.suite import load_split, similarity
    from methods.pig.build import clip_theta0
    from methods.pig.train import (
        export_embeddings,
        load_model,
        place,
        read_split,
        save_model,
        train,
    )

    t0 = time.perf_counter()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ckpt = micro_clip_checkpoint(workdir / "clip")
    write_videos(workdir / "raw", 8)
    data = workdir / "data"
    m = prepare(workdir / "raw" / "captions.jsonl", workdir / "raw" / "frames", "smoke", data)
    if m["frames_layout"] != "npy":
        raise AssertionError(f"pig: frames were copied ({m['frames_layout']}), not read in place")
    model, tok, _ = clip_theta0(dict(MICRO_TOWER), "micro-clip", str(ckpt), "smoke.pretrain")
    err = _check_clip_equality(model, tok, ckpt)
    save_model(model, tok, workdir / "theta0")
    lines = [f"pig: init_from micro CLIP: towers = CLIPModel features (max diff {err:.1e})"]
    split = read_split(data, "smoke")
    rows, videos = load_split(data, "smoke")
    settings = dict(steps=4, batch_size=4, lr=1e-4, weight_decay=0.2, warmup_ratio=0.01)
    # loader processes on a GPU node, as the paper-scale jobs (papers.pig.workers)
    settings.update(grad_clip=1.0, log_every=1, seed=0, workers=2 if cuda else 0)
    for arm in ("two_tower", "pig"):
        t1 = time.perf_counter()
        torch.manual_seed(0)  # G's mapper, the fusion's dropout: the same run every time
        model, tok = load_model(workdir / "theta0", arm=arm)
        model = place(model, device, dtype)
        lam = 1.0 if arm == "pig" else 0.0
        log = train(model, tok, split, gen_lambda=lam, **settings)
        bad = [r for r in log if not all(math.isfinite(r[k]) for k in ("loss", "nce", "gen"))]
        if bad:
            raise AssertionError(f"pig: {arm}: non-finite losses {bad[:2]}")
        if next(model.parameters()).dtype != torch.float32:
            raise AssertionError(f"pig: {arm}: master weights are not float32")
        art = workdir / arm
        export_embeddings(model, tok, split, "smoke", art, batch=4)
        sim = similarity(art / "embeddings", "smoke", rows, videos)
        cap_video = np.array([r["video_index"] for r in rows])
        s = M.summarize(M.t2v_ranks(sim, cap_video))
        if sim.shape != (16, 8) or not np.isfinite(sim).all():
            raise AssertionError(
                f"pig: {arm}: similarity {sim.shape}, finite {np.isfinite(sim).all()}"
            )
        mode = dtype if dtype == "float32" else f"{dtype} autocast, float32 master weights"
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if cuda else ""
        lines.append(
            f"pig: {arm} on {device} {mode}: loss "
            f"{log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}, t2v R@1 {s['R1']:.1f} "
            f"R@5 {s['R5']:.1f} over 16 captions x 8 videos, "
            f"{time.perf_counter() - t1:.1f} s{peak}"
        )
    lines.append(f"pig: total {time.perf_counter() - t0:.1f} s")
    return lines
