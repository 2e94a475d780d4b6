"""G-OPD's exact unit tests (U1-U4 of methods/gopd/README.md) on hand-made tensors, and micro
pipeline runs of the entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from methods.gopd.objective import check_lambda, gopd_advantage, gopd_loss, route_teacher

ROOT = Path(__file__).resolve().parents[1]


def _scale(tmp_path: Path, **gopd) -> Path:
    """The tiny scale file with ``papers.gopd`` keys replaced (micro settings for micro models)."""
    data = yaml.safe_load((ROOT / "config/scales/tiny.yaml").read_text())
    data["papers"]["gopd"].update(gopd)
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _job(scale: Path, variant: str, out: Path) -> list[str]:
    return [
        *["--scale", "tiny", "--scale-file", str(scale), "--paper", "gopd"],
        *["--variant", variant, "--out", str(out), "--threads", "1"],
    ]


def test_u1_lambda_one_ignores_the_reference():
    torch.manual_seed(0)
    t, old = torch.randn(2, 5), torch.randn(2, 5)
    a = gopd_advantage(t, old, torch.randn(2, 5), 1.0)
    b = gopd_advantage(t, old, torch.randn(2, 5), 1.0)
    assert torch.equal(a, b) and torch.equal(a, gopd_advantage(t, old, None, 1.0))
    # any other lambda depends on it
    assert not torch.allclose(
        gopd_advantage(t, old, torch.zeros(2, 5), 1.25),
        gopd_advantage(t, old, torch.ones(2, 5), 1.25),
    )


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 1.25, 1.5])
def test_u2_expected_update_is_kl_gradient_to_the_mixture(lam):
    torch.manual_seed(1)
    V = 6
    z = torch.randn(V, dtype=torch.float64, requires_grad=True)
    z_t, z_r = torch.randn(V, dtype=torch.float64), torch.randn(V, dtype=torch.float64)
    lp = torch.log_softmax(z, -1)
    p = lp.exp().detach()
    lp_t, lp_r = torch.log_softmax(z_t, -1), torch.log_softmax(z_r, -1)
    adv = gopd_advantage(lp_t, lp.detach(), lp_r, lam)
    # exact expectation over y ~ pi_theta of A(y) * grad log pi_theta(y)
    (g_pg,) = torch.autograd.grad((p * adv * lp).sum(), z)
    q = torch.log_softmax(lam * z_t + (1 - lam) * z_r, -1)  # renormalised lambda-mixture
    lp2 = torch.log_softmax(z, -1)
    kl = (lp2.exp() * (lp2 - q)).sum()
    (g_kl,) = torch.autograd.grad(kl, z)
    assert torch.allclose(g_pg, -g_kl, atol=1e-5)


def test_u3_bandit_converges_to_geometric_mixture():
    gen = torch.Generator().manual_seed(0)
    V, lam = 5, 1.25
    lp_t = torch.log_softmax(torch.tensor([2.0, 1.0, 0.0, -0.5, 0.5]), -1)
    lp_r = torch.log_softmax(torch.tensor([0.0, 1.5, 0.5, 0.0, -1.0]), -1)
    target = torch.softmax(lam * lp_t + (1 - lam) * lp_r, -1)
    z = torch.zeros(V, requires_grad=True)
    opt = torch.optim.SGD([z], lr=2.0)
    for _ in range(300):  # SGD lr 2.0, 2048 samples per step
        lp = torch.log_softmax(z, -1)
        y = torch.multinomial(lp.exp().detach(), 2048, replacement=True, generator=gen)
        adv = gopd_advantage(lp_t[y], lp.detach()[y], lp_r[y], lam)
        loss = gopd_loss(lp[y], adv, torch.ones(len(y)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    tv = 0.5 * (torch.softmax(z, -1).detach() - target).abs().sum()
    assert tv < 1e-2, tv


def test_u4_multi_teacher_routing():
    lps = {"add": torch.zeros(3, 4), "sub": torch.ones(3, 4)}
    out = route_teacher(lps, ["sub", "add", "sub"])
    assert out[:, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="no teacher named"):
        route_teacher(lps, ["mul", "add", "add"])


@pytest.mark.parametrize("lam", [-0.5, 5.0, float("nan"), float("inf")])
def test_bad_lambda(lam):
    with pytest.raises(ValueError, match="lambda"):
        check_lambda(lam)


def test_missing_reference_is_an_error():
    with pytest.raises(ValueError, match="needs a reference"):
        gopd_advantage(torch.zeros(1), torch.zeros(1), None, 1.25)


def test_loss_masks_and_stops_gradient():
    lp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    adv = torch.tensor([[2.0, 5.0, 1.0]], requires_grad=True)
    loss = gopd_loss(lp, adv, torch.tensor([[1.0, 0.0, 1.0]]))
    loss.backward()
    assert lp.grad.tolist() == [[-1.0, 0.0, -0.5]] and adv.grad is None


def test_micro_gopd_pipeline_and_bad_inputs(tmp_path):
    import json

    from claimbench.records import load_run_record
    from methods.gopd.train import main
    from methods.posttrain.cli import main as posttrain_main
    from tests.posttrain_fixtures import problems, save_micro_model, write_problems

    _, tok = save_micro_model(tmp_path / "student")
    save_micro_model(tmp_path / "ref", seed=2, tok=tok)
    tr = write_problems(tmp_path / "train.jsonl", problems(32))
    va = write_problems(tmp_path / "valid.jsonl", problems(8, seed=1))
    # the teacher: GRPO from the student via the shared layer's CLI
    g = {"steps": 2, "prompts_per_step": 2, "n": 4, "lr": 1e-3, "max_new_tokens": 4}
    cfg = {"steps": 2, "prompts_per_step": 4, "lr": 1e-3, "max_new_tokens": 4}
    scale = _scale(tmp_path, teacher_grpo=g, train=cfg)
    posttrain_main(
        [
            "grpo",
            *_job(scale, "teacher", tmp_path / "teacher"),
            *["--settings", "teacher_grpo", "--start", str(tmp_path / "student")],
            *["--train", str(tr), "--valid", str(va), "--record", str(tmp_path / "teacher.json")],
        ]
    )
    teacher_rec = load_run_record(tmp_path / "teacher.json")
    assert teacher_rec["series"]
    # its validation accuracy says which file it was measured on, like every other arm's
    assert set(teacher_rec["task_hashes"]) == {"train", "valid"}
    common = [
        "--student",
        str(tmp_path / "student"),
        "--train",
        str(tr),
        "--valid",
        str(va),
        "--teacher",
        str(tmp_path / "teacher"),
    ]
    main(
        [
            *_job(scale, "exopd", tmp_path / "ex"),
            *common,
            "--ref",
            str(tmp_path / "ref"),
            "--lam",
            "1.25",
            "--record",
            str(tmp_path / "ex.json"),
        ]
    )
    rec = load_run_record(tmp_path / "ex.json")
    assert rec["config"]["lambda"] == 1.25
    # the run's settings are the scale's papers.gopd.train, with the schema's defaults
    assert {k: rec["config"][k] for k in cfg} == cfg
    assert (rec["config"]["n"], rec["config"]["temperature"]) == (1, 1.0)
    assert any(s["name"].startswith("implicit reward") for s in rec["series"])
    # validation exact match per document, beside the record, keyed by the problem's line
    from claimbench.records import iter_samples
    from methods.gopd.train import greedy_scores
    from methods.posttrain.loops import greedy_accuracy
    from methods.posttrain.models import load_model
    from methods.posttrain.rewards import load_problems

    rows = [r for r in iter_samples(tmp_path / "ex.json", rec) if r["task"] == "valid"]
    ids = [json.loads(x)["id"] for x in va.read_text().splitlines() if x.strip()]
    assert sorted(r["doc_id"] for r in rows) == list(range(len(ids)))
    assert all(ids[r["doc_id"]] == r["doc_hash"] for r in rows)
    em = next(
        m for m in rec["metrics"] if (m["task"], m["metric"]) == ("valid", "greedy_exact_match")
    )
    assert em["n"] == len(rows) and em["value"] == sum(
        r["metrics"]["greedy_exact_match"] for r in rows
    ) / len(rows)
    # the same numbers as the shared layer's greedy accuracy
    model, mtok = load_model(tmp_path / "ex")
    probs = load_problems(va)
    got, per_doc = greedy_scores(model, mtok, probs, 4, batch=3)
    assert got == greedy_accuracy(model, mtok, probs, 4, batch=3)
    assert [p["id"] for p, _, _ in per_doc] == ids
    meta = json.loads((tmp_path / "ex" / "meta.json").read_text())
    assert (meta["name"], meta["paper"], meta["scale"], meta["seed"]) == (
        "exopd",
        "gopd",
        "tiny",
        0,
    )
    for bad in (
        ["--lam", "1.25"],
        ["--lam", "-1", "--ref", str(tmp_path / "ref")],
    ):  # no ref; bad lambda
        with pytest.raises(SystemExit):
            main(
                [
                    *_job(scale, "x", tmp_path / "x"),
                    *common,
                    *bad,
                    "--record",
                    str(tmp_path / "x.json"),
                ]
            )


def test_expo_weights_extrapolate_from_the_teacher_mean():
    from methods.gopd.baselines import expo_weights

    s = {"w": torch.tensor([1.0, 2.0]), "step": torch.tensor([3])}
    t1 = {"w": torch.tensor([2.0, 2.0]), "step": torch.tensor([7])}
    t2 = {"w": torch.tensor([4.0, 0.0]), "step": torch.tensor([9])}
    # one teacher: theta_T + alpha (theta_T - theta_S)
    assert expo_weights(s, [t1], 0.5)["w"].tolist() == [2.5, 2.0]
    assert expo_weights(s, [t1], 0.0)["w"].tolist() == [2.0, 2.0]
    # two teachers: their mean (3, 1) is the anchor
    assert expo_weights(s, [t1, t2], 0.25)["w"].tolist() == [3.5, 0.75]
    assert expo_weights(s, [t1], 0.5)["step"].tolist() == [3]  # integer buffers untouched
    with pytest.raises(ValueError, match="shape"):
        expo_weights(s, [{"w": torch.zeros(3), "step": torch.tensor([1])}], 0.5)
    with pytest.raises(ValueError, match="alpha"):
        expo_weights(s, [t1], -0.1)


def test_micro_baselines_multi_teacher_and_reward_correction(tmp_path):
    """SFT on routed teacher samples, multi-teacher G-OPD with per-domain metrics, ExPO and a
    reference other than the student (reward correction), on micro models."""
    import json

    from claimbench.records import iter_samples, load_run_record
    from methods.gopd import baselines
    from methods.gopd.expo import main as expo_main
    from methods.gopd.train import main
    from methods.posttrain.models import load_model
    from tests.posttrain_fixtures import problems, save_micro_model, write_problems

    _, tok = save_micro_model(tmp_path / "student")
    save_micro_model(tmp_path / "ta", seed=3, tok=tok)
    save_micro_model(tmp_path / "tb", seed=4, tok=tok)
    save_micro_model(tmp_path / "tbase", seed=5, tok=tok)
    tr = write_problems(tmp_path / "train.jsonl", problems(32))
    va = write_problems(tmp_path / "valid.jsonl", problems(8, seed=1))
    doms = {"a": ["add"], "s": ["sub"]}
    cfg = {"steps": 2, "prompts_per_step": 4, "lr": 1e-3, "max_new_tokens": 4}
    g = {"steps": 2, "prompts_per_step": 2, "n": 4, "lr": 1e-3, "max_new_tokens": 4}
    scale = _scale(
        tmp_path,
        train=cfg,
        multi_teacher={"domains": doms, "teacher_grpo": g, "lambdas": [1.0, 1.25]},
    )
    routes = {"add": "a", "sub": "s"}
    # routing: each prompt's completion comes from its own family's teacher
    ta, _ = load_model(tmp_path / "ta")
    tb, _ = load_model(tmp_path / "tb")
    chosen = problems(4)
    b, _, names = baselines._routed_samples(
        {"a": ta, "s": tb}, tok, chosen, routes, {**cfg, "temperature": 1.0, "_stop": None}, seed=0
    )
    assert names == ["a" if p["family"] == "add" else "s" for p in chosen]
    assert b.loss_mask.sum() > 0 and (b.loss_mask * (1 - b.attention_mask)).sum() == 0
    common = ["--student", str(tmp_path / "student"), "--train", str(tr), "--valid", str(va)]
    two = ["--teacher", f"a={tmp_path / 'ta'}", "--teacher", f"s={tmp_path / 'tb'}"]
    for variant, extra in {
        "mt-sft": ["--method", "sft", "--route", *two],
        "mt-ex": ["--lam", "1.25", "--ref", str(tmp_path / "student"), "--route", *two],
        "rc": [
            "--lam",
            "1.25",
            "--ref",
            str(tmp_path / "tbase"),
            "--teacher",
            str(tmp_path / "ta"),
        ],
    }.items():
        main(
            [
                *_job(scale, variant, tmp_path / variant),
                *common,
                *extra,
                "--eval-domains",
                "--record",
                str(tmp_path / f"{variant}.json"),
            ]
        )
        rec = load_run_record(tmp_path / f"{variant}.json")
        tasks = {m["task"] for m in rec["metrics"]}
        assert {"valid_a", "valid_s"} <= tasks
        # per-domain rows keep the validation file's line numbers (same ids as "valid")
        lines = [json.loads(x) for x in va.read_text().splitlines() if x.strip()]
        got = {}
        for r in iter_samples(tmp_path / f"{variant}.json", rec):
            got.setdefault(r["task"], set()).add(r["doc_id"])
        assert got["valid"] == set(range(len(lines)))
        assert got["valid_a"] == {i for i, p in enumerate(lines) if p["family"] == "add"}
        assert got["valid_s"] == {i for i, p in enumerate(lines) if p["family"] == "sub"}
        # routes come from papers.gopd.multi_teacher.domains with --route only
        assert rec["config"].get("routes") == (routes if "--route" in extra else None)
        assert rec["config"]["eval_domains"] == doms
    assert load_run_record(tmp_path / "mt-sft.json")["method"] == "sft-teacher-samples"
    assert json.loads((tmp_path / "rc" / "meta.json").read_text())["inputs"]["ref"].endswith(
        "tbase"
    )
    expo_main(
        [
            *_job(scale, "expo", tmp_path / "expo"),
            "--student",
            str(tmp_path / "student"),
            *["--teacher", str(tmp_path / "ta"), "--teacher", str(tmp_path / "tb")],
            "--alpha",
            "0.5",
            "--eval-domains",
            "--valid",
            str(va),
            "--record",
            str(tmp_path / "expo.json"),
        ]
    )
    m, _ = load_model(tmp_path / "expo")
    s, _ = load_model(tmp_path / "student")
    k = "model.embed_tokens.weight"
    mean = (ta.state_dict()[k] + tb.state_dict()[k]) / 2
    assert torch.allclose(m.state_dict()[k], mean + 0.5 * (mean - s.state_dict()[k]), atol=1e-6)
    expo = load_run_record(tmp_path / "expo.json")
    assert expo["method"] == "expo"
    assert {r["task"] for r in iter_samples(tmp_path / "expo.json", expo)} == {
        "valid",
        "valid_a",
        "valid_s",
    }
