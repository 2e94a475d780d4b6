"""QuaRot-style rotation for weight-only quantization (the "†" rows of D²Quant's Tables 1-2:
GPTQ† / GPTAQ† = GPTQ / GPTAQ after a rotation; QuaRot: Ashkboos et al., NeurIPS 2024,
arXiv 2404.00456, Sec. 4).

What is applied (every step fused into the stored weights; the rotated model is a plain
transformers model of the same class, so ``from_pretrained`` and lm-eval load it unchanged):

1. RMSNorm gains folded into the next Linear layers (QuaRot Sec. 4, "computational
   invariance"): ``input_layernorm`` into q/k/v, ``post_attention_layernorm`` into gate/up,
   the final ``norm`` into ``lm_head``; the gains become 1 (RMSNorm then commutes with any
   orthogonal ``Q``: ``RMSNorm(x Q) = RMSNorm(x) Q``).
2. The residual stream rotated by one randomised Hadamard matrix ``Q = diag(s) H / sqrt(d)``
   (``s``: seeded random signs; QuaRot's ``R1``): ``embed_tokens E -> E Q``; q/k/v/gate/up and
   ``lm_head`` ``W -> W Q``; o_proj/down_proj ``W -> Q^T W`` (and a bias ``b -> Q^T b``).
   Tied embeddings are untied first (the folded final-norm gain makes ``lm_head`` differ from
   ``embed_tokens``); ``config.tie_word_embeddings`` becomes false.
3. Per attention head, the value/output pair rotated by a Hadamard matrix of the head size
   (the head-wise part of QuaRot's ``R2``, exact because attention mixes tokens, not channels):
   each head block of v_proj ``W_v -> H^T W_v`` (bias too), each head block of o_proj's input
   ``W_o -> W_o H``.

Not applied, since each needs an *online* transform in the forward pass (a custom model class)
and the D²Quant baselines quantize weights only: QuaRot's online Hadamard on down_proj's input
(``R4``), its cross-head Hadamard on o_proj's input, and the Q/K rotation for KV-cache
quantization (``R3``). Qwen3's q/k norms act on the q/k head outputs, which no rotation
touches; Qwen2's q/k/v biases are on the output side (only v's is rotated, by step 3).

Hadamard matrices: Sylvester for powers of two, times a Paley construction for orders
``2^k * m`` with ``m = p + 1`` (``p`` prime, ``p = 3 mod 4``: 12, 20, 24, 44, ...) or
``m = 2(p + 1)`` (``p`` prime, ``p = 1 mod 4``: 28, 36, 60, ...). This covers every width in
the D²Quant models (4096, 5120 = 20 * 256, 2560 = 20 * 128, 3584 = 28 * 128, 8192, head size
128); another width is refused (QuaRot's code keeps hand-made tables for a few more orders).
The weight arithmetic runs in float64 on ``device`` (as QuaRot's ``rotate_model``) and is cast
back to the model's dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from methods.quant.model import decoder_layers
from methods.quant.quantizer import QuantConfigError

ARCHS = ("llama", "qwen2", "qwen3", "mistral")
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def _paley(m: int) -> torch.Tensor | None:
    """A +-1 Hadamard matrix of order ``m`` from Paley's constructions, or None."""

    def jacobsthal(p):
        squares = {(i * i) % p for i in range(1, p)}
        chi = [0] + [1 if a in squares else -1 for a in range(1, p)]
        return torch.tensor(
            [[chi[(j - i) % p] for j in range(p)] for i in range(p)], dtype=torch.float64
        )

    p = m - 1
    if _is_prime(p) and p % 4 == 3:  # Paley I: H = I + [[0, 1^T], [-1, Q]]
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:] = 1.0
        S[1:, 0] = -1.0
        S[1:, 1:] = jacobsthal(p)
        return torch.eye(m, dtype=torch.float64) + S
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:  # Paley II
        p = m // 2 - 1
        C = torch.zeros(p + 1, p + 1, dtype=torch.float64)
        C[0, 1:] = 1.0
        C[1:, 0] = 1.0
        C[1:, 1:] = jacobsthal(p)
        A = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        B = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        return torch.kron(C, A) + torch.kron(torch.eye(p + 1, dtype=torch.float64), B)
    return None


