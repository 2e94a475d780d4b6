"""Load causal-LM artifacts and check that models meant to be compared share a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase


def artifact_dir(path: str | Path) -> Path:
    """Accept an artifact folder or its meta.json; the folder must hold a saved model."""
    p = Path(path)
    if p.name == "meta.json":
        p = p.parent
    if not (p / "config.json").is_file() and not (p / "meta.json").is_file():
        raise FileNotFoundError(
            f"{p}: not a causal-LM artifact (no config.json); build it first or check the path"
        )
    return p


def load_model(
    path: str | Path,
    trainable: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """(model, tokenizer) from an artifact folder saved with ``save_pretrained``, loaded in
    ``dtype`` on ``device`` (a job passes ``job.device``, ``job.torch_dtype``); eval mode unless
    ``trainable``; frozen models get ``requires_grad=False``."""
    p = artifact_dir(path)
    src = model_source(p)
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(device)
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model, tok


def model_source(p: Path) -> str:
    """What ``from_pretrained`` loads for an artifact: the folder itself, or the cached hub id /
    local path its meta.json names (base artifacts of kind hub / local hold no weights); one
    shared resolver (``claimbench.models.loadable_source``) with its one-line offline error."""
    from claimbench.models import loadable_source

    return loadable_source(p)


def read_meta(path: str | Path) -> dict:
    p = artifact_dir(path) / "meta.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def check_same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, what: str) -> None:
    """Per-token log-ratios between two models need the same vocabulary; raise otherwise."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        only_a = len(set(va) - set(vb))
        only_b = len(set(vb) - set(va))
        raise ValueError(
            f"{what}: tokenizer differs from the student's ({len(va)} vs {len(vb)} tokens, "
            f"{only_a} only in the student, {only_b} only in {what}); per-token log-ratios "
            f"need a shared tokenizer"
        )
