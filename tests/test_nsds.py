"""NSDS: each equation on hand-made tensors, the allocation, bad input, and the planted check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kurtosis as scipy_kurtosis
from transformers import LlamaConfig, LlamaForCausalLM

from methods.nsds import baselines
from methods.nsds.allocate import (
    BudgetError,
    average_bits,
    check_bits,
    layer_bits,
    n_high_layers,
    plan_from_bits,
    uniform_bits,
)
from methods.nsds.cli import draws_summary
from methods.nsds.scores import (
    NSDSInputError,
    NSDSOptions,
    aggregate,
    capacity_score,
    effective_rank,
    energy_rank,
    excess_kurtosis,
    head_circuits,
    mad_sigmoid,
    model_geometry,
    nsds_scores,
    options_from,
    se_score,
    soft_or,
    zscore_sigmoid,
)
from methods.quant.plant import plant_outliers


def micro_llama(n_layers=4, seed=0, d=32, heads=4, kv=2, ff=64, vocab=96, head_dim=None):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=d,
        intermediate_size=ff,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        head_dim=head_dim,
    )
    return LlamaForCausalLM(cfg).eval()


# ---- eq. (2) kurtosis ------------------------------------------------------------------------------


def test_kurtosis_hand_values():
    # {-1, 1}: m2 = 1, m4 = 1 -> 1 - 3 = -2
    assert float(excess_kurtosis(torch.tensor([-1.0, 1.0, -1.0, 1.0]))) == pytest.approx(-2.0)
    # [0,0,0,0,2]: mean .4, deviations (-.4 x4, 1.6): m2 = .64, m4 = 1.3312 -> 1.3312/.4096 - 3 = .25
    assert float(excess_kurtosis(torch.tensor([0.0, 0, 0, 0, 2]))) == pytest.approx(0.25)
    x = torch.randn(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 3
    assert float(excess_kurtosis(x)) == pytest.approx(
        scipy_kurtosis(x.numpy(), fisher=True), rel=1e-6
    )
    # per column
    m = torch.randn(40, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    np.testing.assert_allclose(
        excess_kurtosis(m, dim=0).numpy(), scipy_kurtosis(m.numpy(), axis=0), rtol=1e-6
    )
    assert float(excess_kurtosis(torch.ones(7))) == 0.0


# ---- eqs. (3)-(6) structural expressiveness -------------------------------------------------------------


def test_effective_rank_and_capacity():
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0, rel=1e-9)
    assert effective_rank(torch.tensor([5.0, 0.0])) == pytest.approx(1.0, rel=1e-9)
    p = torch.tensor([0.5, 0.25, 0.25])
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert effective_rank(p * 8) == pytest.approx(math.exp(h), rel=1e-9)  # scale invariant
    assert capacity_score(torch.tensor([2.0, 2.0])) == pytest.approx(4.0 / 2.0)
    assert capacity_score(torch.tensor([3.0, 1.0])) > capacity_score(torch.tensor([2.0, 2.0]))


def test_energy_rank():
    s = torch.tensor([10.0, 1.0, 0.1, 0.01])  # energies 100, 1, .01, 1e-4: 99% reached at index 0
    assert energy_rank(s, 0.99) == 2  # count 1 -> at least 2
    s = torch.tensor([1.0, 1.0, 1.0, 1.0])  # 99% of 4 reached at index 3
    assert energy_rank(s, 0.99) == 4
    assert energy_rank(s, 0.5) == 2 + 0  # index 1 -> count 2
    assert energy_rank(torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0, 3.0]), 0.5) == 3


def test_se_roles_hand_matrix():
    # W = U diag(s) V^T with chosen orthonormal factors: check beta per role.
    d = 4
    eye = torch.eye(d, dtype=torch.float64)
    s = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    w = eye @ torch.diag(s) @ eye.T
    opts = NSDSOptions(energy=1.0)
    # Writers: P spans e0, e1 -> beta = [1, 1, 0, 0]; k = 4 (energy 1.0)
    p_u = eye[:, :2]
    expect = capacity_score(s * torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    assert se_score(w, "down", opts, p_u) == pytest.approx(expect)
    assert se_score(w, "ov", opts, p_u) == pytest.approx(expect)
    # Detectors: singular vectors are one-hot -> kurtosis of (1,0,0,0) = 1/3 / (3/16)^2 ... computed
    k1 = float(excess_kurtosis(torch.tensor([1.0, 0, 0, 0])))
    beta = math.log1p(max(k1, 0.0))
    assert se_score(w, "gate", opts) == pytest.approx(capacity_score(s * beta))
    beta_qk = math.log1p(max(k1, 0.0) ** 2)
    assert se_score(w, "qk", opts) == pytest.approx(capacity_score(s * beta_qk))
    # Ablation beta == 1
    assert se_score(w, "gate", NSDSOptions(energy=1.0, role_reweighting=False)) == pytest.approx(
        capacity_score(s)
    )


def test_down_proj_faithful_shape_bug():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p_u = torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))[0]
    assert se_score(w, "down", NSDSOptions(), p_u) > 0  # fixed: one weight per direction
    notes = []
    fixed = se_score(w, "down", NSDSOptions(), p_u)
    assert se_score(w, "down", NSDSOptions(faithful_to_code=True), p_u, notes) == fixed
    assert notes and "k=" in notes[0] and "r=3" in notes[0]  # the released code would crash
    p_u8 = torch.eye(8, dtype=torch.float64)  # r = 8 = k: the code's dim=0 form broadcasts
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    coded = se_score(w, "down", NSDSOptions(faithful_to_code=True, energy=1.0), p_u8)
    assert coded == pytest.approx(capacity_score(s * torch.linalg.norm(u.T @ p_u8, dim=0)))


# ---- eqs. (7)-(8) aggregation ---------------------------------------------------------------------------


def test_mad_sigmoid_hand_values_and_invariance():
    r = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    p = mad_sigmoid(r, c=1.0)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-np.array([-2.0, -1.0, 0.0, 1.0, 97.0]))))
    p_paper = mad_sigmoid(r)  # c = 1.4826
    np.testing.assert_allclose(p_paper[1], 1 / (1 + np.exp(1 / 1.4826)))
    np.testing.assert_allclose(
        mad_sigmoid(3.0 * r + 7.0, c=1.0), p, rtol=1e-9
    )  # shift / positive scale
    assert np.all(np.diff(p) > 0)  # monotone
    np.testing.assert_allclose(mad_sigmoid(r, c=1.0, temperature=2.0)[0], 1 / (1 + np.exp(1.0)))
    z = zscore_sigmoid(r)
    assert np.all(np.diff(z) > 0) and z[2] < 0.5  # mean pulled up by the outlier


def test_soft_or_forms():
    p = np.array([[0.2, 0.9], [0.6, 0.5], [0.4, 0.1]])  # 3 modules x 2 layers
    g = soft_or(p, axis=0)
    expect0 = 1 - ((0.8 * 0.4 * 0.6) ** (1 / 3))
    assert g[0] == pytest.approx(expect0, rel=1e-9)
    assert np.all(g >= p.min(0) - 1e-12) and np.all(g <= p.max(0) + 1e-12)
    prod = soft_or(p, axis=0, form="product")
    assert prod[0] == pytest.approx(1 - 0.8 * 0.4 * 0.6)
    assert np.all(prod >= p.max(0))


def test_aggregate_per_layer_vs_faithful_scalar():
    raw = {
        "gate": {"nv": [1.0, 2.0, 9.0, 3.0], "se": [5.0, 1.0, 2.0, 3.0]},
        "up": {"nv": [0.0, 0.0, 0.0, 0.0], "se": [1.0, 2.0, 3.0, 8.0]},  # all-zero NV: skipped
    }
    out = aggregate(raw, NSDSOptions())
    assert len(out["scores"]) == 4 and len(set(np.round(out["scores"], 9))) > 1
    assert "nv" not in out["normalized"]["up"]
    nv = out["aspect"]["nv"]
    np.testing.assert_allclose(nv, mad_sigmoid([1.0, 2.0, 9.0, 3.0]))  # one module: identity OR
    faithful = aggregate(raw, options_from({"faithful_to_code": True}))
    assert (
        len(set(faithful["scores"])) == 1
    )  # README defect 1: collapses to one value for every layer
    mean = aggregate(raw, NSDSOptions(aggregate="mean"))
    se_rows = np.stack([mad_sigmoid(raw["gate"]["se"]), mad_sigmoid(raw["up"]["se"])])
    np.testing.assert_allclose(mean["aspect"]["se"], se_rows.mean(0))
    only_nv = aggregate(raw, NSDSOptions(aspects=("nv",)))
    np.testing.assert_allclose(only_nv["scores"], nv)


def test_options_errors():
    with pytest.raises(NSDSInputError, match="soft_or='max'"):
        options_from({"soft_or": "max"})
    with pytest.raises(NSDSInputError, match="bogus"):
        options_from({"bogus": 1})
    assert options_from({"faithful_to_code": True}).mad_c == 1.0
    assert options_from({}).mad_c == 1.4826


# ---- eq. (1) circuits, whole model -----------------------------------------------------------------


def test_head_circuits_gqa_and_head_dim():
    m = micro_llama(n_layers=1, d=32, heads=4, kv=2, head_dim=16)  # d != H * d_h
    geo = model_geometry(m.config)
    assert geo["head_dim"] == 16
    layer = m.model.layers[0]
    circuits = list(head_circuits(layer, geo, 0))
    assert len(circuits) == 4
    wq = layer.self_attn.q_proj.weight.double()
    wk = layer.self_attn.k_proj.weight.double()
    wv = layer.self_attn.v_proj.weight.double()
    wo = layer.self_attn.o_proj.weight.double()
    qk3, ov3 = circuits[3]  # head 3 -> kv group 1
    torch.testing.assert_close(qk3, wq[48:64].T @ wk[16:32])
    torch.testing.assert_close(ov3, wo[:, 48:64] @ wv[16:32])
    assert qk3.shape == (32, 32) and ov3.shape == (32, 32)


def test_nsds_shape_range_determinism_and_no_data():
    m = micro_llama(n_layers=4)

    def no_forward(*a, **k):
        raise AssertionError("NSDS must not run the model")

    m.forward = no_forward
    a = nsds_scores(m)
    b = nsds_scores(micro_llama(n_layers=4))
    assert len(a["scores"]) == 4 and all(0 < s < 1 for s in a["scores"])
    assert a["scores"] == b["scores"]
    assert set(a["raw"]) == {"qk", "ov", "gate", "up", "down"}
    seven = nsds_scores(micro_llama(n_layers=4), options_from({"roles": "seven"}))
    assert len(seven["raw"]) == 7


def test_missing_module_names_it():
    m = micro_llama(n_layers=2)
    del m.model.layers[1].mlp.down_proj
    with pytest.raises(NSDSInputError, match="layer 1 has no mlp.down_proj"):
        nsds_scores(m)


def test_planted_layers_rank_in_top_half():
    m = micro_llama(n_layers=6, seed=3)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = m(input_ids=ids).logits
    plant_outliers(m, layers=[1, 4], alpha=16.0, channels=4, seed=0)
    with torch.no_grad():
        after = m(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)  # function preserved
    s = nsds_scores(m)["scores"]
    top = sorted(range(6), key=lambda i: -s[i])[:3]
    assert {1, 4} <= set(top)
    assert layer_bits(s, 2.0 + 2 * 2 / 6)[1] == 4  # 2 of 6 layers at 4 bits: the planted ones
    assert sorted(i for i, b in enumerate(layer_bits(s, 2.0 + 2 * 2 / 6)) if b == 4) == [1, 4]


# ---- eq. (9) allocation ----------------------------------------------------------------------------


def test_bit_plan_meets_budget():
    s = [0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.4]
    for budget, n4 in ((2.5, 2), (3.0, 4), (3.5, 6), (2.0, 0), (4.0, 8)):
        bits = layer_bits(s, budget)
        assert bits.count(4) == n4 and average_bits(bits) <= budget + 1e-12
    assert layer_bits(s, 3.0) == [
        2,
        4,
        4,
        4,
        2,
        2,
        4,
        2,
    ]  # top-4 by score, descending (README defect 3)
    assert n_high_layers(3, 3.0) == 1  # fractional: floor keeps avg 2.67 <= 3.0
    assert layer_bits([0.5, 0.5, 0.1], 3.0) == [4, 2, 2]  # ties: earlier layer first
    plan = plan_from_bits([2, 4])
    assert len(plan) == 14 and plan["model.layers.1.mlp.down_proj"] == 4
    assert uniform_bits(3, 3.0) == [3, 3, 3]


@pytest.mark.parametrize("budget", [1.5, 4.5, float("nan")])
def test_budget_that_cannot_be_met_names_value(budget):
    with pytest.raises(BudgetError, match=str(budget)):
        layer_bits([0.1, 0.2], budget)


def test_bad_bits_and_uniform_budget():
    with pytest.raises(BudgetError, match="bit width 5"):
        check_bits(5)
    with pytest.raises(BudgetError, match="bit width 6"):
        plan_from_bits([2, 6])
    with pytest.raises(BudgetError, match="2.5"):
        uniform_bits(4, 2.5)


# ---- baselines ----------------------------------------------------------------------------------


def test_baselines_hand_values():
    w = torch.tensor([[-2.0, 0.0, 0.0, 2.0]])
    sd = float(w.std())
    assert baselines.zd_matrix(w) == pytest.approx(0.5 if 2 / sd > 1 else 0.0)
    # symmetric 2-bit: qmax 1, scale = 2 / 2 = 1 -> round(w) clamp to [-1, 1]: error (1^2 + 1^2) = 2
    assert baselines.mse_matrix(w, bits=2) == pytest.approx(2.0)
    h, n = baselines.ewq_matrix(torch.zeros(4), epsilon=0.0)
    assert h == pytest.approx(math.log(4)) and n == 4
    raw = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 9.0, 9.1, 9.2, 9.3]
    boosted = baselines.kurtboost_from_kurtosis(raw)
    assert boosted[6] == 18.0 and boosted[5] == 1.5
    assert baselines.reversed_scores([1.0, 3.0]) == [-1.0, -3.0]
    assert sorted(baselines.random_scores(5, 0)) == [0, 1, 2, 3, 4]
    assert baselines.random_scores(5, 0) == baselines.random_scores(5, 0)


def test_model_baselines_and_lim():
    m = micro_llama(n_layers=3)
    for fn in (baselines.zd, baselines.mse, baselines.ewq, baselines.kurtboost):
        out = fn(m)
        assert len(out) == 3 and all(math.isfinite(v) for v in out)
    ids = torch.randint(0, 96, (4, 10), generator=torch.Generator().manual_seed(0))
    scores = baselines.lim(m, ids, batch_size=2)
    assert len(scores) == 3 and all(0.0 <= s <= 2.0 for s in scores)


# ---- pipeline on a micro artifact (scores -> study -> quantize) ---------------------------------


def test_pipeline_micro(tmp_path):
    import json

    from claimbench.records import load_run_record
    from methods.nsds.cli import main
    from tests.quant_fixtures import SPEC, TEXT, job_args, save_quant_micro, scale_file

    spec = dict(SPEC, num_layers=4)
    import tests.quant_fixtures as qf

    qf.SPEC = spec
    try:
        save_quant_micro(tmp_path / "src")
    finally:
        qf.SPEC = SPEC
    text = tmp_path / "held.jsonl"
    text.write_text(json.dumps({"text": TEXT}) + "\n")
    src, scores = str(tmp_path / "src"), str(tmp_path / "scores")
    nsds = {
        "calib": {"n": 4, "seq_len": 16},
        "study_methods": ["nsds", "zd", "reversed"],
        "study_budgets": [2.5, 3.0],
        "study": {"n_windows": 2, "seq_len": 16},
        "group_size": 16,
        "n_random": 3,
        "backend": "rtn",
    }
    sf = scale_file(tmp_path / "tiny.yaml", nsds=nsds)
    main(["scores", "--model", src, "--methods", "nsds,zd,lim,reversed,nsds_code",
          "--calib", str(tmp_path / "calib.txt"), *job_args("nsds", "micro", scores, sf)])  # fmt: skip
    smeta = json.loads((tmp_path / "scores" / "meta.json").read_text())
    assert smeta["methods"] == ["lim", "nsds", "nsds_code", "reversed", "zd"]
    assert smeta["calibration"]["n"] == 4 and smeta["nsds_options"] == {}
    rec = tmp_path / "alloc.json"
    main(["study", "--model", src, "--scores", scores, "--text", str(text),
          "--details", str(tmp_path / "study.json"), *job_args("nsds", "micro", rec, sf)])  # fmt: skip
    r = load_run_record(rec)
    assert (r["paper"], r["variant"], r["suite"]) == ("nsds", "micro", "alloc")
    assert r["config"]["methods"] == ["nsds", "zd", "reversed"] and r["config"]["n_random"] == 3
    got = {(m["task"], m["metric"]): m["value"] for m in r["metrics"]}
    assert ("nsds", "ppl_b3") in got and ("random_median", "ppl_b2.5") in got
    assert ("uniform", "ppl_b3") in got and ("uniform", "ppl_b2.5") not in got
    # r/d of the unembedding subspace, recorded from the NSDS scores (writing density's reach)
    assert got[("unembed", "rank_ratio")] == got[("unembed", "rank")] / got[("unembed", "dim")]
    assert 0.0 < got[("unembed", "wd_beta_min")] <= got[("unembed", "wd_beta_max")] <= 1 + 1e-9
    details = json.loads((tmp_path / "study.json").read_text())
    assert len(details["oracle_damage"]) == 4
    assert details["alloc"]["3"]["nsds"]["avg_bits"] == 3.0
    assert not (tmp_path / ".study.json.plans.jsonl").exists()  # the checkpoint goes once written
    out = tmp_path / "q"
    main(["quantize", "--model", src, "--scores", scores, "--method", "nsds", "--budget", "3.0",
          "--source", "micro", "--record", str(tmp_path / "plan.json"),
          *job_args("nsds", "micro-nsds-b3", out, sf)])  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "nsds" and meta["allocation"]["bits"].count(4) == 2
    assert meta["allocation"]["backend"] == "rtn" and meta["config"]["method"] == "rtn"
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(set(plan.values())) == [2, 4] and len(plan) == 28
    assert json.loads((out / "layer_scores.json").read_text())["avg_bits_nominal"] == 3.0
    p = load_run_record(tmp_path / "plan.json")
    assert {m["metric"] for m in p["metrics"]} >= {"avg_bits", "file_bytes", "avg_bits_nominal"}
    assert (p["variant"], p["method"], p["suite"]) == ("micro-nsds-b3", "nsds", "plan")
    with pytest.raises(SystemExit):  # a budget the 2/4-bit plan cannot meet: error before work
        main(["quantize", "--model", src, "--scores", scores, "--method", "nsds", "--budget", "4.5",
              "--source", "micro", "--record", str(tmp_path / "bad.json"),
              *job_args("nsds", "x", tmp_path / "bad", sf)])  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_scores_follow_the_job_dtype(tmp_path):
    """--dtype bfloat16: the source loads in bfloat16 and NSDS still scores it (SVDs and
    kurtoses in float64 per matrix), equal to the scores of the same bfloat16 weights."""
    import json

    from methods.nsds.cli import main
    from methods.nsds.methods import score_all
    from tests.quant_fixtures import job_args, save_quant_micro

    model, _ = save_quant_micro(tmp_path / "src")
    out = tmp_path / "scores"
    main(["scores", "--model", str(tmp_path / "src"), "--methods", "nsds,zd",
          *job_args("nsds", "micro", out), "--dtype", "bfloat16"])  # fmt: skip
    assert json.loads((out / "meta.json").read_text())["dtype"] == "bfloat16"
    want = score_all(model.to(torch.bfloat16), ["nsds", "zd"])
    for name in ("nsds", "zd"):
        got = json.loads((out / f"{name}.json").read_text())["scores"]
        assert got == pytest.approx(want[name]["scores"], rel=1e-12)


def test_study_group_size_error_names_value():
    from methods.nsds.study import FakeQuant
    from methods.quant.quantizer import QuantConfigError

    with pytest.raises(QuantConfigError, match="group size 24 does not divide the layer width 32"):
        FakeQuant(micro_llama(n_layers=1), group_size=24)


def test_study_resumes_from_its_checkpoint_with_the_same_numbers(tmp_path, monkeypatch):
    """A study killed part way resumes from the plans on disk, measures only the rest, and gives
    the uninterrupted study's numbers exactly; a checkpoint of another model is not reused."""
    import methods.nsds.study as S

    model = micro_llama(n_layers=4)
    windows = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    scores = {"a": [0.1, 0.9, 0.5, 0.3], "b": [0.9, 0.1, 0.3, 0.5]}
    args = (scores, [2.5, 3.0], 16, 3, 0)
    calls = []
    real = S.window_nll

    def counted(m, w, batch_size=8):
        calls.append(1)
        if fail_after is not None and len(calls) > fail_after:
            raise RuntimeError("killed")
        return real(m, w, batch_size)

    monkeypatch.setattr(S, "window_nll", counted)
    fail_after = None
    full = S.run_study(model, windows, *args)
    n_unique = len(calls)
    ck = tmp_path / "plans.jsonl"
    calls.clear()
    fail_after = 5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="killed"):
        S.run_study(model, windows, *args, checkpoint=ck)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored
    assert len(ck.read_text().splitlines()) == 1 + 5  # header + the five plans measured
    with ck.open("a") as f:
        f.write('{"bits": [2, 2, 4')  # a line cut short by the kill
    calls.clear()
    fail_after = None
    resumed = S.run_study(model, windows, *args, checkpoint=ck)
    assert len(calls) == n_unique - 5
    assert resumed == full
    # another model (same shapes, other weights): the checkpoint is discarded, all plans rerun
    calls.clear()
    S.run_study(micro_llama(n_layers=4, seed=1), windows, *args, checkpoint=ck)
    assert len(calls) == n_unique


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("budgets", [3.0, 4.5], r"papers\.nsds.*budgets.*4\.5"),
        ("study_methods", ["nsds", "hawq"], r"papers\.nsds.*study_methods.*'hawq'"),
        ("backend", "awq", r"papers\.nsds.*backend.*'awq'"),
    ],
)
def test_scale_section_errors_name_key(tmp_path, root, key, value, message):
    import yaml

    from claimbench.config import load_scale
    from claimbench.errors import ConfigError

    data = yaml.safe_load((root / "config/scales/tiny.yaml").read_text())
    data["papers"]["nsds"][key] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_scale("tiny", path)


