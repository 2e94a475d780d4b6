"""PSFT with one inner step per pi_old refresh (K = 1) is SFT: every step's ratio is 1 at the
snapshot, so the clipped surrogate's gradient is SFT's and AdamW takes the same update
(methods/psft/README.md, "The equations the code implements"). The loss value differs only by
the constant it is written in (-token_mean r = -1 vs SFT's cross-entropy). Controls: a wrong
ratio (pi_old / pi_theta) or a clip that binds at r = 1 break the equality, and K > 1 departs
from SFT, so the comparison can fail."""

from __future__ import annotations

import pytest
import torch

import methods.psft.objective as psft_objective
from methods.posttrain.loops import SFTObjective, train_demos
from methods.posttrain.models import load_model
from methods.posttrain.rewards import demonstration
from methods.psft.objective import PSFTObjective
from tests.posttrain_fixtures import problems, save_micro_model

STEPS, MB = 4, 4


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    path = tmp_path_factory.mktemp("psft_k1") / "m"
    _, tok = save_micro_model(path)
    pr, co = zip(*[demonstration(p, "long") for p in problems(24)], strict=True)
    return path, tok, list(pr), list(co)


def _train(micro, objective, inner_steps=1):
    path, tok, pr, co = micro
    m, _ = load_model(path, trainable=True)
    m.requires_grad_(True)
    grads = []
    rows = train_demos(
        m,
        tok,
        pr,
        co,
        objective,
        steps=STEPS,
        minibatch=MB,
        inner_steps=inner_steps,
        lr=5e-2,
        seed=3,
        log=lambda row: grads.append(row["grad_norm"]),
    )
    return m, rows, grads


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def _start(micro):
    m, _ = load_model(micro[0])
    return _params(m)


def test_psft_one_inner_step_equals_sft(micro):
    sft_m, sft_rows, sft_g = _train(micro, SFTObjective())
    ps_m, ps_rows, ps_g = _train(micro, PSFTObjective(0.2, 0.28), inner_steps=1)
    start = _start(micro)
    moved = (_params(sft_m) - start).abs().max()
    assert moved > 1e-2  # the updates are not trivially zero
    # same gradient (its norm, before clipping) at every step and the same parameters after
    assert ps_g == pytest.approx(sft_g, rel=1e-5)
    assert torch.allclose(_params(ps_m), _params(sft_m), atol=1e-6, rtol=1e-5)
    # at the snapshot r = 1 exactly: the surrogate is -1, nothing is clipped
    for r in ps_rows:
        assert r["loss"] == pytest.approx(-1.0, abs=1e-6)
        assert r["clip_frac"] == 0.0 and r["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert [r["tokens"] for r in ps_rows] == [r["tokens"] for r in sft_rows]


def test_k1_equality_fails_for_a_wrong_ratio_or_clip(micro, monkeypatch):
    sft_m, _, sft_g = _train(micro, SFTObjective())
    real = psft_objective.psft_token_loss

    def inverted_ratio(logp, old_logp, mask, eps_low=0.2, eps_high=0.28, advantage=1.0):
        return real(old_logp, logp, mask, eps_low, eps_high, advantage)  # pi_old / pi_theta

    monkeypatch.setattr(psft_objective, "psft_token_loss", inverted_ratio)
    bad_m, _, bad_g = _train(micro, PSFTObjective(0.2, 0.28), inner_steps=1)
    assert not torch.allclose(_params(bad_m), _params(sft_m), atol=1e-4)

    def clip_at_one(logp, old_logp, mask, eps_low=0.2, eps_high=0.28, advantage=1.0):
        ratio = torch.exp(logp - old_logp)
        loss = -psft_objective.masked_mean(torch.clamp(ratio, max=1.0 - 1e-3), mask)
        return loss, {"clip_frac": 1.0, "approx_kl_old": 0.0, "ratio_mean": 1.0}

    monkeypatch.setattr(psft_objective, "psft_token_loss", clip_at_one)
    clipped_m, _, _ = _train(micro, PSFTObjective(0.2, 0.28), inner_steps=1)
    assert torch.allclose(_params(clipped_m), _start(micro))  # no gradient passes: no update
    assert not torch.allclose(_params(clipped_m), _params(sft_m), atol=1e-4)


def test_more_inner_steps_depart_from_sft(micro):
    sft_m, _, _ = _train(micro, SFTObjective(), inner_steps=STEPS)
    ps_m, rows, _ = _train(micro, PSFTObjective(0.2, 0.28), inner_steps=STEPS)
    assert abs(rows[0]["ratio_mean"] - 1.0) < 1e-6  # first step after the snapshot: r = 1
    assert any(abs(r["ratio_mean"] - 1.0) > 1e-3 for r in rows[1:])  # later steps: r != 1
    assert not torch.allclose(_params(ps_m), _params(sft_m), atol=1e-5)
