"""PSFT's exact unit tests (T1-T3 of methods/psft/README.md), the snapshot schedule, and the micro pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from claimbench.records import load_run_record
from methods.posttrain.loops import SFTObjective, train_demos
from methods.posttrain.models import load_model
from methods.posttrain.rewards import demonstration
from methods.posttrain.tokens import masked_mean
from methods.psft.objective import PSFTObjective, psft_token_loss
from tests.posttrain_fixtures import problems, save_micro_model, scale_file, write_problems


def _logp(z, ids):
    return torch.log_softmax(z, -1).gather(-1, ids[..., None])[..., 0]


def test_t1_first_inner_step_equals_sft():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 7, requires_grad=True)
    ids = torch.randint(0, 7, (3, 5))
    mask = (torch.rand(3, 5) > 0.3).float()
    lp = _logp(z, ids)
    psft, st = psft_token_loss(lp, lp.detach(), mask)  # r = 1 right after the snapshot
    (g_psft,) = torch.autograd.grad(psft, z)
    (g_sft,) = torch.autograd.grad(-masked_mean(_logp(z, ids), mask), z)
    assert torch.allclose(g_psft, g_sft, atol=1e-6)
    assert st["clip_frac"] == 0.0


def test_t1_no_upper_clip_is_sft_gradient_times_ratio():
    torch.manual_seed(1)
    z = torch.randn(2, 6, 9, requires_grad=True)
    ids = torch.randint(0, 9, (2, 6))
    mask = torch.ones(2, 6)
    old = _logp(z, ids).detach() + 0.5 * torch.randn(2, 6)
    loss, _ = psft_token_loss(_logp(z, ids), old, mask, eps_low=0.2, eps_high=1e9)
    (g,) = torch.autograd.grad(loss, z)
    lp = _logp(z, ids)
    r = torch.exp(lp - old).detach()
    (g_ref,) = torch.autograd.grad(-masked_mean(r * lp, mask), z)
    assert torch.allclose(g, g_ref, atol=1e-6)


def test_t2_zero_gradient_beyond_upper_clip_but_not_below_lower():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.5]])).requires_grad_(True)
    # token 0: r = 1.5 > 1.28 (clipped); token 1: r = 0.5 < 0.8 (still pushed); token 2: r = 1.1
    old = torch.log(torch.tensor([[0.5 / 1.5, 0.5 / 0.5, 0.5 / 1.1]]))
    loss, st = psft_token_loss(lp, old, torch.ones(1, 3), 0.2, 0.28)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[0, 0].item() == 0.0
    assert g[0, 1].item() == pytest.approx(
        -0.5 / 3, abs=1e-6
    )  # -r/N: A > 0 ignores the lower bound
    assert g[0, 2].item() == pytest.approx(-1.1 / 3, abs=1e-6)
    assert st["clip_frac"] == pytest.approx(1 / 3)


def test_t3_masked_tokens_excluded_from_loss_and_stats():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.1, 0.5, 0.1, 0.45]]))  # ratios 5, 1, 5, 1.11
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])  # prompt / padding at 0 and 2
    loss, st = psft_token_loss(lp, old, mask)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[0, 0] == 0 and g[0, 2] == 0
    assert st["clip_frac"] == 0.0  # the clipped tokens are masked, so they are not counted
    assert loss.item() == pytest.approx(-(1.0 + 0.5 / 0.45) / 2, abs=1e-6)
    old2 = old.clone()
    old2[0, 0] = -20.0
    assert psft_token_loss(lp, old2, mask)[0].item() == pytest.approx(loss.item())


@pytest.mark.parametrize("lo,hi", [(-0.1, 0.28), (1.0, 0.28), (0.2, -0.5)])
def test_bad_clip_bounds(lo, hi):
    with pytest.raises(ValueError, match="PSFT clip"):
        PSFTObjective(lo, hi)


def test_snapshot_refreshed_every_k_steps_and_equal_budgets(tmp_path):
    _, tok = save_micro_model(tmp_path / "m")
    pr, co = zip(*[demonstration(p, "short") for p in problems(40)], strict=True)
    calls = []

    class Counting(PSFTObjective):
        def snapshot(self, model, batch):
            calls.append(batch.input_ids.clone())
            return super().snapshot(model, batch)

    m, _ = load_model(tmp_path / "m", trainable=True)
    m.requires_grad_(True)
    rows = train_demos(
        m, tok, list(pr), list(co), Counting(), steps=12, minibatch=4, inner_steps=4, lr=1e-2
    )
    assert len(calls) == 12  # each mini-batch snapshotted once, in 3 outer batches of 4
    assert rows[0]["clip_frac"] == 0.0 and abs(rows[0]["ratio_mean"] - 1) < 1e-6
    m2, _ = load_model(tmp_path / "m", trainable=True)
    m2.requires_grad_(True)
    rows_sft = train_demos(
        m2, tok, list(pr), list(co), SFTObjective(), steps=12, minibatch=4, inner_steps=4, lr=1e-2
    )
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in rows_sft]
    # first step: PSFT (r = 1) and SFT take the same gradient, so the same loss magnitude
    assert rows[0]["loss"] == pytest.approx(-1.0)


def test_micro_pipeline_writes_artifact_and_record(tmp_path):
    from methods.psft.train import main

    save_micro_model(tmp_path / "start")
    tr = write_problems(tmp_path / "train.jsonl", problems(64))
    va = write_problems(tmp_path / "valid.jsonl", problems(16, seed=1))
    cfg = {
        "form": "short",
        "steps": 8,
        "minibatch": 4,
        "inner_steps": 4,
        "lr": 1e-2,
        "lowlr_factor": 0.3,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "grad_clip": 1.0,
        "eps_low": 0.2,
        "eps_high": 0.28,
        "kl_coef": 0.05,
        "eval_batch": 8,
        "eval_every": 4,
    }
    sf = scale_file(tmp_path / "tiny.yaml", "psft", {"train": cfg})
    job = ["--scale", "tiny", "--scale-file", str(sf), "--paper", "psft"]
    for arm in ("psft", "sft_kl"):
        out, rec = tmp_path / arm, tmp_path / f"{arm}.json"
        main(
            [
                *job,
                "--variant",
                arm,
                "--out",
                str(out),
                "--arm",
                arm,
                "--start",
                str(tmp_path / "start"),
                "--train",
                str(tr),
                "--valid",
                str(va),
                "--record",
                str(rec),
            ]
        )
        r = load_run_record(rec)
        assert r["config"] == {**cfg, "arm": arm, "effective_lr": cfg["lr"]}
        assert (r["variant"], r["paper"], r["provenance"]["dtype"]) == (arm, "psft", "float32")
        names = {s["name"] for s in r["series"]}
        assert "entropy (valid demos)" in names and "KL to start (valid demos)" in names
        assert ("clip fraction" in names) == (arm == "psft")
        meta = json.loads((out / "meta.json").read_text())
        assert meta["method"] == arm and meta["tokens_seen"] > 0
        assert (meta["name"], meta["paper"], meta["dtype"]) == (arm, "psft", "float32")
        load_model(out)
    with pytest.raises(SystemExit) as err:
        main(
            [
                *job,
                "--variant",
                "x",
                "--out",
                str(tmp_path / "x"),
                "--arm",
                "dpo",
                "--start",
                str(tmp_path / "start"),
                "--train",
                str(tr),
                "--valid",
                str(va),
                "--record",
                str(tmp_path / "x.json"),
            ]
        )
    assert err.value.code == 2 and not (tmp_path / "x").exists()


def test_warmup_arm_is_sft_then_psft():
    from methods.posttrain.tokens import Batch
    from methods.psft.objective import WarmupPSFTObjective

    torch.manual_seed(3)
    ids = torch.randint(0, 7, (2, 4))
    b = Batch(ids, torch.ones_like(ids), torch.ones(2, 4))
    obj = WarmupPSFTObjective(sft_steps=2, inner_steps=2, eps_low=0.2, eps_high=0.28)
    old = _logp(torch.randn(2, 4, 7), ids)
    z = torch.randn(2, 4, 7)
    sft, _ = SFTObjective().loss(z, b, {})
    ps, _ = PSFTObjective(0.2, 0.28).loss(z, b, {"old_logp": old})
    got = [obj.loss(z, b, {"old_logp": old}) for _ in range(3)]
    assert [g[1]["phase_sft"] for g in got] == [1.0, 1.0, 0.0]
    assert torch.allclose(got[0][0], sft) and torch.allclose(got[2][0], ps)
    assert not torch.allclose(sft, ps)
    with pytest.raises(ValueError, match="multiple of inner_steps"):
        WarmupPSFTObjective(sft_steps=3, inner_steps=2)
