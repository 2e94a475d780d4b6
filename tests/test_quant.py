"""Shared quantization layer: quantizer equations, GPTQ against an explicit OBS loop, packed
storage (levels per group, exact reload), plan validation and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from methods.quant.gptq import gptq
from methods.quant.model import SequentialQuantizer, calibration_ids, uniform_plan, validate_plan
from methods.quant.pack import load_packed, read_codes, save_packed
from methods.quant.plant import plant_outliers
from methods.quant.quantizer import (
    QuantConfigError,
    check_bits,
    dequantize,
    levels_per_group,
    rtn,
)
from tests.quant_fixtures import effective_levels_per_group, job_args, save_quant_micro


def test_rtn_hand_made_group():
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    q = rtn(w, 2, 4)
    # range [-1, 2] over 3 steps: s = 1, z = 1; codes round(w)+1 = [0, 1, 2, 3] (0.5 -> 0 + 1)
    assert q.scale.item() == 1.0 and q.zero.item() == 1.0
    assert q.codes.tolist() == [[0, 1, 1, 3]]
    assert q.dequantize().tolist() == [[-1.0, 0.0, 0.0, 2.0]]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_levels_per_group_and_error_shrinks(bits):
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(bits))
    q = rtn(w, bits, 16)
    assert levels_per_group(q.codes, 16).max() <= 2**bits
    assert 0 <= q.codes.min() and q.codes.max() <= 2**bits - 1
    err = (q.dequantize() - w).abs()
    assert (err <= q.scale.repeat_interleave(16, -1) / 2 + 1e-6).all()  # within half a step


def test_clip_search_never_worse():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    w[:, 3] *= 8
    e0 = (rtn(w, 2, 16).dequantize() - w).pow(2).sum()
    e1 = (rtn(w, 2, 16, clip=True).dequantize() - w).pow(2).sum()
    assert e1 <= e0


def obs_reference(w, H, bits, gs, damp=0.01):
    """GPTQ as the explicit optimal-brain-surgeon loop of its paper (eq. 2-3, fixed order):
    quantize column i, spread its error with the full inverse Hessian, then remove column i
    from the inverse (Gaussian elimination). No Cholesky, no blocks."""
    W = w.double().clone()
    n = W.shape[1]
    H = H.double().clone() + damp * torch.diag(H.double()).mean() * torch.eye(
        n, dtype=torch.float64
    )
    Hinv = torch.linalg.inv(H)
    out = torch.zeros_like(W)
    maxq = 2**bits - 1
    s = z = None
    for i in range(n):
        if i % gs == 0:
            g = W[:, i : i + gs].float()
            lo, hi = g.amin(1).clamp(max=0), g.amax(1).clamp(min=0)
            s = ((hi - lo) / maxq).half().float().double()
            z = torch.clamp(torch.round(-lo.double() / s), 0, maxq)
        q = (torch.clamp(torch.round(W[:, i] / s) + z, 0, maxq) - z) * s
        out[:, i] = q
        err = (W[:, i] - q) / Hinv[i, i]
        W -= err[:, None] * Hinv[i][None, :]
        Hinv = Hinv - Hinv[:, i : i + 1] @ Hinv[i : i + 1, :] / Hinv[i, i]
    return out


def test_gptq_equals_explicit_obs_loop_and_beats_rtn():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(256, 48, generator=g) @ torch.randn(48, 48, generator=g)
    H = X.T.double() @ X.double()
    w = torch.randn(12, 48, generator=g)
    q = gptq(w, H, 3, 16, block=32)
    ref = obs_reference(w, H, 3, 16)
    assert torch.allclose(q.dequantize().double(), ref, atol=1e-4)
    out_err = lambda wq: ((X @ (wq - w).T) ** 2).sum()  # noqa: E731
    assert out_err(q.dequantize()) < out_err(rtn(w, 3, 16).dequantize())


def test_bad_inputs_name_the_value(tmp_path):
    with pytest.raises(QuantConfigError, match=r"bit width 5 is not one of \[2, 3, 4, 8\]"):
        check_bits(5)
    model, _ = save_quant_micro(tmp_path / "m")
    with pytest.raises(QuantConfigError, match="group size 48 does not divide the layer width 32"):
        validate_plan(model, uniform_plan(model, 2), 48)
    with pytest.raises(QuantConfigError, match="'lm_head' is not a decoder Linear"):
        validate_plan(model, {"lm_head": 4}, 16)
    with pytest.raises(QuantConfigError, match="bit width 6"):
        validate_plan(model, {"model.layers.0.mlp.up_proj": 6}, 16)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    model, tok = save_quant_micro(d / "base")
    return d, model, tok


def mixed_plan(model):
    plan = uniform_plan(model, 2)
    plan["model.layers.0.self_attn.q_proj"] = 4
    plan["model.layers.1.mlp.down_proj"] = 3
    plan["model.layers.1.mlp.up_proj"] = 8
    del plan["model.layers.0.self_attn.k_proj"]  # stays 16-bit
    return plan


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_packed_roundtrip_levels_and_reload(micro, method, tmp_path):
    d, base, tok = micro
    model = type(base)(base.config)
    model.load_state_dict(base.state_dict())
    plan = mixed_plan(model)
    calib = calibration_ids(tok, d / "calib.txt", 4, 32, 0)
    qs = SequentialQuantizer(model, plan, 16, method, calib).run()
    out = save_packed(model, qs, tmp_path / "packed", tok)
    disk = read_codes(out)
    assert {k: v.bits for k, v in disk.items()} == plan  # bit width per module as planned
    for name, q in disk.items():
        assert levels_per_group(q.codes, 16).max() <= 2**q.bits
        assert torch.equal(q.codes, qs[name].codes)
    reloaded = load_packed(out)
    for name in plan:  # exact: what is in memory is what comes back
        assert torch.equal(reloaded.get_submodule(name).weight, model.get_submodule(name).weight)
        # the weight the reloaded model computes with holds at most 2**b values per group,
        # where the float weight it came from holds one per column (16 > 2**b for b <= 3)
        eff = effective_levels_per_group(reloaded.get_submodule(name).weight, 16)
        assert eff.max() <= 2 ** plan[name]
        assert effective_levels_per_group(base.get_submodule(name).weight, 16).min() == 16
    assert min(plan.values()) <= 3  # so the count above can fail for some layer
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(reloaded.state_dict()[k], base.state_dict()[k].half().float())
    # the compressed-tensors dequantizer (library decoder) agrees with ours
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
        CompressedTensorsDequantizer,
    )
    from safetensors.torch import load_file

    sd = CompressedTensorsDequantizer(str(out), dtype=torch.float32).process(
        load_file(str(out / "model.safetensors"))
    )
    for name in plan:
        w = model.get_submodule(name).weight
        # the library decodes in float16: equal up to float16 rounding
        assert torch.allclose(sd[f"{name}.weight"].float(), w, rtol=2**-10, atol=1e-7)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(reloaded(ids).logits).all()


def test_gptq_layer_inputs_follow_quantized_model(micro):
    """GPTQ's output error on calibration text is below RTN's (same plan, same groups)."""
    d, base, tok = micro
    calib = calibration_ids(tok, d / "calib.txt", 4, 32, 0)
    with torch.no_grad():
        ref = base(calib).logits
    errs = {}
    for method in ("rtn", "gptq"):
        m = type(base)(base.config)
        m.load_state_dict(base.state_dict())
        SequentialQuantizer(m, uniform_plan(m, 3), 16, method, calib).run()
        with torch.no_grad():
            errs[method] = float(((m(calib).logits - ref) ** 2).mean())
    assert errs["gptq"] < errs["rtn"]


def test_plant_keeps_function(micro):
    _, base, _ = micro
    m = type(base)(base.config)
    m.load_state_dict(base.state_dict())
    planted = plant_outliers(m, [1], 16.0, 4, 0)
    assert len(planted["1"]["mlp_channels"]) == 4
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(m(ids).logits, base(ids).logits, atol=1e-4)
    w = m.model.layers[1].mlp.down_proj.weight
    assert w.abs().max() > 4 * base.model.layers[1].mlp.down_proj.weight.abs().max()


def test_cli_writes_artifact_and_rejects_bad_plan(micro, tmp_path, capsys):
    from methods.quant.apply import main

    d, base, _ = micro
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(mixed_plan(base)))
    out = tmp_path / "q"
    cmd = [
        "--model",
        str(d / "base"),
        "--plan",
        str(plan),
        "--method",
        "gptq",
        "--group-size",
        "16",
        "--calib",
        str(d / "calib.txt"),
        "--n-calib",
        "4",
        "--seq-len",
        "32",
        "--record",
        str(tmp_path / "r.json"),
        *job_args("quant", "x", out),
    ]
    main(cmd)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["reload_max_abs_diff"] == 0.0
    size = meta["size"]
    # codes + float16 scale (16/g bits) + packed zero point (b/g bits) + a small shape tensor
    assert (
        size["nominal_bits"] * 17 / 16 + 1 < size["avg_bits"] < size["nominal_bits"] * 17 / 16 + 1.2
    )
    assert size["file_bytes"] == (out / "packed" / "model.safetensors").stat().st_size
    from transformers import AutoModelForCausalLM

    ev = AutoModelForCausalLM.from_pretrained(out)
    packed = load_packed(out / "packed")
    for k, v in packed.state_dict().items():
        assert torch.equal(ev.state_dict()[k], v)
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["suite"] == "quant"
    assert (rec["scale"], rec["paper"], rec["variant"], rec["method"]) == (
        "tiny",
        "quant",
        "x",
        "gptq",
    )
    assert meta["dtype"] == "float32" and meta["name"] == "x"
    plan.write_text(json.dumps({"model.layers.0.mlp.up_proj": 5}))
    with pytest.raises(SystemExit) as e:
        main(cmd[:-10] + job_args("quant", "x", tmp_path / "bad"))
    assert e.value.code == 2 and "bit width 5 is not one of [2, 3, 4, 8]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_cli_follows_the_job_dtype(micro, method, tmp_path):
    """--dtype bfloat16: the model loads and is quantized in bfloat16 (GPTQ's Hessian and
    Cholesky stay float64 per layer), the codes reload exactly, the eval copy is bfloat16."""
    from methods.quant.apply import main

    d, base, _ = micro
    out = tmp_path / "q"
    main(
        ["--model", str(d / "base"), "--bits", "4", "--method", method, "--group-size", "16",
         "--calib", str(d / "calib.txt"), "--n-calib", "2", "--seq-len", "16",
         *job_args("quant", "bf16", out), "--dtype", "bfloat16"]
    )  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["reload_max_abs_diff"] == 0.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
    packed = load_packed(out / "packed", dtype=torch.bfloat16)
    for name, q in read_codes(out / "packed").items():
        w = packed.get_submodule(name).weight
        assert w.dtype == torch.bfloat16 and torch.equal(w, q.dequantize().bfloat16())


def test_plant_cli_writes_meta_through_the_job(micro, tmp_path):
    from methods.quant.plant import main

    d, base, _ = micro
    out = tmp_path / "p"
    main(["--model", str(d / "base"), "--layers", "1", "--alpha", "16", "--channels", "4",
          *job_args("quant", "micro-plant-L1-a16-c4", out)])  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "micro-plant-L1-a16-c4" and meta["kind"] == "planted"
    assert meta["base_model"] == "micro" and meta["seed"] == 0
    assert meta["config"] == {"layers": [1], "alpha": 16.0, "channels": 4}
    m = type(base)(base.config)
    m.load_state_dict(base.state_dict())
    assert meta["planted"] == plant_outliers(m, [1], 16.0, 4, 0)
    with pytest.raises(SystemExit) as e:
        main(["--model", str(d / "base"), "--layers", "7", *job_args("quant", "x", tmp_path / "b")])
    assert e.value.code == 2 and not (tmp_path / "b").exists()


def test_dequantize_formula():
    codes = torch.tensor([[0, 3, 1, 2]], dtype=torch.int16)
    s, z = torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0, 2.0]])
    assert dequantize(codes, s, z, 2).tolist() == [[-0.5, 1.0, -2.0, 0.0]]
