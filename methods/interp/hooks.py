"""Read, patch, add and ablate activations of a transformers causal LM with plain forward hooks.

Hook points of a Llama-style model (``model.model.layers[l]``; Qwen2, Mistral and SmolLM2 share it):

==============  ===========================================================  ==============
site kind       where                                                        shape
==============  ===========================================================  ==============
``embed``       output of ``embed_tokens`` (= residual stream before layer 0)  (B, T, d)
``resid_pre``   input of ``layers[l]``                                        (B, T, d)
``resid_post``  output of ``layers[l]``                                       (B, T, d)
``attn``        output[0] of ``layers[l].self_attn`` (block write)            (B, T, d)
``mlp``         output of ``layers[l].mlp`` (block write)                     (B, T, d)
``head``        input of ``layers[l].self_attn.o_proj`` split per head        (B, T, H, d_head)
``neuron``      input of ``layers[l].mlp.down_proj`` (act(gate) * up)         (B, T, d_ffn)
==============  ===========================================================  ==============

Every hook lives only inside one ``with lm.hooks(...)`` block (or one ``lm.run`` call): the
handles are removed in ``finally``, so a model leaves each call exactly as it entered it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

KINDS = ("embed", "resid_pre", "resid_post", "attn", "mlp", "head", "neuron")
Edit = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Site:
    kind: str
    layer: int = 0

    def __str__(self) -> str:
        return self.kind if self.kind == "embed" else f"{self.kind}.{self.layer}"


class HookedLM:
    """A causal LM plus the hook points above; the model itself is never modified."""

    def __init__(self, model: torch.nn.Module):
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
            raise TypeError(
                f"{type(model).__name__} is not a Llama-style causal LM "
                "(expected model.model.layers and model.lm_head)"
            )
        self.model = model
        self.layers = inner.layers
        self.embed = inner.embed_tokens
        self.final_norm = inner.norm
        self.lm_head = model.lm_head
        cfg = model.config
        self.n_layers = len(self.layers)
        self.n_heads = cfg.num_attention_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.d_ffn = cfg.intermediate_size

    @property
    def device(self) -> torch.device:
        """Where the model's weights live: every tensor fed to it is created there."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (the job's ``--dtype``)."""
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ checks
    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise IndexError(
                f"layer index {layer} out of range: the model has {self.n_layers} layers (0..{self.n_layers - 1})"
            )
        return layer

    def check_head(self, head: int) -> int:
        if not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise IndexError(
                f"head index {head} out of range: the model has {self.n_heads} heads per layer (0..{self.n_heads - 1})"
            )
        return head

    def check_vector(self, v: torch.Tensor, what: str = "steering vector") -> torch.Tensor:
        if v.ndim != 1 or v.shape[0] != self.d_model:
            raise ValueError(
                f"{what} has shape {tuple(v.shape)}, but the model's residual width is {self.d_model}"
            )
        return v

    def site(self, kind: str, layer: int = 0) -> Site:
        if kind not in KINDS:
            raise ValueError(f"unknown hook site kind {kind!r}; expected one of {list(KINDS)}")
        if kind != "embed":
            self.check_layer(layer)
        return Site(kind, 0 if kind == "embed" else layer)

    # ------------------------------------------------------------------ hooks
    def _register(self, site: Site, fn: Edit) -> torch.utils.hooks.RemovableHandle:
        """Attach ``fn`` (activation -> activation) at ``site``; returns the handle."""
        k, lyr = site.kind, site.layer
        if k == "embed":
            return self.embed.register_forward_hook(lambda m, a, out: fn(out))
        layer = self.layers[lyr]
        if k == "resid_pre":

            def pre(m, args, kwargs):
                if args:
                    return (fn(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

            return layer.register_forward_pre_hook(pre, with_kwargs=True)
        if k in ("resid_post", "attn"):
            mod = layer if k == "resid_post" else layer.self_attn

            def post(m, a, out):
                if isinstance(out, tuple):
                    return (fn(out[0]), *out[1:])
                return fn(out)

            return mod.register_forward_hook(post)
        if k == "mlp":
            return layer.mlp.register_forward_hook(lambda m, a, out: fn(out))
        if k == "head":
            b_h, d_h = self.n_heads, self.d_head

            def head_pre(m, args):
                z = args[0]
                b, t, _ = z.shape
                out = fn(z.reshape(b, t, b_h, d_h))
                return (out.reshape(b, t, b_h * d_h), *args[1:])

            return layer.self_attn.o_proj.register_forward_pre_hook(head_pre)
        if k == "neuron":
            return layer.mlp.down_proj.register_forward_pre_hook(
                lambda m, args: (fn(args[0]), *args[1:])
            )
        raise ValueError(f"unknown hook site kind {k!r}")

    @contextmanager
    def hooks(self, edits: Sequence[tuple[Site, Edit]]) -> Iterator[None]:
        handles = []
        try:
            for site, fn in edits:
                handles.append(self._register(site, fn))
            yield
        finally:
            for h in handles:
                h.remove()

    def run(
        self,
        input_ids: torch.Tensor,
        *,
        read: Sequence[Site] = (),
        edits: Sequence[tuple[Site, Edit]] = (),
        attention_mask: torch.Tensor | None = None,
        grad: bool = False,
    ) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
        """One forward pass: apply ``edits``, then record ``read`` sites (after the edits).

        With ``grad=True`` the cached activations stay in the graph (``retain_grad`` is set),
        so ``cache[site].grad`` holds d(metric)/d(activation) after a backward pass.
        """
        cache: dict[Site, torch.Tensor] = {}

        def reader(site: Site) -> Edit:
            def fn(x: torch.Tensor) -> torch.Tensor:
                if grad:
                    x.retain_grad()
                    cache[site] = x
                else:
                    cache[site] = x.detach().clone()
                return x

            return fn

        all_edits = list(edits) + [(s, reader(s)) for s in read]
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx, self.hooks(all_edits):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits, cache

    def logits_of_resid(self, x: torch.Tensor) -> torch.Tensor:
        """Unembed a residual-stream state: ``W_U · FinalNorm(x)`` (the logit lens)."""
        return self.lm_head(self.final_norm(x))


# ---------------------------------------------------------------------- edit builders


def patch_from(
    source: torch.Tensor, positions: Sequence[int] | None = None, index: tuple = ()
) -> Edit:
    """Overwrite the activation (at ``positions``, optional trailing ``index`` e.g. a head) with ``source``."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        pos = slice(None) if positions is None else list(positions)
        x[(slice(None), pos, *index)] = source[(slice(None), pos, *index)].to(x.device, x.dtype)
        return x

    return fn


def add_vector(v: torch.Tensor, alpha: float, positions: Sequence[int] | None = None) -> Edit:
    """``x_t <- x_t + alpha * v`` at the given positions (all when None)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        w = v.to(x.device, x.dtype)
        if positions is None:
            return x + alpha * w
        x = x.clone()
        x[:, list(positions)] = x[:, list(positions)] + alpha * w
        return x

    return fn


def project_out(r: torch.Tensor) -> Edit:
    """``x <- x - r_hat r_hat^T x`` (directional ablation); a zero direction is an exact no-op."""
    norm = r.norm()
    if norm == 0:
        return lambda x: x
    r_hat = r / norm

    def fn(x: torch.Tensor) -> torch.Tensor:
        rh = r_hat.to(x.device, x.dtype)
        return x - (x @ rh)[..., None] * rh

    return fn


def scale_units(index: Sequence[int] | int, gamma: float) -> Edit:
    """Multiply units (heads on the head axis, or neurons) by ``gamma`` (0 = zero-ablation)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        idx = [index] if isinstance(index, int) else list(index)
        if x.ndim == 4:
            x[:, :, idx] = x[:, :, idx] * gamma
        else:
            x[..., idx] = x[..., idx] * gamma
        return x

    return fn
