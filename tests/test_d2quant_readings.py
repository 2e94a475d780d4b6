"""D²Quant's three DAC readings (methods/d2quant/README.md, "DAC readings") and the stream drift
on a micro model: each μ recomputed by hand from the streams its reading names; the readings
agree at layer 0 (both streams start equal) and differ after it; plain GPTQ through the D²Quant
pipeline (``--no-dsq --no-dac``) makes GPTQ's own codes and records their drift."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from methods.d2quant.dac import mean_deviation
from methods.d2quant.quantize import D2QuantQuantizer, main, norm_outputs
from methods.quant.model import (
    SequentialQuantizer,
    calibration_ids,
    decoder_layers,
    layer_inputs,
    run_layer,
    uniform_plan,
)
from tests.quant_fixtures import job_args, save_quant_micro, scale_file

READINGS = ("float", "quantized", "quantized_both")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readings")
    model, tok = save_quant_micro(tmp / "m")
    ids = calibration_ids(tok, tmp / "calib.txt", 4, 32, 0)
    out = {}
    for mode in READINGS:
        m = copy.deepcopy(model)
        q = D2QuantQuantizer(m, uniform_plan(m, 2), 16, ids, dsq=False, dac_input=mode)
        q.run()
        out[mode] = (m, q)
    return model, ids, out


def _streams(fp_model, q_model, ids):
    """Inputs of layer 1: the float model's and the quantized model's (its DAC bias included)."""
    x0, kw = layer_inputs(fp_model, ids)
    x1_fp = run_layer(decoder_layers(fp_model)[0], x0, kw)
    x1_q = run_layer(decoder_layers(q_model)[0], x0, kw)
    return x1_fp, x1_q, kw


def test_each_reading_takes_mu_from_the_streams_it_names(runs):
    model, ids, out = runs
    fp1 = decoder_layers(model)[1]
    for mode, (m, q) in out.items():
        x1_fp, x1_q, kw = _streams(model, m, ids)
        a, b = {
            "float": (x1_fp, x1_fp),
            "quantized": (x1_fp, x1_q),
            "quantized_both": (x1_q, x1_q),
        }[mode]
        q1 = decoder_layers(m)[1]  # attention quantized; the norm has no bias any more
        with torch.no_grad():
            mu = mean_deviation(norm_outputs(fp1, a, kw), norm_outputs(q1, b, kw))
        assert torch.allclose(mu, q.mu[1], atol=1e-5), mode
        # a wrong reading would not reproduce it
        for other in READINGS:
            if other != mode:
                assert not torch.allclose(out[other][1].mu[1], q.mu[1], atol=1e-4), (mode, other)


def test_readings_agree_at_layer_zero_and_calibration_shift_is_removed(runs):
    _, _, out = runs
    mus = [q.mu[0] for _, q in out.values()]
    for mu in mus[1:]:
        assert torch.allclose(mu, mus[0], atol=1e-6)
    for _, q in out.values():
        assert max(v["after"] for v in q.dac_calib.values()) < 1e-4
        assert min(v["before"] for v in q.dac_calib.values()) > 1e-3


def test_the_figure_reading_is_the_default(runs):
    model, ids, out = runs
    m = copy.deepcopy(model)
    q = D2QuantQuantizer(m, uniform_plan(m, 2), 16, ids, dsq=False)
    q.run()
    assert q.dac_input == "float"
    assert torch.equal(q.mu[1], out["float"][1].mu[1])


def test_gptq_drift_is_plain_gptq_and_its_drift_is_the_stream_deviation(runs):
    model, ids, _ = runs
    ref = copy.deepcopy(model)
    base = SequentialQuantizer(ref, uniform_plan(ref, 2), 16, "gptq", ids).run()
    m = copy.deepcopy(model)
    q = D2QuantQuantizer(m, uniform_plan(m, 2), 16, ids, dsq=False, dac=False)
    got = q.run()
    assert set(got) == set(base)
    for name in base:
        assert torch.equal(got[name].codes, base[name].codes), name
        assert torch.equal(got[name].scale, base[name].scale), name
    assert not q.mu and sorted(q.drift_calib) == [0, 1]
    x1_fp, x1_q, kw = _streams(model, m, ids)
    with torch.no_grad():
        h_fp = norm_outputs(decoder_layers(model)[1], x1_fp, kw)
        h_q = norm_outputs(decoder_layers(m)[1], x1_q, kw)
    d = h_fp.shape[-1]
    drift = mean_deviation(h_fp, h_q).norm() / h_fp.reshape(-1, d).norm(dim=-1).mean()
    assert q.drift_calib[1] == pytest.approx(float(drift), rel=1e-4)
    assert q.drift_calib[1] > 0


def test_cli_records_drift_and_reading(tmp_path):
    save_quant_micro(tmp_path / "base")
    sf = scale_file(
        tmp_path / "tiny.yaml",
        d2quant={"group_size": 16, "calib": {"n": 2, "seq_len": 16}, "iters": 2},
    )
    for variant, flags in (
        ("gptq_drift-w2", ["--no-dsq", "--no-dac"]),
        ("d2quant_qboth-w2", ["--dac-input", "quantized_both"]),
    ):
        out = tmp_path / variant
        main(
            [*flags, "--model", str(tmp_path / "base"), "--bits", "2",
             "--calib", str(tmp_path / "calib.txt"), "--heldout", str(tmp_path / "calib.txt"),
             "--record", str(tmp_path / f"{variant}.json"), *job_args("d2quant", variant, out, sf)]
        )  # fmt: skip
        rec = json.loads((tmp_path / f"{variant}.json").read_text())
        m = {(r["task"], r["metric"]): r["value"] for r in rec["metrics"]}
        assert m[("drift_calib", "drift_mean")] > 0 and m[("drift_heldout", "drift_max")] > 0
        meta = json.loads((out / "meta.json").read_text())
        if variant.startswith("gptq_drift"):
            assert meta["method"] == "gptq" and ("dac_calib", "shift_after_max") not in m
        else:
            assert meta["config"]["dac_input"] == "quantized_both"
            assert m[("dac_heldout", "shift_after_mean")] < m[("dac_heldout", "shift_before_mean")]
