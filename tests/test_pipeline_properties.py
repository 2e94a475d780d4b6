"""Properties of this implementation that the claims files list as kind ``pipeline``: they hold by
construction, so they are asserted here on micro setups and never counted in a paper's totals.

Covered elsewhere (same property, existing tests): D2Quant keep-best DSQ never worse than GPTQ
(test_d2quant::test_dsq_never_worse_than_gptq_and_helps_on_outlier_channels) and DAC removing the
calibration shift (test_d2quant::test_dac_bias_removes_planted_mean_shift, ::test_pipeline_micro);
NSDS plan meets the budget (test_nsds::test_bit_plan_meets_budget) and the released code's
Soft-OR collapsing every score (test_nsds::test_aggregate_per_layer_vs_faithful_scalar); MTP-D
lossless speculative decoding (test_mtp_d::test_speculative_decoding_is_lossless); the MI
last-layer logit lens and weight orthogonalisation identities
(test_mi_steer::test_last_layer_logit_lens_reproduces_the_logits,
::test_weight_orthogonalisation_equals_runtime_ablation); realign R5/R6
(test_realign::test_inra_expanded_equals_reference_before_training,
::test_inra_dual_path_lambda_zero_is_the_reference_token_for_token); OMNIFLOW's faulty rule backend
converging under verification and the rule forecast reproducing the data
(test_omniflow_controller::test_controller_converges_after_injected_faults,
::test_fit_recovers_parameters_and_forecast_loop) and the frozen backend
(test_omniflow_controller::test_hf_backend_loads_tiny_local_model_offline).
"""

from __future__ import annotations

import json
from collections import Counter

import torch

from methods.pig.model import RetrievalModel, TowerConfig, query_scores
from methods.pig.train import Vocab
from methods.quant.gptq import gptq
from methods.quant.quantizer import rtn
from tests.test_pig import MICRO as PIG_MICRO
from tests.test_pig import _frames


def _module_calls(model: torch.nn.Module, fn) -> Counter:
    """How many times each submodule (by name) runs its forward during ``fn()``."""
    calls: Counter = Counter()
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, n=name: calls.update([n]))
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in hooks:
            h.remove()
    return calls


def _arms():
    torch.manual_seed(0)
    cfg = TowerConfig(**PIG_MICRO)
    return cfg, {arm: RetrievalModel(cfg, arm).eval() for arm in ("two_tower", "pig")}


def test_pig_stores_the_same_vector_per_video_in_both_arms():
    """equal_storage_tiny / equal_cost_paper: one D-dim float32 vector per video in each arm."""
    cfg, arms = _arms()
    frames = _frames()
    with torch.no_grad():
        stored = {a: m.encode_video(frames)[0] for a, m in arms.items()}
    assert {tuple(v.shape) for v in stored.values()} == {(3, cfg.embed_dim)}
    assert {v.dtype for v in stored.values()} == {torch.float32}
    assert {v.element_size() * v.shape[1] for v in stored.values()} == {4 * cfg.embed_dim}


def test_pig_query_path_is_the_two_tower_path():
    """equal_latency_tiny: the online query runs the same modules, the same number of times, in
    both arms (the text tower and a dot product), never PIG's generator or fusion."""
    cfg, arms = _arms()
    vocab = Vocab.build(["a red circle moves left", "a small blue square stays still"])
    tokens, eot = vocab.encode(["a red circle moves left"], cfg.context_length)
    index = torch.randn(5, cfg.embed_dim)
    calls = {
        a: _module_calls(m, lambda m=m: query_scores(m, tokens, eot, index))
        for a, m in arms.items()
    }
    assert calls["pig"] == calls["two_tower"] and sum(calls["pig"].values()) > 0
    assert all(n.split(".")[0] == "text" for n in calls["pig"])


def test_pig_offline_encoding_does_strictly_more_work():
    """offline_cost_higher_tiny: PIG's per-video encoding runs everything Two-Tower's does plus
    the pseudo-query generator and the cross-attention fusion."""
    _, arms = _arms()
    frames = _frames()
    calls = {a: _module_calls(m, lambda m=m: m.encode_video(frames)) for a, m in arms.items()}
    tt, pig = calls["two_tower"], calls["pig"]
    assert all(pig[n] >= k for n, k in tt.items())
    assert any(n.startswith("generator") for n in pig) and any(n.startswith("fusion") for n in pig)
    assert not any(n.startswith(("generator", "fusion")) for n in tt)


def test_gptq_layer_error_below_rtn_at_2_bits():
    """gptq_below_rtn_w2 (setup): GPTQ's error feedback lowers the layer-output error of
    round-to-nearest on correlated inputs, the base quantizer both D2Quant arms build on."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(400, 48, generator=g) @ torch.randn(48, 48, generator=g) * 0.3
    W = torch.randn(16, 48, generator=g)
    H = A.T.double() @ A.double()

    def err(q):
        d = W.double() - q.dequantize().double()
        return torch.trace(d @ H @ d.T).item()

    assert err(gptq(W, H, 2, 16)) < 0.9 * err(rtn(W, 2, 16))


def test_d2quant_stores_no_more_bits_than_gptq(tmp_path):
    """no_extra_bits: D2Quant's packed checkpoint (DSQ scales folded into up_proj, DAC as biases)
    has the same bits per weight as plain GPTQ at the same width and group size."""
    from methods.d2quant.quantize import main as d2quant_main
    from methods.quant.apply import main as quant_main
    from tests.quant_fixtures import job_args, save_quant_micro, scale_file

    save_quant_micro(tmp_path / "base")
    calib = str(tmp_path / "calib.txt")
    sf = scale_file(
        tmp_path / "tiny.yaml",
        d2quant={"group_size": 16, "calib": {"n": 4, "seq_len": 32}, "iters": 2},
    )
    d2quant_main(
        ["--model", str(tmp_path / "base"), "--bits", "2", "--calib", calib, "--heldout", calib]
        + ["--record", str(tmp_path / "d.json")]
        + job_args("d2quant", "d2quant-w2", tmp_path / "d2q", sf)
    )
    quant_main(
        ["--model", str(tmp_path / "base"), "--bits", "2", "--method", "gptq"]
        + ["--group-size", "16", "--calib", calib, "--n-calib", "4", "--seq-len", "32"]
        + ["--record", str(tmp_path / "g.json")]
        + job_args("quant", "gptq-w2", tmp_path / "gptq")
    )

    def avg_bits(path):
        rec = json.loads(path.read_text())
        return next(
            m["value"] for m in rec["metrics"] if (m["task"], m["metric"]) == ("size", "avg_bits")
        )

    d2q, base = avg_bits(tmp_path / "d.json"), avg_bits(tmp_path / "g.json")
    assert 2.0 < base and d2q <= base + 1e-9
