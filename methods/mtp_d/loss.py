"""MTP-D training objective (README.md, Eqs. 2-3) and the joint model that the shared trainer drives.

    L_total = L_main + Σ_k α_k CE(P^k_i, t_{i+k+1}) + Σ_k β_k KL_topN(sg(Q_{i+k}) ‖ P^k_i)

``MTPLM`` composes a plain ``LlamaForCausalLM`` with ``MTPHeads``; its ``forward(input_ids,
labels)`` returns an object with ``.loss`` so ``methods.lm.train.train_lm`` trains it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM

from claimbench.errors import ConfigError
from methods.mtp_d.heads import MTPHeads, causal_mask


def topn_kl(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    top_n: int,
    direction: str = "forward",
    temperature: float = 1.0,
    idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over positions of the KL restricted to the teacher's top-N tokens (README.md, Eq. 3).

    Both distributions are renormalised on S = top-N(teacher). ``forward`` is
    KL(teacher ‖ student) = Σ_S q̃ (log q̃ − log p̃); ``reverse`` swaps the arguments.
    The caller decides whether the teacher is detached (the stop-gradient). ``idx`` may pass
    S precomputed (the teacher's top-N indices), so the K heads share one top-k of the main head.
    """
    vocab = teacher_logits.shape[-1]
    if not isinstance(top_n, int) or not 1 <= top_n <= vocab:
        raise ConfigError(f"top_n = {top_n!r} must be an integer in [1, vocabulary size {vocab}]")
    if direction not in ("forward", "reverse"):
        raise ConfigError(f"kl_direction = {direction!r} must be 'forward' or 'reverse'")
    if idx is None:
        idx = teacher_logits.detach().topk(top_n, dim=-1).indices  # S: chosen by the teacher
    log_q = F.log_softmax(teacher_logits.gather(-1, idx) / temperature, dim=-1)
    log_p = F.log_softmax(student_logits.gather(-1, idx) / temperature, dim=-1)
    if direction == "forward":
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean()


@dataclass
class MTPLoss:
    """Weights of the objective. ``beta = 0`` is plain (DeepSeek-style) MTP."""

    alpha: list[float]
    beta: list[float]
    top_n: int
    kl_direction: str = "forward"
    stop_grad: bool = True
    temperature: float = 1.0
    train_main: bool = True  # False: looped extension, main CE is not part of the objective
    kl_into: str = "all"  # "modules": the KL's gradient reaches only the MTP modules' weights

    @classmethod
    def from_config(cls, cfg: dict, num_modules: int, vocab_size: int) -> MTPLoss:
        """Weights from ``papers.mtp_d.loss`` (defaults filled in by its schema); ``alpha`` and
        ``top_n`` are optional overrides of ``mtp_lambda`` and ``top_n_fraction``; ``stop_grad``
        is not a scale setting: only the ``mtp_d_nosg`` ablation sets it (to False)."""
        if num_modules < 1:
            raise ConfigError(f"number of MTP heads K = {num_modules!r} must be >= 1")
        alpha = cfg.get("alpha") or [cfg["mtp_lambda"] / num_modules] * num_modules  # α_k = λ/K
        beta = cfg["beta"]
        beta = [beta] * num_modules if isinstance(beta, int | float) else list(beta)
        if cfg.get("beta_over_k", False):  # ablation: β_k = β/K, scaled like α_k = λ/K
            beta = [b / num_modules for b in beta]
        kl_into = cfg.get("kl_into", "all")
        if kl_into not in ("all", "modules"):
            raise ConfigError(f"papers.mtp_d.loss.kl_into = {kl_into!r} must be 'all' or 'modules'")
        if len(alpha) != num_modules or len(beta) != num_modules:
            raise ConfigError(
                f"alpha ({len(alpha)} values) and beta ({len(beta)} values) need one weight per "
                f"MTP head (K = {num_modules})"
            )
        top_n = cfg.get("top_n")
        if top_n is None:  # N = max(16, round(f V)): the paper's 10,000 of 122,880 (8.14 %)
            top_n = max(16, round(cfg["top_n_fraction"] * vocab_size))
        if top_n > vocab_size:
            raise ConfigError(f"top_n = {top_n} is larger than the vocabulary size {vocab_size}")
        return cls(
            alpha=[float(a) for a in alpha],
            beta=[float(b) for b in beta],
            top_n=int(top_n),
            kl_direction=cfg["kl_direction"],
            stop_grad=bool(cfg.get("stop_grad", True)),
            temperature=float(cfg["temperature"]),
            kl_into=kl_into,
        )


@dataclass
class MTPOutput:
    loss: torch.Tensor
    parts: dict = field(default_factory=dict)
    kl: torch.Tensor | None = None  # Σ_k β_k KL_k alone (tests check where its gradient goes)


