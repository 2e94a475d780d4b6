"""MTP modules beside a ``LlamaForCausalLM`` (DeepSeek-V3-style chained modules:
DeepSeek-V3 report, Section 2.2, Eqs. 21-23; README.md, Eq. 1).

Module k (k = 1..K) takes the previous depth's hidden state and the embedding of the token k
positions ahead, and predicts the token k+1 positions ahead through the main model's shared
output head::

    u^k_i = M_k [RMSNorm_a^k(h^{k-1}_i) ; RMSNorm_b^k(E(t_{i+k}))]        # README.md, Eq. 1
    h^k   = Block_k(u^k)                                                  # one causal decoder block
    P^k_i = softmax(O(RMSNorm_o^k(h^k_i)))                                # shared O, predicts t_{i+k+1}

The modules are saved next to the main model in ``<artifact>/mtp_heads/`` with their own
``config.json``; the main model folder stays loadable by ``from_pretrained`` on its own.
A *schedule* maps each draft depth to a module index: ``[0, 1, ..., K-1]`` normally,
``[0, 1, 0, 1]`` for the training-free cyclic reuse of two modules at four depths (README.md,
Eq. 4).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from claimbench.errors import ConfigError

HEADS_DIR = "mtp_heads"


class MTPModule(nn.Module):
    """One MTP module: two input norms, the (2d -> d) projection M_k, one block, an output norm."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        d = config.hidden_size
        self.norm_h = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.norm_e = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        # layer_idx 0: every module keeps its own KV cache when decoding.
        self.block = LlamaDecoderLayer(config, layer_idx=0)
        self.norm_out = LlamaRMSNorm(d, eps=config.rms_norm_eps)

    def forward(self, h_prev, emb_next, mask, position_embeddings, cache=None):
        u = self.proj(torch.cat([self.norm_h(h_prev), self.norm_e(emb_next)], dim=-1))
        h = self.block(
            u,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            cache=cache,
            use_cache=cache is not None,
        )
        return h  # h^k (fed to the next module); logits are O(norm_out(h^k))


class MTPHeads(nn.Module):
    """K chained MTP modules sharing the main model's embedding E and output head O."""

    def __init__(self, main_config: LlamaConfig, num_modules: int, schedule=None):
        super().__init__()
        if not isinstance(num_modules, int) or num_modules < 1:
            raise ConfigError(f"number of MTP heads K = {num_modules!r} must be an integer >= 1")
        cfg = copy.deepcopy(main_config)
        cfg._attn_implementation = "sdpa"
        self.hidden_size = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self.mods = nn.ModuleList(MTPModule(cfg) for _ in range(num_modules))
        self.rotary = LlamaRotaryEmbedding(cfg)
        self.set_schedule(schedule)

    @property
    def num_modules(self) -> int:
        return len(self.mods)

    @property
    def depth(self) -> int:
        return len(self.schedule)

    def set_schedule(self, schedule=None) -> None:
        schedule = list(range(self.num_modules)) if schedule is None else list(schedule)
        if not schedule or any(not 0 <= s < self.num_modules for s in schedule):
            raise ConfigError(
                f"head schedule {schedule} must be a non-empty list of module indices "
                f"in [0, {self.num_modules - 1}]"
            )
        self.schedule = schedule

    def module_at(self, depth: int) -> MTPModule:
        """The module used at draft depth ``depth`` (1-based, as head k in the paper)."""
        return self.mods[self.schedule[depth - 1]]

    def logits(self, main: LlamaForCausalLM, depth: int, h: torch.Tensor) -> torch.Tensor:
        return main.lm_head(self.module_at(depth).norm_out(h))

    # -- persistence -------------------------------------------------------------------------
    def heads_config(self) -> dict:
        return {
            "architecture": "deepseek_v3_style_mtp",
            "num_modules": self.num_modules,
            "schedule": self.schedule,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
        }

    def save(self, folder: str | Path) -> Path:
        out = Path(folder) / HEADS_DIR
        out.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if "rotary" not in k
        }
        save_file(state, out / "model.safetensors")
        (out / "config.json").write_text(json.dumps(self.heads_config(), indent=2) + "\n")
        return out


def load_heads(folder: str | Path, main: LlamaForCausalLM) -> MTPHeads:
    """Load ``<folder>/mtp_heads`` for ``main``; a size mismatch is a clear error."""
    hdir = Path(folder) / HEADS_DIR
    cfg_path = hdir / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(
            f"{folder}: no trained MTP heads ({HEADS_DIR}/config.json missing); this artifact "
            f"has only a main model"
        )
    cfg = json.loads(cfg_path.read_text())
    for key, main_value in (
        ("hidden_size", main.config.hidden_size),
        ("vocab_size", main.config.vocab_size),
    ):
        if cfg.get(key) != main_value:
            raise ConfigError(
                f"{cfg_path}: {key} {cfg.get(key)!r} does not match the main model's "
                f"{key} {main_value!r}"
            )
    heads = MTPHeads(main.config, int(cfg["num_modules"]), cfg.get("schedule"))
    state = load_file(hdir / "model.safetensors")
    missing, unexpected = heads.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise ConfigError(
            f"{hdir}: weights do not match {heads.num_modules} MTP modules "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    ref = next(main.parameters())
    return heads.to(device=ref.device, dtype=ref.dtype)


def extend_looped(heads: MTPHeads | None, factor: int = 2) -> MTPHeads:
    """Looped extension (README.md, Eq. 4): m trained modules -> factor·m, module m·r+j a copy of module j."""
    if heads is None or heads.num_modules < 1:
        raise ConfigError("looped extension needs a model with trained MTP heads (got none)")
    if factor < 2:
        raise ConfigError(f"looped extension factor {factor!r} must be >= 2")
    if heads.schedule != list(range(heads.num_modules)):
        raise ConfigError(
            f"looped extension starts from trained heads in order, not schedule {heads.schedule}"
        )
    m = heads.num_modules
    new = copy.deepcopy(heads)
    for _ in range(factor - 1):
        for j in range(m):
            new.mods.append(copy.deepcopy(heads.mods[j]))
    new.set_schedule(None)
    return new


def cyclic_schedule(num_modules: int, depth: int) -> list[int]:
    """Training-free loop (the paper's pilot study; README.md): reuse module j again at depth m+j."""
    if num_modules < 1:
        raise ConfigError(
            f"training-free reuse needs a model with trained MTP heads (got K = {num_modules})"
        )
    return [d % num_modules for d in range(depth)]


def causal_mask(
    q_pos: torch.Tensor, kv_pos: torch.Tensor, kv_valid: torch.Tensor | None, dtype
) -> torch.Tensor:
    """Additive 4D mask [B, 1, q, kv]: query at position p sees valid keys at positions <= p."""
    allowed = kv_pos[:, None, :] <= q_pos[:, :, None]
    if kv_valid is not None:
        allowed = allowed & kv_valid[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
