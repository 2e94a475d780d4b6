"""PIG (Hybrid-Tower) and its Two-Tower baseline: a ViP-style video tower, a CLIP-style text
tower, the Informativeness Token Selector, the pseudo-query generator G and the X-Pool-style
pseudo interaction (fusion). The equations are the paper's (Lan et al., ICCV 2025: ViP
backbone, ITS, generator G, pseudo interaction, training losses) as released in the authors'
code (src/modeling/PIG.py, modeling_pig.py); methods/pig/README.md writes each one out under
the headings cited below.

Arms (``ARMS``): ``two_tower`` (video vector = projected video CLS), ``pig`` (v_hat from the
pseudo-query of G, added to the Two-Tower vector through a zero-initialised gate),
``pig_nogen`` (PIG trained with lambda = 0), ``pig_static`` (a learned static
query instead of G: same inference cost, no pseudo-query). Every arm stores one D-dim vector
per video and scores a query by the same function, :func:`query_scores`.

Backbones: ``scratch`` (the towers below, tiny and small scales) or ``clip`` (paper scale:
transformers' CLIP classes holding the ``openai/clip-vit-base-patch32`` weights,
:mod:`methods.pig.clip`); ITS, G's inputs, the fusion, the losses and the query path are shared.

Device and dtype: a model is created in float32 (so that its initialisation does not depend on
where it runs) and moved to the job's device; a job dtype other than float32 is the autocast
dtype (float32 master weights, :func:`methods.pig.train.place`); inputs follow the parameters.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARMS = ("two_tower", "pig", "pig_nogen", "pig_static")
PAD, BOS, EOT, UNK = 0, 1, 2, 3
SPECIALS = ["[PAD]", "[BOS]", "[EOT]", "[UNK]"]


@dataclass
class TowerConfig:
    frames: int = 4
    image_size: int = 32
    patch: int = 8
    channels: int = 3
    n_proxies: int = 3
    vision_width: int = 64
    vision_heads: int = 4
    vision_layers: int = 2
    text_width: int = 64
    text_heads: int = 4
    text_layers: int = 2
    context_length: int = 24
    vocab_size: int = 128
    embed_dim: int = 64
    its_top_k: int = 8
    fusion_dropout: float = 0.1
    attn_temp: float = 1.0
    # v_hat = v_cls + g * fusion(q_hat, X_f) with g a learnable scalar starting at 0, so that
    # every PIG arm scores exactly as Two-Tower before its first update (README "Pseudo
    # interaction"); False: v_hat = fusion(q_hat, X_f), the released code's reading
    video_residual: bool = True
    logit_scale_init: float = math.log(1 / 0.07)
    # "scratch": the towers above (tiny, small); "clip": transformers' CLIP classes with the
    # CLIPConfig ``clip`` (paper scale, methods/pig/clip.py); bos_id / eos_id: G's e_BOS / e_EOS
    backbone: str = "scratch"
    clip: dict | None = None
    bos_id: int = BOS
    eos_id: int = EOT

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def n_global(self) -> int:  # CLS_video + proxies (M)
        return 1 + self.n_proxies

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x, mask, need_probs: bool = False):
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(w // self.heads) + mask
        probs = scores.softmax(dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(b, n, w)
        return self.out(out), (probs if need_probs else None)


class Block(nn.Module):
    """Pre-LN residual attention block (CLIP's ResidualAttentionBlock)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x, mask, need_probs: bool = False):
        a, probs = self.attn(self.ln_1(x), mask, need_probs)
        x = x + a
        return x + self.mlp(self.ln_2(x)), probs


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)


def vip_mask(n_global: int, frames: int, per_frame: int) -> torch.Tensor:
    """Proxy-guided attention (ViP, README "Video tower"): global tokens see all; frame t's tokens see globals + frame t."""
    n = n_global + frames * per_frame
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:n_global] = True
    allowed[:, :n_global] = True
    for t in range(frames):
        s = n_global + t * per_frame
        allowed[s : s + per_frame, s : s + per_frame] = True
    return torch.zeros(n, n).masked_fill(~allowed, float("-inf"))