def hadamard(n: int) -> torch.Tensor:
    """A +-1 Hadamard matrix of order ``n`` (float64, ``H H^T = n I``)."""
    k, m = 0, n
    while m % 2 == 0 and m > 1:
        m, k = m // 2, k + 1
    base, j = torch.ones(1, 1, dtype=torch.float64), 0
    if m > 1:  # the smallest order m * 2^j (j <= k) with a Paley construction
        base = None
        for j in range(k + 1):
            if (base := _paley(m * 2**j)) is not None:
                break
        if base is None:
            raise QuantConfigError(f"rotation: no Hadamard construction for width {n}")
    m = base.shape[0]  # a Kronecker product of Hadamard matrices is one: check the base only
    if not torch.equal(base @ base.T, m * torch.eye(m, dtype=torch.float64)):
        raise QuantConfigError(f"rotation: the Hadamard construction of order {m} failed")
    H = base
    s = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for _ in range(k - j):
        H = torch.kron(H, s)
    return H


def random_hadamard(n: int, seed: int) -> torch.Tensor:
    """QuaRot's randomised Hadamard ``diag(s) H / sqrt(n)``, ``s`` seeded random signs."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1
    return s[:, None] * hadamard(n) / n**0.5


def check_rotatable(model) -> None:
    kind = getattr(model.config, "model_type", "")
    if kind not in ARCHS:
        raise QuantConfigError(
            f"rotation: model_type {kind!r} is not one of {list(ARCHS)} (RMSNorm decoders)"
        )


def untie(model) -> bool:
    """Give ``lm_head`` its own weight when it shares ``embed_tokens``'; True if it did."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr()
    if tied:
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    for cfg in {
        id(model.config): model.config,
        id(c := model.config.get_text_config()): c,
    }.values():
        cfg.tie_word_embeddings = False
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        model._tied_weights_keys = {}
    return tied


def _set(mod: nn.Module, name: str, value: torch.Tensor) -> None:
    p = getattr(mod, name)
    p.data = value.to(p.device, p.dtype)


def _w(mod: nn.Module, device) -> torch.Tensor:
    return mod.weight.data.to(device, torch.float64)


def fuse_norms(model, device="cpu") -> None:
    """Fold each RMSNorm gain into the Linear layers that read it; gains become 1."""
    for layer in decoder_layers(model):
        for norm, readers in (
            (layer.input_layernorm, QKV),
            (layer.post_attention_layernorm, GATE_UP),
        ):
            g = norm.weight.data.to(device, torch.float64)
            for role in readers:
                mod = layer.get_submodule(role)
                _set(mod, "weight", _w(mod, device) * g[None, :])
            norm.weight.data.fill_(1.0)
    norm, head = model.model.norm, model.get_output_embeddings()
    g = norm.weight.data.to(device, torch.float64)
    _set(head, "weight", _w(head, device) * g[None, :])
    norm.weight.data.fill_(1.0)


def rotate_model(model, seed: int, device="cpu") -> dict:
    """Apply steps 1-3 of the module docstring in place; returns what was done (for meta)."""
    check_rotatable(model)
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        raise QuantConfigError("rotation: lm_head has a bias (not a Llama/Qwen decoder)")
    model.eval()
    tied = untie(model)
    fuse_norms(model, device)
    cfg = model.config
    d = cfg.hidden_size
    Q = random_hadamard(d, seed).to(device)
    emb = model.get_input_embeddings()
    _set(emb, "weight", _w(emb, device) @ Q)
    head = model.get_output_embeddings()
    _set(head, "weight", _w(head, device) @ Q)
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    Hh = (hadamard(hd) / hd**0.5).to(device)
    layers = decoder_layers(model)
    for layer in tqdm(layers, desc="rotate layers", mininterval=2.0, dynamic_ncols=True):
        for role in (*QKV, *GATE_UP):
            mod = layer.get_submodule(role)
            _set(mod, "weight", _w(mod, device) @ Q)
        for role in WRITERS:
            mod = layer.get_submodule(role)
            _set(mod, "weight", Q.T @ _w(mod, device))
            if mod.bias is not None:
                _set(mod, "bias", Q.T @ mod.bias.data.to(device, torch.float64))
        v, o = layer.self_attn.v_proj, layer.self_attn.o_proj
        wv = _w(v, device)
        _set(v, "weight", (Hh.T @ wv.reshape(-1, hd, wv.shape[-1])).reshape(wv.shape))
        if v.bias is not None:
            bv = v.bias.data.to(device, torch.float64)
            _set(v, "bias", (Hh.T @ bv.reshape(-1, hd, 1)).reshape(bv.shape))
        wo = _w(o, device)
        _set(o, "weight", (wo.reshape(wo.shape[0], -1, hd) @ Hh).reshape(wo.shape))
    return {
        "kind": "quarot-weight-only",
        "residual": f"randomised Hadamard {d} (seed {seed})",
        "head": f"Hadamard {hd} on v_proj/o_proj per head",
        "norms_fused": True,
        "untied_embeddings": tied,
        "online": "none",
    }
