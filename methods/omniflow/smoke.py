"""GPU smoke of the paper-scale OMNIFLOW path: the ``hf`` backend's chat-template path on a micro
Qwen2 (ChatML template) on the given device and dtype, one PDE question (a vortex field with a
known count) end to end through PG-CoT with it, the same question through the rule backend, and
the multimodal request with the field rendered as a PNG."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def vortex_question(n: int = 64, centres=((0.25, 0.25, 1), (0.75, 0.3, -1), (0.5, 0.75, 1))):
    """A vortex-count item: Gaussian vortices on the unit torus (the answer is their number)."""
    x = np.arange(n) / n
    X, Y = np.meshgrid(x, x, indexing="ij")  # field[i, j] at (x_i, y_j)
    w = np.zeros((n, n))
    for x0, y0, s in centres:
        dx, dy = (X - x0 + 0.5) % 1 - 0.5, (Y - y0 + 0.5) % 1 - 0.5
        w += s * np.exp(-(dx**2 + dy**2) / (2 * 0.05**2))
    item = {"id": "vortex_count-smoke", "kind": "vortex_count", "fields": {"omega": w}}
    return {**item, "question": "How many vortices?", "meta": {}}, len(centres)


def gpu_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    import torch

    from claimbench.micro import micro_lm
    from methods.omniflow.backends import make_backend
    from methods.omniflow.controller import PGCoTConfig, pg_cot
    from methods.omniflow.render import render_png

    workdir = Path(workdir)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    path = micro_lm(workdir / "qwen2", arch="qwen2")
    spec = {"kind": "hf", "path": str(path), "chat_template": True}
    be = make_backend({**spec, "dtype": dtype, "device": device})
    assert next(be.model.parameters()).dtype == getattr(torch, dtype)
    assert next(be.model.parameters()).device.type == device
    ids = be.encode("How many vortices?")
    text = be.tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\n"), f"chat template not applied: {text!r}"
    out = be.generate("How many vortices?", 8)
    assert isinstance(out, str)
    item, truth = vortex_question()
    h0 = be.weights_hash()
    rep = pg_cot(item, be, PGCoTConfig(rounds=2, max_new_tokens=16))
    assert rep["status"] in ("verified", "unverified", "failed") and rep["n_rounds"] >= 1
    assert be.weights_hash() == h0  # frozen
    rule = pg_cot(item, make_backend({"kind": "rule"}), PGCoTConfig())
    assert rule["answer"] == truth, f"rule backend answered {rule['answer']}, expected {truth}"
    mm = make_backend(
        {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "vl", "images": True}
    )
    mm.set_images([render_png(item["fields"]["omega"])])
    parts = mm.request_body("How many vortices?", 16)["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if device == "cuda" else ""
    return [
        f"omniflow: hf chat path on micro qwen2, {device} {dtype}: {len(ids)} prompt tokens, "
        f"PG-CoT vortex question {rep['status']} in {rep['n_rounds']} round(s) "
        f"(rule backend: {rule['answer']} = truth {truth}); PNG part "
        f"{len(parts[1]['image_url']['url'])} chars, {time.perf_counter() - t0:.1f} s{peak}"
    ]
