"""The PSFT objective: a PPO-style clipped ratio on demonstration tokens with advantage A = +1.

r_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t), pi_old a frozen snapshot refreshed every K optimiser
steps (the outer batch of ``methods.posttrain.loops.train_demos``).
"""

from __future__ import annotations

import torch

from methods.posttrain.tokens import Batch, gather_logp, masked_mean, shifted_logits


def check_clip(eps_low: float, eps_high: float) -> None:
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"PSFT clip eps_low must be in [0, 1), got {eps_low}")
    if not eps_high >= 0.0:
        raise ValueError(f"PSFT clip eps_high must be >= 0, got {eps_high}")


def psft_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    advantage: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """L = -token_mean min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) over ``mask`` (the PSFT
    objective, methods/psft/README.md; official code: verl ``compute_policy_loss_vanilla`` with
    A = 1, token-mean).

    Returns the loss and statistics over masked tokens only: ``clip_frac`` (share of tokens with
    r > 1+eps_high, whose gradient is exactly zero) and ``approx_kl_old`` (token mean of
    log pi_old - log pi_theta)."""
    check_clip(eps_low, eps_high)
    ratio = torch.exp(logp - old_logp)  # r_t(theta)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantage
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        hi = ((ratio > 1.0 + eps_high).float() * mask).sum() / mask.sum().clamp_min(1.0)
        akl = masked_mean(old_logp - logp, mask)
    return loss, {
        "clip_frac": float(hi),
        "approx_kl_old": float(akl),
        "ratio_mean": float(masked_mean(ratio.detach(), mask)),
    }


class PSFTObjective:
    """Snapshot pi_old's log-probs once per outer batch; clipped-ratio loss at each inner step."""

    name = "psft"

    def __init__(self, eps_low: float = 0.2, eps_high: float = 0.28):
        check_clip(eps_low, eps_high)
        self.eps_low, self.eps_high = eps_low, eps_high

    def snapshot(self, model, batch: Batch) -> dict:
        was = model.training
        model.eval()
        with torch.no_grad():
            old = gather_logp(shifted_logits(model, batch), batch.input_ids)
        model.train(was)
        return {"old_logp": old}

    def loss(self, logits: torch.Tensor, batch: Batch, snap: dict):
        logp = gather_logp(logits, batch.input_ids)
        return psft_token_loss(logp, snap["old_logp"], batch.loss_mask, self.eps_low, self.eps_high)


class WarmupPSFTObjective(PSFTObjective):
    """PSFT + warm-up (the paper's Table 1 row): plain SFT for the first ``sft_steps`` optimiser
    steps "to align pi_old with the data distribution", then PSFT. The switch falls on an
    outer-batch boundary (``sft_steps`` a multiple of K), so every PSFT step uses a snapshot
    taken after the warm-up."""

    name = "psft_warmup"

    def __init__(self, sft_steps: int, inner_steps: int, eps_low=0.2, eps_high=0.28):
        super().__init__(eps_low, eps_high)
        if sft_steps < 0 or sft_steps % inner_steps:
            raise ValueError(
                f"PSFT warm-up steps must be a multiple of inner_steps={inner_steps} (>= 0), "
                f"got {sft_steps}"
            )
        self.sft_steps, self.steps_done = sft_steps, 0

    def loss(self, logits: torch.Tensor, batch: Batch, snap: dict):
        self.steps_done += 1
        if self.steps_done <= self.sft_steps:
            logp = gather_logp(logits, batch.input_ids)
            return -masked_mean(logp, batch.loss_mask), {"clip_frac": 0.0, "phase_sft": 1.0}
        loss, stats = super().loss(logits, batch, snap)
        return loss, {**stats, "phase_sft": 0.0}