class VideoTower(nn.Module):
    """TinyViP: [CLS_video, proxies, (CLS_frame_t, patches_t) for t] with the ViP mask (README "Video tower")."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.vision_width
        s = w**-0.5
        self.patch_embed = nn.Linear(cfg.channels * cfg.patch * cfg.patch, w, bias=False)
        self.class_embedding = nn.Parameter(s * torch.randn(w))  # shared frame-CLS
        self.global_embedding = nn.Parameter(s * torch.randn(cfg.n_global, w))  # CLS_video, proxies
        self.positional_embedding = nn.Parameter(s * torch.randn(1 + cfg.patches, w))
        self.temporal_embedding = nn.Parameter(torch.zeros(cfg.frames, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.vision_heads) for _ in range(cfg.vision_layers))
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(s * torch.randn(w, cfg.embed_dim))
        self.register_buffer(
            "mask", vip_mask(cfg.n_global, cfg.frames, 1 + cfg.patches), persistent=False
        )

    @property
    def per_frame(self) -> int:
        return 1 + self.cfg.patches

    def frame_cls_index(self) -> torch.Tensor:
        return self.cfg.n_global + torch.arange(self.cfg.frames) * self.per_frame

    def forward(self, frames: torch.Tensor):
        """frames: uint8 or float (B, T, H, W, C). Returns h_all (B, N, D) and the last layer's
        attention of the CLS_video query over all keys, heads reduced by max (B, N)."""
        c = self.cfg
        x = frames.float() / 255.0 - 0.5 if frames.dtype == torch.uint8 else frames.float()
        x = x.to(self.patch_embed.weight.dtype)  # the model's dtype (a no-op in float32)
        b, t, h, w_, ch = x.shape
        p = c.patch
        x = x.view(b, t, h // p, p, w_ // p, p, ch).permute(0, 1, 2, 4, 3, 5, 6)
        x = self.patch_embed(x.reshape(b, t, c.patches, p * p * ch))
        cls = self.class_embedding.expand(b, t, 1, -1)
        x = (
            torch.cat([cls, x], dim=2)
            + self.positional_embedding
            + self.temporal_embedding[:, None]
        )
        x = torch.cat([self.global_embedding.expand(b, -1, -1), x.flatten(1, 2)], dim=1)
        x = self.ln_pre(x)
        probs = None
        for i, blk in enumerate(self.blocks):
            x, probs = blk(x, self.mask, need_probs=i == len(self.blocks) - 1)
        h_all = self.ln_post(x) @ self.proj
        return h_all, probs[:, :, 0, :].max(dim=1).values


class TextTower(nn.Module):
    """CLIP text transformer: causal, EOT-token pooling, projection (README "Text tower")."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        w = cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, w))
        self.blocks = nn.ModuleList(Block(w, cfg.text_heads) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(w**-0.5 * torch.randn(w, cfg.embed_dim))
        self.register_buffer("mask", causal_mask(cfg.context_length), persistent=False)

    def forward(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        for blk in self.blocks:
            x, _ = blk(x, self.mask[:n, :n])
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


def informative_tokens(cls_attn: torch.Tensor, n_global: int, frame_cls: torch.Tensor, k: int):
    """ITS (README "ITS"): top-k patch tokens by CLS_video attention; global and frame-CLS never chosen."""
    scores = cls_attn.clone()
    scores[:, :n_global] = float("-inf")
    scores[:, frame_cls] = float("-inf")
    return scores.topk(k, dim=1, sorted=True).indices


class PseudoQueryGenerator(nn.Module):
    """G (README "Pseudo-query generator"): a copy of the text transformer fed [e_BOS; Linear(X_g); e_EOS]; q_hat = EOS state.

    e_BOS / e_EOS are the text tower's token embeddings taken once and kept constant (buffers,
    no gradient) as in the official code; the text projection is not applied to q_hat.
    """

    def __init__(self, text: TextTower, embed_dim: int):
        super().__init__()
        w = text.ln_final.normalized_shape[0]
        self.blocks = copy.deepcopy(text.blocks)
        self.ln_final = copy.deepcopy(text.ln_final)
        self.positional_embedding = nn.Parameter(text.positional_embedding.detach().clone())
        self.register_buffer("e_bos", text.token_embedding.weight[BOS].detach().clone())
        self.register_buffer("e_eos", text.token_embedding.weight[EOT].detach().clone())
        self.mapper = nn.Linear(embed_dim, w)
        self.register_buffer(
            "mask", causal_mask(self.positional_embedding.shape[0]), persistent=False
        )

    def forward(self, x_g: torch.Tensor) -> torch.Tensor:
        b = x_g.shape[0]
        z = torch.cat(
            [self.e_bos.expand(b, 1, -1), self.mapper(x_g), self.e_eos.expand(b, 1, -1)], dim=1
        )
        n = z.shape[1]
        z = z + self.positional_embedding[:n]
        for blk in self.blocks:
            z, _ = blk(z, self.mask[:n, :n])
        return self.ln_final(z)[:, -1]


def _identity_linear(d: int) -> nn.Linear:
    lin = nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(d))
        lin.bias.zero_()
    return lin


class PseudoInteraction(nn.Module):
    """X-Pool cross-attention, 1 head (README "Pseudo interaction"): the pseudo-query attends over X_f.

    q = Wq LN1(q_hat); K = Wk LN1(X_f); V = Wv LN1(X_f); a = softmax(K q / sqrt(d) / temp);
    o = LN2(Wo a^T V); v_hat = LN3(o + Dropout(Wl o)); all W identity, zero bias at init.
    """

    def __init__(self, d: int, dropout: float = 0.1, attn_temp: float = 1.0):
        super().__init__()
        self.d, self.attn_temp = d, attn_temp
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.wq, self.wk, self.wv = _identity_linear(d), _identity_linear(d), _identity_linear(d)
        self.wo, self.wl = _identity_linear(d), _identity_linear(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q_hat: torch.Tensor, x_f: torch.Tensor) -> torch.Tensor:
        q = self.wq(self.ln1(q_hat))  # (B, d)
        k = self.wk(self.ln1(x_f))  # (B, M, d)
        v = self.wv(self.ln1(x_f))
        a = ((k @ q[:, :, None]).squeeze(-1) / math.sqrt(self.d) / self.attn_temp).softmax(dim=-1)
        o = self.ln2(self.wo((a[:, :, None] * v).sum(dim=1)))
        return self.ln3(o + self.dropout(self.wl(o)))


class RetrievalModel(nn.Module):
    """Both towers plus, for the PIG arms, G / static query and the pseudo interaction."""

    def __init__(self, cfg: TowerConfig, arm: str = "two_tower", clip_model=None):
        """``clip_model``: a loaded ``transformers.CLIPModel`` whose modules become the towers
        (``backbone: clip``; without it they are built from ``cfg.clip``, weights to load)."""
        super().__init__()
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r} (known: {', '.join(ARMS)})")
        self.cfg, self.arm = cfg, arm
        if cfg.backbone == "clip":
            from transformers import CLIPConfig

            from methods.pig.clip import ClipTextTower, ClipVideoTower, build_clip_modules

            vision, vproj, text, tproj, scale = build_clip_modules(
                CLIPConfig.from_dict(cfg.clip), clip_model
            )
            self.video = ClipVideoTower(cfg, vision, vproj)
            self.text = ClipTextTower(text, tproj)
            self.logit_scale = scale
        elif cfg.backbone == "scratch":
            self.video = VideoTower(cfg)
            self.text = TextTower(cfg)
            self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        else:
            raise ValueError(f"unknown backbone {cfg.backbone!r} (known: scratch, clip)")
        self.add_pig_modules()

    def add_pig_modules(self) -> None:
        """(Re)build G / static query and fusion; G copies the *current* text tower (theta_0)."""
        cfg = self.cfg
        for name in ("generator", "static_query", "fusion", "fusion_gate"):
            if hasattr(self, name):
                delattr(self, name)
        if self.arm == "two_tower":
            return
        if cfg.text_width != cfg.embed_dim and cfg.backbone != "clip":
            raise ValueError("PIG needs text_width == embed_dim (L_gen compares q_hat with t)")
        if self.arm == "pig_static":
            self.static_query = nn.Parameter(0.02 * torch.randn(cfg.embed_dim))
        elif cfg.backbone == "clip":
            from methods.pig.clip import ClipPseudoQueryGenerator

            self.generator = ClipPseudoQueryGenerator(
                self.text, cfg.embed_dim, cfg.bos_id, cfg.eos_id
            )
        else:
            self.generator = PseudoQueryGenerator(self.text, cfg.embed_dim)
        self.fusion = PseudoInteraction(cfg.embed_dim, cfg.fusion_dropout, cfg.attn_temp)
        if cfg.video_residual:
            self.fusion_gate = nn.Parameter(torch.zeros(()))

    def encode_video(self, frames: torch.Tensor):
        """(video vector (B, D), q_hat or None). Depends on the video only, never on a query."""
        h_all, cls_attn = self.video(frames)
        if self.arm == "two_tower":
            return h_all[:, 0], None
        m, fcls = self.cfg.n_global, self.video.frame_cls_index().to(h_all.device)
        x_f = torch.cat([h_all[:, :m], h_all[:, fcls]], dim=1)  # [CLS, proxies, frame-CLS]
        if self.arm == "pig_static":
            q_hat = self.static_query.expand(h_all.shape[0], -1)
        else:
            sel = informative_tokens(cls_attn, m, fcls, self.cfg.its_top_k)
            its = torch.gather(h_all, 1, sel[:, :, None].expand(-1, -1, h_all.shape[-1]))
            x_g = torch.cat([x_f, its], dim=1)  # README "Pseudo-query generator"
            q_hat = self.generator(x_g)
            if q_hat.shape[-1] != self.cfg.embed_dim:
                # a CLIP whose text width is not D: q_hat goes through the text projection (as
                # in the authors' earlier code drop); ViT-B/32 has 512 = 512, so never there
                q_hat = self.text.proj(q_hat)
        fused = self.fusion(q_hat, x_f)
        if self.cfg.video_residual:  # v_cls + g * fusion: exactly Two-Tower's vector while g = 0
            return h_all[:, 0] + self.fusion_gate * fused, q_hat
        return fused, q_hat

    def encode_text(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        return self.text(tokens, eot)


def nce_loss(v: torch.Tensor, t: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """L_nce = CE(S, I) + CE(S^T, I), S_ij = exp(s) cos(t_i, v_j); the two directions summed.

    README "Losses" (L_nce).
    """
    s = logit_scale.exp() * F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).T
    labels = torch.arange(s.shape[0], device=s.device)
    return F.cross_entropy(s, labels) + F.cross_entropy(s.T, labels)


def generation_loss(q_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """L_gen = mean_i (2 - 2 cos(q_hat_i, t_i)); the target t is not detached (README "Losses")."""
    return (2 - 2 * F.cosine_similarity(q_hat, t, dim=-1)).mean()


def query_scores(model: RetrievalModel, tokens, eot, index: torch.Tensor) -> torch.Tensor:
    """The online query path of every arm: one text pass, then dot products with the stored index.

    The index holds float32 vectors (:func:`methods.pig.train.encode_videos`); the query vector
    is cast to the index's dtype (a no-op for a float32 model).
    """
    t = F.normalize(model.encode_text(tokens, eot), dim=-1)
    return t.to(index.dtype) @ index.T