def run_heads(
    main: LlamaForCausalLM,
    heads: MTPHeads,
    input_ids: torch.Tensor,
    h0: torch.Tensor,
    shared_grad: bool = True,
) -> list[torch.Tensor]:
    """Teacher-forced chain over a full window: logits of head k, shape [B, T-k, V].

    Head k at position i (0-based) sees h^{k-1}_i and E(t_{i+k}) and predicts t_{i+k+1}.
    ``shared_grad=False`` detaches everything the main model shares with the modules (h⁰, the
    embedding rows, the output head's weight): a loss on these logits trains the modules only.
    """
    b, t = input_ids.shape
    emb = main.get_input_embeddings()(input_ids)
    if not shared_grad:
        h0, emb = h0.detach(), emb.detach()
        w_out = main.lm_head.weight.detach()
    h_prev, out = h0, []
    for k in range(1, heads.depth + 1):
        n = t - k
        pos = torch.arange(n, device=input_ids.device).expand(b, n)
        mask = causal_mask(pos, pos, None, h0.dtype)
        h_k = heads.module_at(k)(
            h_prev[:, :n], emb[:, k : k + n], mask, heads.rotary(h_prev, pos), cache=None
        )
        if shared_grad:
            out.append(heads.logits(main, k, h_k))
        else:
            out.append(F.linear(heads.module_at(k).norm_out(h_k), w_out))
        h_prev = h_k
    return out


class MTPLM(nn.Module):
    """Main causal LM + MTP heads, trained jointly (or the heads alone, for looped extension)."""

    def __init__(self, main: LlamaForCausalLM, heads: MTPHeads | None, loss: MTPLoss | None = None):
        super().__init__()
        self.main = main
        self.heads = heads
        self.loss_cfg = loss
        self.history: list[dict] = []
        if heads is not None and loss is None:
            raise ConfigError("MTP heads need loss weights (MTPLoss)")

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> MTPOutput:
        cfg = self.loss_cfg
        input_ids = input_ids.to(self.main.device)  # the shared trainer samples on the CPU
        train_main = cfg is None or cfg.train_main
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_main):
            h0 = self.main.model(input_ids=input_ids).last_hidden_state
            logits0 = self.main.lm_head(h0)
        main_ce = F.cross_entropy(
            logits0[:, :-1].reshape(-1, logits0.shape[-1]), input_ids[:, 1:].reshape(-1)
        )
        parts = {"main_ce": float(main_ce.detach())}
        total = main_ce if train_main else main_ce.detach() * 0.0
        kl_total = None
        if self.heads is not None:
            t = input_ids.shape[1]
            top_idx = None
            if any(cfg.beta):  # S per position, from the main head: shared by every head k
                top_idx = logits0.detach().topk(cfg.top_n, dim=-1).indices
            head_logits = run_heads(self.main, self.heads, input_ids, h0)
            kl_logits = head_logits
            if any(cfg.beta) and cfg.kl_into == "modules" and torch.is_grad_enabled():
                # a second pass of the modules whose shared inputs are detached: the KL trains
                # the modules, never the trunk, the embedding or the output head
                kl_logits = run_heads(self.main, self.heads, input_ids, h0, shared_grad=False)
            for k, lk in enumerate(head_logits, start=1):
                student = lk[:, : t - k - 1]
                ce = F.cross_entropy(
                    student.reshape(-1, student.shape[-1]), input_ids[:, k + 1 :].reshape(-1)
                )
                total = total + cfg.alpha[k - 1] * ce
                parts[f"ce_{k}"] = float(ce.detach())
                if cfg.beta[k - 1]:
                    teacher = logits0[:, k : t - 1]  # Q_{i+k}: main head, same target token
                    if cfg.stop_grad:
                        teacher = teacher.detach()
                    kl = topn_kl(
                        teacher,
                        kl_logits[k - 1][:, : t - k - 1],
                        cfg.top_n,
                        cfg.kl_direction,
                        cfg.temperature,
                        idx=top_idx[:, k : t - 1],
                    )
                    total = total + cfg.beta[k - 1] * kl
                    kl_total = cfg.beta[k - 1] * kl + (0.0 if kl_total is None else kl_total)
                    parts[f"kl_{k}"] = float(kl.detach())
        if self.training:
            self.history.append(parts)
        return MTPOutput(loss=total, parts=parts, kl=kl_total)


def freeze_for_extension(model: MTPLM, n_old: int) -> list[str]:
    """Looped extension: freeze trunk, embedding, shared head and modules 1..n_old."""
    for p in model.main.parameters():
        p.requires_grad_(False)
    trainable = []
    for i, mod in enumerate(model.heads.mods):
        for name, p in mod.named_parameters():
            p.requires_grad_(i >= n_old)
            if i >= n_old:
                trainable.append(f"mods.{i}.{name}")
    model.loss_cfg.train_main = False
    return trainable
