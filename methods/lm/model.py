"""The tiny Llama factory: plain transformers ``LlamaForCausalLM`` built from a scale config."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def llama_config(spec: dict, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    if spec["hidden_size"] % spec["num_heads"]:
        raise ValueError(
            f"hidden_size {spec['hidden_size']} is not divisible by num_heads {spec['num_heads']}"
        )
    if spec["num_heads"] % spec["num_kv_heads"]:
        raise ValueError(
            f"num_heads {spec['num_heads']} is not divisible by num_kv_heads {spec['num_kv_heads']}"
        )
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def build_model(spec: dict, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(spec, tokenizer))
    return model.float()


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
