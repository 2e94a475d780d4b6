"""PIG's towers in CLIP's architecture (paper scale): transformers' CLIP classes, CLIP weights.

The paper's video encoder is CLIP-ViP on ``openai/clip-vit-base-patch32`` and its text encoder
and pseudo-query generator are CLIP's text transformer (methods/pig/README.md, "Paper scale:
CLIP ViT-B/32"). Here the modules are transformers' own (``CLIPVisionModel``,
``CLIPTextModel``, ``CLIPEncoderLayer``), so ``init_from`` maps the checkpoint onto them
module for module:

* from CLIP: patch embedding, class and position embeddings, pre-/post-LayerNorm, the 12
  vision layers and ``visual_projection`` (video tower); token/position embeddings, the 12
  text layers, final LayerNorm and ``text_projection`` (text tower); ``logit_scale``; G's
  layers, final LayerNorm and positions are a copy of the text tower's, and e_BOS / e_EOS its
  token embeddings of the tokenizer's BOS / EOS;
* new: the CLS_video and proxy tokens (initialised to CLIP's class embedding + position 0,
  as CLIP-ViP does), the temporal embedding (zeros), G's input mapper, the fusion (identity).

The ViP pattern (README "Video tower") is an attention mask on CLIP's encoder layers; ITS
reads the last layer's attention of the CLS_video query, recomputed from that layer's q/k
projections (the fused attention kernels do not return probabilities).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from claimbench.errors import ConfigError, ModelNotAvailableError


def _allowed_to_mask(allowed: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """A (N, N) bool 'may attend' matrix as the layer's attention implementation wants it."""
    m = allowed[None, None]
    if impl == "sdpa":
        return m
    return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(
        ~m, torch.finfo(dtype).min
    )


def vip_allowed(n_global: int, frames: int, per_frame: int) -> torch.Tensor:
    """ViP: global tokens see all; frame t's tokens see the globals and frame t (bool)."""
    n = n_global + frames * per_frame
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:n_global] = True
    allowed[:, :n_global] = True
    for t in range(frames):
        s = n_global + t * per_frame
        allowed[s : s + per_frame, s : s + per_frame] = True
    return allowed


def _impl(module: nn.Module) -> str:
    return getattr(module.config, "_attn_implementation", None) or "eager"


