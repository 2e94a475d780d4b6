"""The realignment equations: the fused teacher and TrRa's distillation losses (README.md,
Eqs. 1-2).

Fused teacher (DeRa per-token approximation, TrRa's target; README.md, Eq. 1):
    h~_t = lam * z_aligned,t + (1 - lam) * z_ref,t,   q_t = softmax(h~_t)
lam = 0 is the reference, lam = 1 the aligned model, lam > 1 extrapolates, lam < 0 goes past the
reference the other way.

TrRa loss (paper intent, our default): the per-position KL over the vocabulary between q_t and
the student pi_theta, averaged over response tokens only.
    forward: KL(q_t || pi_theta)  (the direction of the official code's KLDivLoss)
    reverse: KL(pi_theta || q_t)  (the direction of the review's transcription)
``code_faithful``: the official code's formula exactly (softmax over dim=1 = the *sequence* axis
of a (batch, seq, vocab) tensor, first sample only, no mask, "batchmean" = divide by seq length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from methods.posttrain.tokens import masked_mean

DIRECTIONS = ("forward", "reverse")
MODES = ("vocab", "code_faithful")


def check_lambda(lam) -> float:
    """A realignment strength must be a finite real number (any sign); else the fused teacher
    softmax(lam z_A + (1 - lam) z_ref) is undefined."""
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"realignment lambda must be a real number, got {lam!r}") from None
    if not math.isfinite(value):
        raise ValueError(
            f"realignment lambda={lam!r} makes the fused teacher softmax(lambda*z_aligned + "
            f"(1-lambda)*z_ref) undefined; use a finite value"
        )
    return value


def fused_logits(z_aligned: torch.Tensor, z_ref: torch.Tensor, lam: float) -> torch.Tensor:
    """h~ = lam * z_aligned + (1 - lam) * z_ref (README.md, Eq. 1: DeRa / TrRa target logits)."""
    lam = check_lambda(lam)
    if z_aligned.shape != z_ref.shape:
        raise ValueError(
            f"fused teacher: aligned logits {tuple(z_aligned.shape)} and reference logits "
            f"{tuple(z_ref.shape)} differ in shape (same tokenizer and inputs needed)"
        )
    out = lam * z_aligned + (1.0 - lam) * z_ref
    if not torch.isfinite(out).all():
        raise ValueError(
            f"realignment lambda={lam} makes the fused teacher undefined: lambda*z_aligned + "
            f"(1-lambda)*z_ref overflows to a non-finite value; use a smaller |lambda|"
        )
    return out


def fused_teacher(z_aligned: torch.Tensor, z_ref: torch.Tensor, lam: float) -> torch.Tensor:
    """q_t = softmax over the vocabulary of the fused logits."""
    return torch.softmax(fused_logits(z_aligned, z_ref, lam), dim=-1)


def trra_token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, direction: str):
    """Per-position KL over the vocabulary: forward KL(q || pi_theta) or reverse KL(pi_theta || q)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"TrRa KL direction must be one of {DIRECTIONS}, got {direction!r}")
    ls = torch.log_softmax(student_logits, dim=-1)
    lq = torch.log_softmax(teacher_logits, dim=-1)
    if direction == "forward":
        return (lq.exp() * (lq - ls)).sum(-1)
    return (ls.exp() * (ls - lq)).sum(-1)


def trra_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss_mask: torch.Tensor,
    direction: str = "forward",
) -> torch.Tensor:
    """TrRa (paper intent): token-mean over response positions of the vocabulary-axis KL."""
    return masked_mean(trra_token_kl(student_logits, teacher_logits, direction), loss_mask)


def trra_loss_code_faithful(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """The released code's ``compute_preference_loss_1`` on (batch, seq, vocab) logits, T = 1:
    KLDivLoss(batchmean)(log_softmax(z_s, dim=1)[0], softmax(z_t, dim=1)[0]), i.e.
    sum_{t,v} p_t (log p_t - log p_s) / seq_len with both softmaxes over the sequence axis."""
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"code_faithful TrRa needs two (batch, seq, vocab) tensors of one shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    log_p_student = F.log_softmax(student_logits, dim=1)
    p_teacher = F.softmax(teacher_logits, dim=1)
    return F.kl_div(log_p_student[0], p_teacher[0], reduction="batchmean")