def test_raw_cache_gives_same_scores():
    from methods.nsds.methods import score_all

    m = micro_llama(n_layers=4, seed=5)
    names = ["nsds", "nsds_nv", "nsds_se", "nsds_mean", "nsds_zscore", "nsds_norole"]
    shared = score_all(m, names)
    for name in names:
        from methods.nsds.methods import NSDS_VARIANTS

        alone = nsds_scores(m, options_from(NSDS_VARIANTS[name]))
        np.testing.assert_allclose(shared[name]["scores"], alone["scores"], rtol=1e-12)


def test_mi_sensitivity_feeds_nsds_scores(tmp_path):
    """The efficiency use case of the MI issue: the MI suite measures per-module zero-ablation ΔNLL
    on a quantization source (its own tokenizer, a text file), NSDS imports it as per-layer scores
    (sum of the layer's modules) that the study and the bit plan read like any other method."""
    import json

    from methods.mi_steer import suite
    from methods.nsds import cli
    from methods.nsds.allocate import layer_bits
    from methods.nsds.methods import score_all
    from tests.quant_fixtures import job_args, save_quant_micro

    art = tmp_path / "micro"
    save_quant_micro(art)
    sens = tmp_path / "ls.json"
    suite.main(
        [
            "sensitivity",
            "--artifact",
            str(art),
            "--data",
            str(tmp_path),
            "--text",
            str(tmp_path / "calib.txt"),
            "--n-neutral",
            "3",
            "--neutral-len",
            "16",
            "--sensitivity",
            str(sens),
            *job_args("mi_steer", "nsds-micro", tmp_path / "runs" / "sensitivity.json"),
        ]
    )
    modules = json.loads(sens.read_text())["modules"]
    scores_dir = tmp_path / "scores"
    cli.main(
        [
            "import-scores",
            "--model",
            str(art),
            "--method",
            "mi",
            "--sensitivity",
            str(sens),
            *job_args("nsds", "micro", scores_dir / "mi.json"),
        ]
    )
    got = cli._read_scores(str(scores_dir), ["mi"])["mi"]
    want = [
        modules[f"model.layers.{i}.self_attn"] + modules[f"model.layers.{i}.mlp"] for i in range(2)
    ]
    assert got == pytest.approx(want)
    assert sorted(layer_bits(got, 3.0)) == [2, 4]
    # mi is never scored from the weights, and a malformed file is refused with its reason
    with pytest.raises(NSDSInputError, match="imported from a file"):
        score_all(LlamaForCausalLM(LlamaConfig(num_hidden_layers=1)), ["mi"])
    with pytest.raises(NSDSInputError, match="no sensitivity for layer"):
        cli.layer_scores_from_sensitivity(
            {"format": "claimbench.layer_sensitivity/1", "modules": {"model.layers.0.mlp": 1.0}}, 2
        )
    with pytest.raises(NSDSInputError, match="out of range"):
        cli.layer_scores_from_sensitivity(
            {"format": "claimbench.layer_sensitivity/1", "modules": {"model.layers.5.mlp": 1.0}}, 2
        )
    with pytest.raises(NSDSInputError, match="format"):
        cli.layer_scores_from_sensitivity({"modules": {}}, 2)
    with pytest.raises(SystemExit):
        cli.main(
            [
                "import-scores",
                "--model",
                str(art),
                "--method",
                "nsds",
                "--sensitivity",
                str(sens),
                *job_args("nsds", "micro", tmp_path / "x.json"),
            ]
        )


