"""Micro models in the paper scale's real architectures, built offline.

The paper scale loads Llama-3.x, Qwen2.5/Qwen3 and CLIP ViT-B/32 from the hub. Tests and
``make gpu-smoke`` cannot download them, so they exercise the same loading code on folders
written here: the same ``transformers`` classes and file layout (``config.json``,
``model.safetensors``, tokenizer files with a chat template), a few thousand parameters each.

    from claimbench.micro import micro_lm, micro_clip
    path = micro_lm(tmp / "llama", arch="llama")      # LlamaForCausalLM + ChatML tokenizer
    path = micro_lm(tmp / "qwen2", arch="qwen2")      # Qwen2ForCausalLM (biased q/k/v)
    path = micro_clip(tmp / "clip")                   # CLIPModel (text + vision towers)

Every builder is deterministic in ``seed`` and writes a ``meta.json`` like a base artifact.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ARCHS = ("llama", "qwen2", "qwen3")

# Widths divisible by 16 (GPTQ groups) and by the head counts; head_dim 16.
LM_SPEC = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}

# A small corpus for the tokenizer and for calibration / perplexity in smoke runs.
CORPUS = [
    f"Problem {i}: what is {a} plus {b}? The answer is {a + b}. "
    f"In step {i % 7}, the flow moves {['north', 'south', 'east', 'west'][i % 4]}."
    for i, (a, b) in enumerate((a, b) for a in range(30) for b in range(20))
]


@lru_cache(maxsize=2)
def _trained_tokenizer(vocab_size: int):
    from methods.lm.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, vocab_size)


def micro_tokenizer(vocab_size: int = 400):
    """The repo's byte-level BPE tokenizer (ChatML chat template), trained on ``CORPUS``: a
    fresh copy each call (trained once), so a caller that sets a chat template or a special
    token changes no other caller's tokenizer."""
    import copy

    return copy.deepcopy(_trained_tokenizer(vocab_size))


def _config(arch: str, tok, spec: dict):
    import transformers

    common = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=arch != "llama",
        **spec,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    if arch == "qwen2":
        return transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    if arch == "qwen3":
        return transformers.Qwen3Config(head_dim=16, **common), transformers.Qwen3ForCausalLM
    raise ValueError(f"micro_lm: arch: {arch!r}: not one of {list(ARCHS)}")


def micro_lm(out: str | Path, arch: str = "llama", seed: int = 0, spec: dict | None = None) -> Path:
    """Save a randomly initialised causal LM of ``arch`` and its tokenizer under ``out``."""
    import torch

    out = Path(out)
    tok = micro_tokenizer()
    cfg, cls = _config(arch, tok, {**LM_SPEC, **(spec or {})})
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "meta.json").write_text(json.dumps({"name": out.name, "method": "base", "arch": arch}))
    return out


def micro_clip(out: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """Save a randomly initialised ``CLIPModel`` (ViT vision tower, text tower) under ``out``,
    in the layout of ``openai/clip-vit-base-patch32`` (config.json + model.safetensors)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    out = Path(out)
    tok = micro_tokenizer()
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(cfg).float().eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "meta.json").write_text(json.dumps({"name": out.name, "method": "base", "arch": "clip"}))
    return out