class ClipVideoTower(nn.Module):
    """CLIP-ViP video tower on ``CLIPVisionModel``.

    Tokens [CLS_video, proxies, (CLS_t, patches_t) for t] with the ViP mask."""

    def __init__(self, cfg, vision, proj: nn.Linear):
        super().__init__()
        self.cfg = cfg
        self.vision = vision  # transformers.CLIPVisionModel
        self.proj = proj  # CLIP's visual_projection
        w = vision.config.hidden_size
        e = vision.embeddings
        with torch.no_grad():
            start = (e.class_embedding + e.position_embedding.weight[0]).detach()
        self.global_embedding = nn.Parameter(start.expand(cfg.n_global, w).clone())
        self.temporal_embedding = nn.Parameter(torch.zeros(cfg.frames, w))
        per_frame = 1 + e.num_patches
        self.register_buffer(
            "allowed", vip_allowed(cfg.n_global, cfg.frames, per_frame), persistent=False
        )
        self.register_buffer(
            "frame_allowed", vip_allowed(0, cfg.frames, per_frame), persistent=False
        )

    @property
    def per_frame(self) -> int:
        return 1 + self.vision.embeddings.num_patches

    def frame_cls_index(self) -> torch.Tensor:
        return self.cfg.n_global + torch.arange(self.cfg.frames) * self.per_frame

    def forward(self, pixels: torch.Tensor, with_globals: bool = True):
        """pixels: (B, T, C, H, W), CLIP-normalised. Returns h_all (B, N, D) and the last layer's
        attention of the CLS_video query over all keys, heads reduced by max (B, N).

        ``with_globals=False`` drops CLS_video and the proxies: each frame then sees only itself,
        and its frame-CLS output is CLIP's image embedding of that frame (second value None)."""
        b, t = pixels.shape[:2]
        x = self.vision.embeddings(pixels.flatten(0, 1))  # CLS + patches, CLIP positions
        x = x.view(b, t, self.per_frame, -1) + self.temporal_embedding[:t, None].to(x.dtype)
        x = x.flatten(1, 2)
        allowed = self.allowed if with_globals else self.frame_allowed
        if with_globals:
            x = torch.cat([self.global_embedding.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = self.vision.pre_layrnorm(x)
        mask = _allowed_to_mask(allowed, _impl(self.vision), x.dtype)
        layers = self.vision.encoder.layers
        cls_attn = None
        for i, layer in enumerate(layers):
            if with_globals and i == len(layers) - 1:
                cls_attn = _cls_attention(layer, x)
            x = layer(x, attention_mask=mask)
        return self.proj(self.vision.post_layernorm(x)), cls_attn


def _cls_attention(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's attention probabilities of query 0 (CLS_video, which sees every key), max
    over heads: (B, N)."""
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    b, n, _ = h.shape
    q = attn.q_proj(h[:, :1]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
    probs = ((q @ k.transpose(-1, -2)) * attn.scale).float().softmax(dim=-1)  # (B, H, 1, N)
    return probs[:, :, 0].max(dim=1).values


class ClipTextTower(nn.Module):
    """CLIP's text transformer (``CLIPTextModel``: causal, final LayerNorm) + ``text_projection``;
    the caption vector is the projected state at the EOT position."""

    def __init__(self, text, proj: nn.Linear):
        super().__init__()
        self.model = text  # transformers.CLIPTextModel
        self.proj = proj

    def forward(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids=tokens).last_hidden_state
        return self.proj(h[torch.arange(h.shape[0], device=h.device), eot])


class ClipPseudoQueryGenerator(nn.Module):
    """G on CLIP's text transformer (README "Pseudo-query generator"): a copy of its layers, final
    LayerNorm and positions; constant e_BOS / e_EOS (buffers); q_hat = the last state."""

    def __init__(self, text: ClipTextTower, embed_dim: int, bos_id: int, eos_id: int):
        super().__init__()
        m = text.model
        self.config = m.config
        self.layers = copy.deepcopy(m.encoder.layers)
        self.ln_final = copy.deepcopy(m.final_layer_norm)
        pos = m.embeddings.position_embedding.weight
        self.positional_embedding = nn.Parameter(pos.detach().clone())
        tok = m.embeddings.token_embedding.weight
        self.register_buffer("e_bos", tok[bos_id].detach().clone())
        self.register_buffer("e_eos", tok[eos_id].detach().clone())
        self.mapper = nn.Linear(embed_dim, m.config.hidden_size)

    def forward(self, x_g: torch.Tensor) -> torch.Tensor:
        b = x_g.shape[0]
        mapped = self.mapper(x_g)
        z = torch.cat(
            [
                self.e_bos.to(mapped.dtype).expand(b, 1, -1),
                mapped,
                self.e_eos.to(mapped.dtype).expand(b, 1, -1),
            ],
            dim=1,
        )
        n = z.shape[1]
        z = z + self.positional_embedding[:n].to(z.dtype)
        causal = torch.ones(n, n, dtype=torch.bool, device=z.device).tril()
        mask = _allowed_to_mask(causal, _impl(self), z.dtype)
        for layer in self.layers:
            z = layer(z, attention_mask=mask)
        return self.ln_final(z)[:, -1]


# -- checkpoints -----------------------------------------------------------------------------
def resolve_checkpoint(init_from: str, local_path: str | None, where: str) -> Path:
    """The CLIP folder: ``local_path`` when it exists, else ``init_from`` in the local hub cache."""
    if local_path and (Path(local_path) / "config.json").is_file():
        return Path(local_path)
    if Path(init_from).is_dir() and (Path(init_from) / "config.json").is_file():
        return Path(init_from)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(init_from, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means: not available offline
        raise ModelNotAvailableError(
            f"{where}.local_path: {local_path!r} holds no CLIP checkpoint and "
            f"{where}.init_from: {init_from!r} is not in the local hub cache; run "
            "`claimbench prefetch --scale paper` on a machine with network, or save "
            f"CLIPModel + tokenizer + preprocessor_config.json of {init_from} to {local_path}"
        ) from None


def clip_tower_sizes(clip_cfg) -> dict:
    """The TowerConfig fields a CLIP config fixes."""
    v, t = clip_cfg.vision_config, clip_cfg.text_config
    return dict(
        image_size=v.image_size,
        patch=v.patch_size,
        channels=v.num_channels,
        vision_width=v.hidden_size,
        vision_heads=v.num_attention_heads,
        vision_layers=v.num_hidden_layers,
        text_width=t.hidden_size,
        text_heads=t.num_attention_heads,
        text_layers=t.num_hidden_layers,
        vocab_size=t.vocab_size,
        embed_dim=clip_cfg.projection_dim,
    )


def check_tower_against_clip(tower: dict, clip_cfg, where: str, path: Path) -> None:
    """Sizes given in the scale file must be the checkpoint's (they cannot be changed)."""
    sizes = clip_tower_sizes(clip_cfg)
    for key, value in tower.items():
        if key in sizes and sizes[key] != value:
            raise ConfigError(
                f"{where}.tower.{key}: {value} but the CLIP checkpoint {path} has {sizes[key]}"
            )
    t = clip_cfg.text_config
    if tower.get("context_length", 0) > t.max_position_embeddings:
        raise ConfigError(
            f"{where}.tower.context_length: {tower['context_length']} exceeds the checkpoint's "
            f"{t.max_position_embeddings} text positions ({path})"
        )


def build_clip_modules(clip_cfg, clip_model=None, attn: str = "sdpa"):
    """(vision, visual_projection, text, text_projection, logit_scale) of a ``CLIPModel``:
    ``clip_model``'s own modules (weights from the checkpoint) or fresh ones from ``clip_cfg``."""
    from transformers import CLIPModel

    if clip_model is None:
        clip_model = CLIPModel._from_config(clip_cfg, attn_implementation=attn)
    return (
        clip_model.vision_model,
        clip_model.visual_projection,
        clip_model.text_model,
        clip_model.text_projection,
        clip_model.logit_scale,
    )


def load_clip(path: Path, attn: str = "sdpa"):
    """``CLIPModel`` in float32 on the CPU from a local folder (nothing downloaded)."""
    from transformers import CLIPModel

    try:
        return CLIPModel.from_pretrained(
            path, dtype=torch.float32, attn_implementation=attn, local_files_only=True
        ).eval()
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(f"{path}: not a loadable CLIPModel checkpoint ({e})") from e