def test_spearman_of_constant_scores_is_zero_not_nan():
    """The released code's scores on SmolLM2 are thirty copies of one value; their float std is
    2.2e-16, not 0, and scipy then returns nan (which the run record refuses)."""
    from claimbench.stats import spearman

    flat = np.full(30, 0.8095634190082736)
    assert np.std(flat) != 0  # the case that used to slip through
    damage = np.arange(30, dtype=float)
    assert spearman(flat, damage) == 0.0
    assert spearman(damage, flat) == 0.0
    assert spearman(damage, damage[::-1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], [1, 2])


def test_factor_svd_gives_the_full_svds_scores():
    """A head circuit's SE score from its rank-r factors equals the full SVD's (all roles)."""
    from methods.nsds.scores import NSDSOptions, factor_svd, se_score

    g = torch.Generator().manual_seed(0)
    d, r = 96, 8
    a = torch.randn(d, r, generator=g, dtype=torch.float64)
    b = torch.randn(d, r, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, r)
    w = a @ b.T
    u, s, vh = factor_svd(a, b)
    assert torch.allclose((u * s) @ vh, w, atol=1e-10)
    assert torch.allclose(s, torch.linalg.svdvals(w)[:r], rtol=1e-10)
    p_u = torch.linalg.qr(torch.randn(d, 12, generator=g, dtype=torch.float64))[0]
    opts = NSDSOptions()
    for role in ("qk", "ov"):
        full = se_score(w, role, opts, p_u)
        fast = se_score(w, role, opts, p_u, factors=(a, b))
        assert fast == pytest.approx(full, rel=1e-8), role


