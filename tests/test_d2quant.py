"""D²Quant: the dual-scale fold, the closed-form c-step, keep-best DSQ, DAC removing a planted
mean shift, DAC's norm bias equal to gate/up biases, and the pipeline on a micro model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from methods.d2quant.dac import NormWithBias, bias_into_mlp, mean_deviation
from methods.d2quant.dsq import c_step, dual_scale_quantize, fold_into_up, output_error
from methods.d2quant.quantize import D2QuantQuantizer, check_model, main
from methods.quant.gptq import gptq
from methods.quant.pack import read_codes
from methods.quant.quantizer import QuantConfigError, levels_per_group, rtn
from tests.quant_fixtures import (
    effective_levels_per_group,
    job_args,
    save_quant_micro,
    scale_file,
)


def problem(seed=0, d=16, d_ff=48, n=400):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d_ff, generator=g) * torch.rand(d_ff, generator=g) * 2
    W = torch.randn(d, d_ff, generator=g)
    W[:, :3] *= 6  # outlier input channels
    return A, W, A.T.double() @ A.double()


def test_dual_scale_fold_leaves_output_unchanged():
    g = torch.Generator().manual_seed(0)
    d, d_ff = 16, 48
    x = torch.randn(10, d, generator=g)
    W_gate, W_up = torch.randn(d_ff, d, generator=g), torch.randn(d_ff, d, generator=g)
    A, W_down, H = problem()
    res = dual_scale_quantize(W_down, H, 2, 16, iters=4)
    up_q = rtn(W_up, 3, 16)
    a = F.silu(x @ W_gate.T) * (x @ up_q.dequantize().T)
    explicit = (a * res.c) @ res.qweight.dequantize().T  # (a ⊙ c) Ŵᵀ
    up_folded = fold_into_up(up_q, res.c)
    assert torch.equal(up_folded.codes, up_q.codes) and torch.equal(up_folded.zero, up_q.zero)
    folded = (F.silu(x @ W_gate.T) * (x @ up_folded.dequantize().T)) @ res.qweight.dequantize().T
    assert torch.allclose(folded, explicit, rtol=2e-3, atol=2e-3 * explicit.abs().max())


def test_c_step_solves_the_normal_equations():
    A, W, H = problem(1, d=6, d_ff=10)
    W_hat = rtn(W, 3, 10).dequantize()
    assert (W_hat.abs().sum(0) > 0).all()  # no all-zero column: the system is regular
    c = c_step(W, W_hat, H, torch.ones(10), prox=0.0)
    # least squares over c: columns of the design are vec(A_j ⊗ B_j)
    cols = torch.stack(
        [(A[:, j : j + 1].double() @ W_hat[:, j : j + 1].double().T).flatten() for j in range(10)],
        1,
    )
    ref = torch.linalg.lstsq(cols, (A.double() @ W.double().T).flatten()).solution
    assert torch.allclose(c.double(), ref.clamp(min=1e-2), rtol=1e-4, atol=1e-6)


def test_dsq_never_worse_than_gptq_and_helps_on_outlier_channels():
    A, W, H = problem(2)
    base = output_error(W.double(), gptq(W, H, 2, 16).dequantize().double(), H)
    res = dual_scale_quantize(W, H, 2, 16, iters=15)
    assert res.errors[0] == pytest.approx(base)  # iteration 0 is plain GPTQ (c = 1)
    final = output_error(W.double(), res.qweight.dequantize().double() * res.c.double(), H)
    assert final == pytest.approx(min(res.errors + [final]))
    assert final <= base
    assert final < 0.95 * base  # outlier channels: the channel scales pay


def test_dac_bias_removes_planted_mean_shift():
    g = torch.Generator().manual_seed(3)
    h_fp = torch.randn(2000, 8, generator=g)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.1, 0.0, -0.3, 0.7])
    h_q = h_fp - shift + 0.05 * torch.randn(2000, 8, generator=g)
    mu = mean_deviation(h_fp, h_q)
    assert torch.allclose(mu, shift, atol=0.01)
    norm = NormWithBias(torch.nn.Identity(), mu)
    assert mean_deviation(h_fp, norm(h_q)).abs().max() < 1e-5
    # the squared error drops from mu^2 + sigma^2 to sigma^2
    assert ((h_fp - norm(h_q)) ** 2).mean() < 0.01 * ((h_fp - h_q) ** 2).mean()


def test_dac_norm_bias_equals_gate_up_biases(tmp_path):
    model, _ = save_quant_micro(tmp_path / "m")
    layer = model.model.layers[0]
    mu = torch.randn(32, generator=torch.Generator().manual_seed(4))
    h = torch.randn(3, 5, 32)
    layer.post_attention_layernorm = NormWithBias(layer.post_attention_layernorm, mu)
    with torch.no_grad():
        ref = layer.mlp(layer.post_attention_layernorm(h))
        bias_into_mlp(layer, mu)
        got = layer.mlp(layer.post_attention_layernorm(h))
    assert torch.allclose(got, ref, atol=1e-5)
    assert not isinstance(layer.post_attention_layernorm, NormWithBias)


def test_dac_input_float_corrects_only_the_layers_own_deviation(tmp_path):
    """--dac-input float (the default, the figure's reading): μ_l from the float stream's input
    through layer l's quantized attention; the same as the sequential reading at layer 0 (both
    streams start equal), not after it."""
    import copy

    from methods.d2quant.quantize import norm_outputs
    from methods.quant.model import (
        calibration_ids,
        decoder_layers,
        layer_inputs,
        run_layer,
        uniform_plan,
    )

    model, tok = save_quant_micro(tmp_path / "m")
    ids = calibration_ids(tok, tmp_path / "calib.txt", 4, 32, 0)
    mus = {}
    for mode in ("quantized", "float"):
        m = copy.deepcopy(model)
        q = D2QuantQuantizer(m, uniform_plan(m, 2), 16, ids, dsq=False, dac_input=mode)
        q.run()
        mus[mode] = q.mu
    assert torch.allclose(mus["float"][0], mus["quantized"][0], atol=1e-6)
    assert not torch.allclose(mus["float"][1], mus["quantized"][1], atol=1e-4)
    # float mode, layer 1: recompute μ by hand from the float stream
    fp_layers = decoder_layers(model)
    x0, kw = layer_inputs(model, ids)
    with torch.no_grad():
        x1 = run_layer(fp_layers[0], x0, kw)
        qlayer = copy.deepcopy(fp_layers[1])
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = getattr(qlayer.self_attn, name)
            lin.weight.data = q.quantized[f"model.layers.1.self_attn.{name}"].dequantize()
        mu = mean_deviation(norm_outputs(fp_layers[1], x1, kw), norm_outputs(qlayer, x1, kw))
    assert torch.allclose(mu, mus["float"][1], atol=1e-5)
    with pytest.raises(QuantConfigError, match="dac_input: 'fp' is not one of"):
        D2QuantQuantizer(model, uniform_plan(model, 2), 16, ids, dac_input="fp")


def test_model_without_down_proj_is_refused(tmp_path):
    model, _ = save_quant_micro(tmp_path / "m")
    del model.model.layers[1].mlp.down_proj
    with pytest.raises(QuantConfigError, match="layer 1 has no mlp.down_proj"):
        check_model(model)


@pytest.mark.parametrize("dac_input", ["quantized", "float", "quantized_both"])
def test_pipeline_micro(tmp_path, dac_input):
    save_quant_micro(tmp_path / "base")
    out = tmp_path / "d2q"
    sf = scale_file(
        tmp_path / "tiny.yaml",
        d2quant={"group_size": 16, "calib": {"n": 4, "seq_len": 32}, "iters": 3},
    )
    main(
        [
            "--dac-input",
            dac_input,
            "--model",
            str(tmp_path / "base"),
            "--bits",
            "2",
            "--calib",
            str(tmp_path / "calib.txt"),
            "--heldout",
            str(tmp_path / "calib.txt"),
            "--record",
            str(tmp_path / "r.json"),
            *job_args("d2quant", "d2quant-w2", out, sf),
        ]
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "d2quant" and meta["reload_max_abs_diff"] == 0.0
    assert meta["config"]["dac_input"] == dac_input
    codes = read_codes(out / "packed")
    for q in codes.values():
        assert q.bits == 2 and levels_per_group(q.codes, 16).max() <= 4
    # the weights the saved model computes with (DSQ's second scale folded into up_proj): at
    # most 4 values per (row, group) in every quantized layer, down_proj included
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    for name in codes:
        assert effective_levels_per_group(saved.get_submodule(name).weight, 16).max() <= 4, name
        assert effective_levels_per_group(base.get_submodule(name).weight, 16).min() > 4, name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mlp_bias"] is True  # DAC stored as gate/up biases
    rec = json.loads((tmp_path / "r.json").read_text())
    m = {(r["task"], r["metric"]): r["value"] for r in rec["metrics"]}
    assert m[("dac_calib", "shift_after_max")] < 1e-4 < m[("dac_calib", "shift_before_mean")]
    assert m[("dsq", "down_error_ratio_max")] <= 1.0
    assert meta["config"]["iters"] == 3 and meta["config"]["group_size"] == 16
    assert (rec["paper"], rec["variant"], rec["suite"]) == ("d2quant", "d2quant-w2", "d2quant")


def test_pipeline_follows_the_job_dtype(tmp_path):
    """--dtype bfloat16: the model, its float copy for DAC and the DAC biases are bfloat16 (DSQ
    and GPTQ still solve in float64 per layer); the codes reload exactly."""
    save_quant_micro(tmp_path / "base")
    out = tmp_path / "d2q"
    sf = scale_file(
        tmp_path / "tiny.yaml",
        d2quant={"group_size": 16, "calib": {"n": 2, "seq_len": 16}, "iters": 2},
    )
    main(
        ["--model", str(tmp_path / "base"), "--bits", "2", "--calib", str(tmp_path / "calib.txt"),
         *job_args("d2quant", "d2quant-w2", out, sf), "--dtype", "bfloat16"]
    )  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["reload_max_abs_diff"] == 0.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["mlp_bias"] is True
    assert len(json.loads((out / "dac_bias.json").read_text())) == 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda s: s.update(bits=[2, 5]),
            r"papers\.d2quant: bits\.1: 5 is not one of \[2, 3, 4, 8\]",
        ),
        (
            lambda s: s.update(base_model="lm-xl"),
            r"papers\.d2quant\.base_model: 'lm-xl' is not one",
        ),
        (lambda s: s.update(arms=["awq"]), r"papers\.d2quant: arms\.0: 'awq' is not one of"),
    ],
)
def test_bad_config_is_named(tmp_path, mutate, message):
    import yaml

    from claimbench.config import load_scale
    from claimbench.errors import ConfigError

    data = yaml.safe_load(open("config/scales/tiny.yaml"))
    mutate(data["papers"]["d2quant"])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_scale("tiny", path)


@pytest.mark.slow
def test_snakemake_refuses_group_size_not_dividing_width(tmp_path, snakemake_bin, root):
    import subprocess

    import yaml

    data = yaml.safe_load(open(root / "config/scales/tiny.yaml"))
    data["papers"]["d2quant"]["group_size"] = 64  # lm-m: 96 % 64 != 0
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    p = subprocess.run(
        [
            snakemake_bin,
            "-n",
            "--cores",
            "1",
            "-d",
            str(tmp_path / "w"),
            "-s",
            str(root / "Snakefile"),
            "d2quant_all",
            "--config",
            f"scale_file={path}",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0
    assert "papers.d2quant.group_size: 64 does not divide models.lm-m.hidden_size = 96" in (
        p.stdout + p.stderr
    )
