"""Flexible Realignment (TrRa, InRa, DeRa): exact unit tests of the README's equations, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from methods.posttrain.tokens import encode_pairs, shifted_logits
from methods.realign.decode import mixed_greedy, single_greedy
from methods.realign.fusion import (
    check_lambda,
    fused_logits,
    fused_teacher,
    trra_loss,
    trra_loss_code_faithful,
    trra_token_kl,
)
from methods.realign.inra import (
    AdapterPaths,
    check_adapter,
    expand_with_adapter,
    freeze_all_but_adapter,
)
from methods.realign.metrics import monotone_violations, token_reduction
from methods.realign.train import TrRaObjective
from tests.posttrain_fixtures import problems, save_micro_model


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return save_micro_model(tmp_path_factory.mktemp("realign") / "ref", seed=3)


def test_fused_teacher_at_zero_and_one_is_ref_and_aligned_exactly():
    torch.manual_seed(0)
    z_a, z_r = torch.randn(3, 7, 11) * 5, torch.randn(3, 7, 11) * 5
    assert torch.equal(fused_logits(z_a, z_r, 0.0), z_r)
    assert torch.equal(fused_logits(z_a, z_r, 1.0), z_a)
    assert torch.equal(fused_teacher(z_a, z_r, 0.0), torch.softmax(z_r, -1))
    assert torch.equal(fused_teacher(z_a, z_r, 1.0), torch.softmax(z_a, -1))
    # extrapolation lambda = 2: 2 z_A - z_ref
    assert torch.allclose(fused_logits(z_a, z_r, 2.0), 2 * z_a - z_r)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "two", None])
def test_lambda_making_the_teacher_undefined_is_named(bad):
    with pytest.raises(ValueError, match="lambda"):
        fused_logits(torch.zeros(2, 3), torch.zeros(2, 3), bad)


def test_overflowing_lambda_is_named():
    z = torch.full((2, 3), 3e38)
    with pytest.raises(ValueError, match="lambda=1e\\+30"):
        fused_logits(z, -z, 1e30)


def test_kl_direction_flag():
    torch.manual_seed(1)
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    p, q = torch.softmax(s, -1), torch.softmax(t, -1)
    fwd = (q * (q.log() - p.log())).sum(-1)  # KL(q || p_theta)
    rev = (p * (p.log() - q.log())).sum(-1)  # KL(p_theta || q)
    assert torch.allclose(trra_token_kl(s, t, "forward"), fwd, atol=1e-6)
    assert torch.allclose(trra_token_kl(s, t, "reverse"), rev, atol=1e-6)
    assert not torch.allclose(fwd, rev)
    with pytest.raises(ValueError, match="sideways"):
        trra_token_kl(s, t, "sideways")


def test_response_only_mask():
    torch.manual_seed(2)
    s, t = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.float32)
    base = trra_loss(s, t, mask)
    s2, t2 = s.clone(), t.clone()
    s2[mask == 0] = torch.randn_like(s2[mask == 0]) * 10  # prompt / padding positions
    t2[mask == 0] = torch.randn_like(t2[mask == 0]) * 10
    assert torch.allclose(trra_loss(s2, t2, mask), base)
    per = trra_token_kl(s, t, "forward")
    assert torch.allclose(base, (per * mask).sum() / mask.sum())


def test_code_faithful_reproduces_the_repo_formula():
    torch.manual_seed(3)
    s, t = torch.randn(1, 6, 5), torch.randn(1, 6, 5)
    # the released compute_preference_loss_1 with beta-fused target logits, T = 1
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    want = kl(torch.log_softmax(s, dim=1)[0], torch.softmax(t, dim=1)[0])
    got = trra_loss_code_faithful(s, t)
    assert torch.equal(got, want)
    # by hand: softmax over positions, sum of p (log p - log q) over everything, / seq_len
    p, q = torch.softmax(t[0], 0), torch.softmax(s[0], 0)
    assert torch.allclose(got, (p * (p.log() - q.log())).sum() / 6)
    # and it differs from the vocabulary-axis KL
    assert not torch.allclose(got, trra_loss(s, t, torch.ones(1, 6)))


def test_trra_objective_zero_at_lambda_zero_from_the_reference(micro, tmp_path):
    model, tok = micro
    ps = problems(4)
    batch = encode_pairs(tok, [p["prompt"] for p in ps], [" " + p["long"] + "\n" for p in ps])
    other = save_micro_model(tmp_path / "other", seed=9, tok=tok)[0]
    obj = TrRaObjective(model, other, 0.0)
    loss, _ = obj.loss(shifted_logits(model, batch), batch, obj.snapshot(model, batch))
    assert abs(float(loss.detach())) < 1e-6
    obj = TrRaObjective(model, other, 1.0)
    loss, _ = obj.loss(shifted_logits(model, batch), batch, obj.snapshot(model, batch))
    assert float(loss.detach()) > 1e-4


def test_token_reduction_paper_rule():
    # Table 1, TrRa lambda = 0.5 vs R1-Distill-1.5B: 17.42 %
    ref = {"aime24": 12602, "aime25": 12278, "math500": 4699}
    v = {"aime24": 10678, "aime25": 10254, "math500": 3734}
    assert abs(token_reduction(v, ref) - 17.42) < 0.015  # the paper's lengths are rounded
    with pytest.raises(ValueError, match="math500"):
        token_reduction({"aime24": 1, "aime25": 1}, ref)
    assert monotone_violations([10, 8, 9, 5]) == (1, 0.125)


def test_inra_expanded_equals_reference_before_training(micro):
    ref, tok = micro
    ex = expand_with_adapter(ref)
    assert len(ex.model.layers) == len(ref.model.layers) + 1
    check_adapter(ref, ex)
    enc = tok(
        [p["prompt"] + " " + p["long"] for p in problems(6)], return_tensors="pt", padding=True
    )
    diff = (ex(**enc).logits - ref(**enc).logits).abs().max()
    assert float(diff.detach()) < 1e-5
    assert torch.count_nonzero(ex.model.layers[0].self_attn.o_proj.weight) == 0
    assert torch.count_nonzero(ex.model.layers[0].mlp.down_proj.weight) == 0
    n = freeze_all_but_adapter(ex)
    assert n == sum(p.numel() for p in ex.model.layers[0].parameters())
    assert all(not p.requires_grad for p in ex.model.layers[1].parameters())


def test_inra_dual_path_lambda_zero_is_the_reference_token_for_token(micro):
    ref, tok = micro
    ex = expand_with_adapter(ref)
    prompts = [p["prompt"] for p in problems(8, seed=5)]
    want = single_greedy(ref, tok, prompts, max_new_tokens=12)
    paths = AdapterPaths(ex)
    u, a = (ex, lambda: paths.path("U")), (ex, lambda: paths.path("A"))
    # before training every lambda decodes the reference
    for lam in (-0.25, 0.0, 0.5, 1.0):
        got = mixed_greedy(u, a, lam, tok, prompts, max_new_tokens=12)
        assert got.texts == want.texts and got.n_tokens == want.n_tokens
    with torch.no_grad():  # a "trained" adapter: lambda = 0 must still be the reference
        gen = torch.Generator().manual_seed(0)
        for p in ex.model.layers[0].parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    got0 = mixed_greedy(u, a, 0.0, tok, prompts, max_new_tokens=12)
    assert got0.texts == want.texts and got0.n_tokens == want.n_tokens
    paths.path("A")
    path_a = single_greedy(ex, tok, prompts, max_new_tokens=12)
    got1 = mixed_greedy(u, a, 1.0, tok, prompts, max_new_tokens=12)
    assert got1.texts == path_a.texts
    assert path_a.texts != want.texts  # the adapter does change the A path
    paths.close()


def test_inra_adapter_shape_mismatch_is_named(micro, tmp_path):
    ref, tok = micro
    ex = expand_with_adapter(ref)
    with torch.no_grad():
        ex.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(torch.zeros(7, 16))
    with pytest.raises(
        ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight has shape \(7, 16\)"
    ):
        check_adapter(ref, ex)
    with pytest.raises(ValueError, match="layers"):
        check_adapter(ref, ref)


def test_check_lambda_accepts_negative_values():
    assert check_lambda("-0.25") == -0.25 and math.isclose(check_lambda(2), 2.0)


def test_dera_mixed_decoding_matches_each_model_at_the_ends(micro, tmp_path):
    ref, tok = micro
    other, _ = save_micro_model(tmp_path / "other", seed=11, tok=tok)
    prompts = [p["prompt"] for p in problems(6, seed=7)]
    for lam, m in ((0.0, ref), (1.0, other)):
        got = mixed_greedy((ref, None), (other, None), lam, tok, prompts, max_new_tokens=10)
        want = single_greedy(m, tok, prompts, max_new_tokens=10)
        assert got.texts == want.texts


def test_pipeline_on_a_micro_config(tmp_path, capsys):
    """ref -> aligned (SFT, no check block) -> TrRa / DeRa / InRa -> sweep, through the CLIs."""
    import json

    from claimbench.records import load_run_record
    from methods.realign import evaluate, sweep, train
    from tests.posttrain_fixtures import scale_file, write_problems

    save_micro_model(tmp_path / "ref", seed=0)
    rows = problems(48, seed=1)
    tr = str(write_problems(tmp_path / "train.jsonl", rows))
    te = str(write_problems(tmp_path / "test.jsonl", problems(6, seed=2)))
    steps = {"steps": 2, "minibatch": 4, "lr": 1e-3}
    section = {
        "families": ["add", "sub"],
        "aligned_sft": {"form": "nocheck", **steps},
        "trra": {"lambdas": [2.0], **steps},
        "dera_lambdas": [0, 2],
        "inra": {"lambdas": [-0.5, 1], "form": "short", **steps},
        "decode": {"max_new_tokens": 6, "batch_size": 8},
    }
    sf = str(scale_file(tmp_path / "scale.yaml", "realign", section))
    job = ["--scale", "tiny", "--paper", "realign", "--scale-file", sf]
    ref, al = str(tmp_path / "ref"), str(tmp_path / "aligned")
    runs = tmp_path / "runs"
    ref_rec = ["--ref-record", str(runs / "ref.json")]
    evaluate.main(["single", *job, "--variant", "ref", "--model", ref, "--test", te,
                   "--out", str(runs / "ref.json")])  # fmt: skip
    train.main(["sft", *job, "--variant", "aligned", "--ref", ref, "--train", tr, "--out", al,
                "--record", str(runs / "al.train.json")])  # fmt: skip
    for mode in ("vocab", "code_faithful"):
        train.main(["trra", *job, "--variant", "trra-lam2", "--ref", ref, "--aligned", al,
                    "--lam=2", "--mode", mode, "--train", tr, "--test", te,
                    "--out", str(tmp_path / mode), "--record", str(runs / f"{mode}.train.json"),
                    "--decode-out", str(runs / f"trra-{mode}.json"), *ref_rec])  # fmt: skip
    evaluate.main(["dera", *job, "--variant", "dera", "--ref", ref, "--aligned", al,
                   "--test", te, "--out", str(runs), *ref_rec])  # fmt: skip
    train.main(["inra", *job, "--variant", "inra", "--ref", ref, "--train", tr, "--test", te,
                "--out", str(tmp_path / "inra"), "--record", str(runs / "inra.train.json"),
                "--runs", str(runs), *ref_rec])  # fmt: skip
    # one decode record per lambda of dera_lambdas, of inra.lambdas and 0
    dec = [f"{v}/realign_decode.json" for v in ("dera-lam0", "dera-lam2")]
    dec += [f"inra-lam{x}/realign_decode.json" for x in ("-0.5", "0", "1")]
    recs = [str(runs / f) for f in ["trra-vocab.json", *dec]]
    sweep.main([*job, "--variant", "sweep", "--records", ",".join(recs),
                "--out", str(runs / "sweep.json")])  # fmt: skip

    def val(path, name, task="all"):
        rec = load_run_record(path)
        return next(m["value"] for m in rec["metrics"] if m["task"] == task and m["metric"] == name)

    inra0 = runs / "inra-lam0" / "realign_decode.json"
    assert val(inra0, "identical_to_ref") == 1.0  # lambda = 0 after training
    assert load_run_record(inra0)["variant"] == "inra-lam0"
    samples = inra0.with_suffix(".samples.jsonl")
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    # the store's integer doc ids: each problem's line in the test file, under task "all"
    lines = [json.loads(x)["id"] for x in open(te, encoding="utf-8") if x.strip()]
    assert [(r["task"], r["doc_id"]) for r in rows] == [
        ("all", lines.index(r["doc_hash"])) for r in rows
    ]
    assert len(rows) == 6 and {r["family"] for r in rows} <= {"add", "sub"}
    assert val(runs / "inra.train.json", "init_max_abs_logit_diff", "identity") < 1e-5
    dera0 = runs / "dera-lam0" / "realign_decode.json"
    assert val(dera0, "token_reduction") == 0.0  # DeRa lambda = 0 is the reference
    assert load_run_record(dera0)["config"]["lambda"] == 0.0
    assert (tmp_path / "inra" / "meta.json").is_file() and (
        tmp_path / "vocab" / "meta.json"
    ).is_file()
    meta = json.loads((tmp_path / "vocab" / "meta.json").read_text())
    assert (meta["name"], meta["paper"], meta["method"]) == ("trra-lam2", "realign", "trra")
    assert meta["config"]["lambda"] == 2.0 and meta["config"]["warmup_steps"] == 0  # schema
    names = {s["name"] for s in load_run_record(runs / "sweep.json")["series"]}
    assert "InRa: mean output tokens vs lambda" in names and "DeRa: exact match vs lambda" in names
    # bad input: an undefined fused teacher is named on the command line
    with pytest.raises(SystemExit):
        train.main(["trra", *job, "--variant", "bad", "--ref", ref, "--aligned", al,
                    "--lam=nan", "--train", tr, "--test", te, "--out", str(tmp_path / "bad"),
                    "--record", str(runs / "bad.json"),
                    "--decode-out", str(runs / "bad_d.json")])  # fmt: skip
    assert "lambda=nan" in capsys.readouterr().err.replace("'", "")


def test_sweep_averages_trra_seeds():
    """The TrRa lambda sweep reads the mean over seeds of each lambda (trra-lam2, trra-lam2-s1)."""
    from methods.realign.sweep import build

    def rec(variant, lam, tokens, em):
        return {
            "variant": variant,
            "method": "trra",
            "config": {"lambda": lam},
            "metrics": [
                {"task": "all", "metric": "mean_output_tokens", "value": tokens},
                {"task": "all", "metric": "exact_match", "value": em},
            ],
        }

    recs = [
        rec("trra-lam1", 1.0, 40.0, 0.8),
        rec("trra-lam1-s1", 1.0, 30.0, 0.6),
        rec("trra-lam2", 2.0, 36.0, 0.7),
        rec("trra-lam2-s1", 2.0, 36.0, 0.5),
    ]
    metrics, curves = build(recs)
    vals = {(m["task"], m["metric"]): m["value"] for m in metrics}
    # means: lambda 1 -> 35 tokens, lambda 2 -> 36 tokens: one increase of 1/35
    assert vals[("trra_sweep", "seeds")] == 2
    assert vals[("trra_sweep", "length_increases")] == 1
    assert vals[("trra_sweep", "max_relative_length_increase")] == pytest.approx(1 / 35)
    em = next(c for c in curves if c["name"] == "TrRa: exact match vs lambda")
    assert em["y"] == pytest.approx([0.7, 0.6]) and "mean of 2 seeds" in em["y_label"]


def test_decode_samples_pair_by_document_under_the_metrics_task():
    """Per-document rows carry the task the claims' metric names ("all", whose hash the
    record holds), keyed by the problem's line in the test file: two decodings of different
    family subsets of one file share the doc ids of their common problems, and the rows'
    mean is the stored exact match (what the paired check requires)."""
    from methods.realign.decode import Decoded
    from methods.realign.evaluate import score

    probs = [
        {"id": f"p{i}", "family": fam, "prompt": f"Q{i}", "answer": i}
        for i, fam in enumerate(["add", "mul", "sub", "add", "sub"])
    ]
    lines = {p["id"]: i for i, p in enumerate(probs)}

    def run(subset, texts):
        dec = Decoded(texts, [3] * len(texts), [False] * len(texts))
        return score(subset, dec, lines)

    texts = [f"the answer is {p['answer'] if i % 2 else 99}" for i, p in enumerate(probs)]
    metrics, _, rows = run(probs, texts)
    assert {r["task"] for r in rows} == {"all"}
    assert [r["doc_id"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["family"] for r in rows] == ["add", "mul", "sub", "add", "sub"]
    em = next(m for m in metrics if (m["task"], m["metric"]) == ("all", "exact_match"))
    per_doc = [r["metrics"]["exact_match"] for r in rows]
    assert per_doc == [0.0, 1.0, 0.0, 1.0, 0.0] and em["value"] == sum(per_doc) / 5
    assert em["n"] == len(rows)
    tokens = next(m for m in metrics if (m["task"], m["metric"]) == ("all", "mean_output_tokens"))
    assert tokens["value"] == sum(r["metrics"]["mean_output_tokens"] for r in rows) / 5
    addsub = [p for p in probs if p["family"] != "mul"]
    _, _, sub_rows = run(addsub, texts[:4])
    assert [r["doc_id"] for r in sub_rows] == [0, 2, 3, 4]  # lines, not positions
    assert [r["family"] for r in sub_rows] == ["add", "sub", "add", "sub"]