# ---- writing density's reach: r/d of the unembedding subspace -----------------------------------


def test_unembed_rank_ratio_and_writing_density_spread():
    """Full-rank W_U at energy 1: r/d = 1 and ‖Pᵀu‖ = 1 for every writer direction (β_WD ≡ 1
    carries nothing); a rank-3 W_U: r/d = 4/32 and the β_WD spread below 1."""
    m = micro_llama(n_layers=3)
    full = nsds_scores(m, NSDSOptions(energy=1.0))["unembed"]
    assert (full["rank"], full["dim"], full["rank_ratio"], full["tied"]) == (32, 32, 1.0, False)
    assert full["wd_beta_min"] == pytest.approx(1.0, abs=1e-9)
    assert full["wd_beta_max"] == pytest.approx(1.0, abs=1e-9)
    # OV circuits (3 layers x 4 heads) and down_proj (3) each contribute their kept directions
    assert full["wd_beta_n"] > 3 * 4 * 2
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.lm_head.weight.copy_(torch.randn(96, 3, generator=g) @ torch.randn(3, 32, generator=g))
    low = nsds_scores(m, NSDSOptions(energy=1.0))["unembed"]
    # energy_rank keeps one direction past the energy threshold: 3 + 1 of 32
    assert (low["rank"], low["rank_ratio"]) == (4, 4 / 32)
    assert low["wd_beta_max"] < 1.0 and low["wd_beta_min"] < low["wd_beta_mean"]
    # beta == 1 (no role reweighting): r/d is still recorded, no writing-density weights
    plain = nsds_scores(m, NSDSOptions(role_reweighting=False))["unembed"]
    assert plain["wd_beta_n"] == 0 and plain["wd_beta_mean"] is None


# ---- the random control's packed draws ------------------------------------------------------------


def test_random_draws_rank_with_their_own_seed_and_summarise(tmp_path):
    """Draw 0 is the scores folder's random ranking; draw k ranks with seed + k (same GPTQ
    calibration); ``draws`` summarises the draws' records (median, min, max, spread)."""
    import json

    import tests.quant_fixtures as qf
    from claimbench.records import load_run_record
    from methods.nsds.cli import main
    from tests.quant_fixtures import SPEC, job_args, save_quant_micro, scale_file

    qf.SPEC = dict(SPEC, num_layers=6)  # 6 layers, 3 at 4 bits: 20 possible plans
    try:
        save_quant_micro(tmp_path / "src")
    finally:
        qf.SPEC = SPEC
    src, scores = str(tmp_path / "src"), str(tmp_path / "scores")
    sf = scale_file(tmp_path / "tiny.yaml", nsds={"group_size": 16, "backend": "rtn"})
    main(["scores", "--model", src, "--methods", "random", *job_args("nsds", "m", scores, sf)])
    bits, recs = [], []
    for k in range(3):
        out, rec = tmp_path / f"d{k}", tmp_path / f"d{k}.json"
        main(["quantize", "--model", src, "--scores", scores, "--method", "random",
              "--budget", "3.0", "--source", "m", "--record", str(rec),
              *(["--draw", str(k)] if k else []), *job_args("nsds", f"m-r{k}", out, sf)])  # fmt: skip
        bits.append(json.loads((out / "layer_scores.json").read_text())["bits"])
        recs.append(str(rec))
    seed = load_run_record(recs[0])["seed"]
    want0 = layer_bits(json.loads((tmp_path / "scores" / "random.json").read_text())["scores"], 3.0)
    assert bits[0] == want0
    for k in (1, 2):
        assert bits[k] == layer_bits(baselines.random_scores(len(bits[0]), seed + k), 3.0)
        assert load_run_record(recs[k])["config"]["random_seed"] == seed + k
    assert len({tuple(b) for b in bits}) > 1  # the draws are different plans
    with pytest.raises(SystemExit) as e:  # a draw of a method that is not random: user error
        main(["quantize", "--model", src, "--scores", scores, "--method", "nsds", "--budget",
              "3.0", "--source", "m", "--record", str(tmp_path / "bad.json"), "--draw", "1",
              *job_args("nsds", "bad", tmp_path / "bad", sf)])  # fmt: skip
    assert e.value.code == 2 and not (tmp_path / "bad").exists()
    summary = tmp_path / "draws.json"
    main(["draws", "--records", ",".join(recs), *job_args("nsds", "m-draws", summary, sf)])
    r = load_run_record(summary)
    got = {(m["task"], m["metric"]): m for m in r["metrics"]}
    sizes = [load_run_record(p) for p in recs]
    fb = sorted(
        next(m["value"] for m in x["metrics"] if m["metric"] == "file_bytes") for x in sizes
    )
    assert got[("size", "file_bytes_median")]["value"] == fb[1]
    assert got[("size", "file_bytes_spread")]["value"] == fb[2] - fb[0]
    assert got[("size", "file_bytes_min")]["n"] == 3 and r["suite"] == "random_draws"


def test_draws_summary_hand_values():
    def rec(v, extra=None):
        ms = [{"task": "t", "metric": "bpb", "value": v, "higher_is_better": False}]
        return {"metrics": ms + ([extra] if extra else [])}

    only_one = {"task": "t", "metric": "acc", "value": 1.0, "higher_is_better": True}
    rows = draws_summary([rec(3.0, only_one), rec(1.0), rec(2.5), rec(10.0), rec(2.0)])
    got = {r["metric"]: r["value"] for r in rows}
    assert got == {"bpb_median": 2.5, "bpb_min": 1.0, "bpb_max": 10.0, "bpb_spread": 9.0}
    assert all(r["n"] == 5 for r in rows)
