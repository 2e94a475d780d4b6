"""mi_steer: the hook layer's plumbing, each Locate/Steer/Improve equation on hand-made tensors,
bad input, and one micro run of the whole pipeline (worlds -> models -> run records)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from methods.interp.hooks import HookedLM, add_vector, patch_from, project_out, scale_units
from methods.lm.model import build_model
from methods.mi_steer import locate as L
from methods.mi_steer import steer as S
from methods.mi_steer.suite import improve_verdict
from methods.mi_steer.vocab import CharVocab

SPEC = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    model = build_model(SPEC, CharVocab(), seed=0).eval()
    return HookedLM(model)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(5, 90, (3, 12), generator=torch.Generator().manual_seed(1))


def logits_of(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


# ---------------------------------------------------------------------- plumbing (acceptance)


def test_hooks_removed_after_every_call(lm, ids):
    before = logits_of(lm, ids)
    v = torch.ones(lm.d_model)
    lm.run(
        ids,
        read=[lm.site("resid_post", 1), lm.site("head", 0), lm.site("neuron", 1)],
        edits=S.steering_edits(lm, v, 3.0, 0),
    )
    lm.run(ids, edits=S.ablation_edits(lm, v), grad=True)
    with pytest.raises(RuntimeError), lm.hooks([(lm.site("mlp", 0), lambda x: x * 0)]):
        raise RuntimeError("inside the hook context")
    assert torch.equal(before, logits_of(lm, ids))
    for mod in lm.model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks


def test_zero_strength_steering_and_zero_direction_ablation_are_exact_noops(lm, ids):
    base, _ = lm.run(ids)
    v = torch.randn(lm.d_model)
    for layer in range(lm.n_layers):
        steered, _ = lm.run(ids, edits=S.steering_edits(lm, v, 0.0, layer))
        assert torch.equal(steered, base)
    ablated, _ = lm.run(ids, edits=S.ablation_edits(lm, torch.zeros(lm.d_model)))
    assert torch.equal(ablated, base)
    assert torch.equal(
        S.orthogonalize_weights(lm.model, torch.zeros(lm.d_model))(input_ids=ids).logits.detach(),
        base,
    )


def test_weight_orthogonalisation_equals_runtime_ablation(lm, ids):
    r = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    runtime, _ = lm.run(ids, edits=S.ablation_edits(lm, r))
    orth = S.orthogonalize_weights(lm.model, r)
    with torch.no_grad():
        edited = orth(input_ids=ids).logits
    assert torch.allclose(edited, runtime, atol=1e-5)
    assert not torch.allclose(runtime, lm.run(ids)[0], atol=1e-3)  # the ablation does something
    # the original model keeps its tied weights and its outputs
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight


def test_last_layer_logit_lens_reproduces_the_logits(lm, ids):
    lens = L.logit_lens(lm, ids)
    assert len(lens) == lm.n_layers + 1
    assert torch.allclose(lens[-1], logits_of(lm, ids), atol=1e-6)
    m = L.lens_metrics(lens[-1], logits_of(lm, ids), ids)
    assert m["top1_agree"] == 1.0 and abs(m["kl_to_final"]) < 1e-6


# ---------------------------------------------------------------------- equations


def test_project_out_and_add_vector_on_hand_made_tensors():
    r = torch.tensor([3.0, 4.0])
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    y = project_out(r)(x)
    assert torch.allclose(y @ r, torch.zeros(1, 2), atol=1e-6)
    # x - r_hat r_hat^T x with r_hat = (0.6, 0.8): [1,0] -> [1-0.36, -0.48]
    assert torch.allclose(y[0, 0], torch.tensor([0.64, -0.48]))
    assert torch.allclose(project_out(r)(y), y, atol=1e-6)  # idempotent
    assert torch.equal(add_vector(r, 0.5, [1])(x)[0, 1], torch.tensor([1.5, 4.0]))
    assert torch.equal(add_vector(r, 0.5, [1])(x)[0, 0], x[0, 0])


def test_normalised_effect_and_logit_difference():
    assert L.normalised_effect(1.0, -2.0, 4.0) == pytest.approx(0.5)
    assert (
        L.normalised_effect(4.0, -2.0, 4.0) == 1.0 and L.normalised_effect(-2.0, -2.0, 4.0) == 0.0
    )
    logits = torch.tensor([[[0.0, 1.0, 3.0]], [[2.0, 0.0, 1.0]]])
    assert torch.equal(
        L.logit_diff(logits, torch.tensor([2, 0]), torch.tensor([1, 2])), torch.tensor([2.0, 1.0])
    )


def test_patching_endpoints(lm, ids):
    clean, corrupt = ids[:, :8], ids[:, :8].clone()
    corrupt[:, 3] = (corrupt[:, 3] + 7) % 90 + 5
    a_c, a_r = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    res = L.activation_patching(lm, clean, corrupt, a_c, a_r, "resid")
    # Before the corrupted position nothing differs; the embedding at that position carries it all.
    assert torch.allclose(res["ne"][0, :3], torch.zeros(3), atol=1e-5)
    assert res["ne"][0, 3] == pytest.approx(1.0, abs=1e-4)
    assert res["ne"][-1, -1] == pytest.approx(1.0, abs=1e-4)  # last layer, final position
    noise = L.activation_patching(lm, clean, corrupt, a_c, a_r, "resid", mode="noise")
    assert noise["ne"][-1, -1] == pytest.approx(1.0, abs=1e-4)
    heads = L.activation_patching(lm, clean, corrupt, a_c, a_r, "head")
    assert heads["ne"].shape == (lm.n_layers, lm.n_heads, 8) and heads["ne_all_pos"].shape == (
        lm.n_layers,
        lm.n_heads,
    )
    # all heads of a layer patched at all positions = the whole attention input of o_proj
    _, cc = lm.run(clean, read=[lm.site("head", 1)])
    full, _ = lm.run(corrupt, edits=[(lm.site("head", 1), patch_from(cc[lm.site("head", 1)]))])
    attn_c, _ = lm.run(clean, read=[lm.site("attn", 1)])
    assert full.shape == attn_c.shape


def test_attribution_patching_is_gradient_times_difference(lm, ids):
    clean, corrupt = ids[:, :6], ids[:, :6].clone()
    corrupt[:, 2] = (corrupt[:, 2] + 11) % 90 + 5
    a_c, a_r = torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])
    atp = L.attribution_patching(lm, clean, corrupt, a_c, a_r, "resid")
    site = lm.site("resid_post", 0)
    _, cc = lm.run(clean, read=[site])
    z = lm.run(corrupt, read=[site])[1][site].requires_grad_(True)
    logits, _ = lm.run(corrupt, edits=[(site, lambda x: z)], grad=True)
    (g,) = torch.autograd.grad(L.logit_diff(logits, a_c, a_r).mean(), z)
    manual = ((cc[site] - z.detach()) * g).sum(-1).mean(0)
    assert torch.allclose(atp[1], manual, atol=1e-5)
    heads = L.attribution_patching(lm, clean, corrupt, a_c, a_r, "head")
    assert heads.shape == (lm.n_layers, lm.n_heads, 6)
    # the head AtP at a layer sums to the AtP of the o_proj input (linear in the heads)
    assert L.topk_overlap([5, 1, 4], [4, 0, 5], 2) == 1.0


def test_neuron_and_head_sites(lm, ids):
    base, _ = lm.run(ids)
    same, _ = lm.run(ids, edits=[(lm.site("neuron", 0), scale_units(list(range(lm.d_ffn)), 1.0))])
    assert torch.equal(same, base)
    zero_neurons, _ = lm.run(
        ids, edits=[(lm.site("neuron", 0), scale_units(list(range(lm.d_ffn)), 0.0))]
    )
    zero_mlp, _ = lm.run(ids, edits=[(lm.site("mlp", 0), torch.zeros_like)])
    assert torch.allclose(zero_neurons, zero_mlp, atol=1e-6)
    zero_heads, _ = lm.run(
        ids, edits=[(lm.site("head", 1), scale_units(list(range(lm.n_heads)), 0.0))]
    )
    zero_attn, _ = lm.run(ids, edits=[(lm.site("attn", 1), torch.zeros_like)])
    assert torch.allclose(zero_heads, zero_attn, atol=1e-6)
    _, c = lm.run(ids, read=[lm.site("head", 0), lm.site("neuron", 1)])
    assert c[lm.site("head", 0)].shape == (3, 12, lm.n_heads, lm.d_head)
    assert c[lm.site("neuron", 1)].shape == (3, 12, lm.d_ffn)


def test_mean_difference_and_random_control(lm, ids):
    site = lm.site("resid_post", 0)
    assert torch.equal(S.mean_difference(lm, ids, ids, site), torch.zeros(lm.d_model))
    v = S.mean_difference(lm, ids[:2], ids[1:], site)
    _, c = lm.run(ids, read=[site])
    assert torch.allclose(v, c[site][:2, -1].mean(0) - c[site][1:, -1].mean(0))
    u = S.random_like(v, 0)
    assert u.norm() == pytest.approx(float(v.norm()), rel=1e-5) and not torch.allclose(u, v)


def test_selection_rule_and_improve_verdict():
    cands = [
        {"layer": 0, "score": -5.0, "kl": 0.5},  # lowest score but breaks harmless prompts
        {"layer": 1, "score": -1.0, "kl": 0.05},
        {"layer": 2, "score": -2.0, "kl": 0.01},
        {"layer": 4, "score": -9.0, "kl": 0.0},  # beyond 80 % of 5 layers
    ]
    assert S.select_direction(cands, n_layers=5)["layer"] == 2
    assert S.select_direction(cands[:1], n_layers=5) is None
    cfg = {"min_rel_change": 0.5, "max_kl": 0.1, "max_ppl_rise": 0.05}
    assert improve_verdict(0.8, 0.3, 0.05, 10.0, 10.3, cfg)["met"]
    assert not improve_verdict(0.8, 0.5, 0.05, 10.0, 10.3, cfg)["met"]  # 37.5 % change
    assert not improve_verdict(0.8, 0.1, 0.2, 10.0, 10.3, cfg)["met"]  # KL too high
    assert not improve_verdict(0.8, 0.1, 0.05, 10.0, 10.6, cfg)["met"]  # ppl +6 %


def test_probes_on_separable_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = (x[:, 0] > 0).astype(int)
    assert L.probe_accuracy(x[:100], y[:100], x[100:], y[100:]) > 0.9
    assert L.mass_mean_accuracy(x[:100], y[:100], x[100:], y[100:]) > 0.8
    y_rand = rng.integers(0, 2, 200)
    assert L.probe_accuracy(x[:100], y_rand[:100], x[100:], y_rand[100:]) < 0.7


# ---------------------------------------------------------------------- bad input


def test_bad_input_names_the_value(lm, ids):
    with pytest.raises(IndexError, match="layer index 2 out of range"):
        lm.site("resid_post", 2)
    with pytest.raises(IndexError, match="layer index -1"):
        S.steering_edits(lm, torch.zeros(lm.d_model), 1.0, -1)
    with pytest.raises(IndexError, match="head index 4 out of range"):
        lm.check_head(4)
    with pytest.raises(ValueError, match=r"steering vector has shape \(31,\).*width is 32"):
        S.steering_edits(lm, torch.zeros(31), 1.0, 0)
    with pytest.raises(ValueError, match="ablation direction has shape"):
        S.ablation_edits(lm, torch.zeros(lm.d_model + 1))
    vocab = CharVocab()
    with pytest.raises(ValueError, match=r"equal token lengths.*'<U>say 1:' has 7 tokens"):
        vocab.batch(["<U>say 1:", "<L>say 12:"])
    with pytest.raises(ValueError, match="empty prompt set"):
        vocab.batch([])
    with pytest.raises(ValueError, match="equal token lengths"):
        L.activation_patching(
            lm, ids[:, :5], ids[:, :6], torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]), "resid"
        )
    with pytest.raises(ValueError, match="empty prompt set"):
        L.activation_patching(lm, ids[:0], ids[:0], torch.tensor([]), torch.tensor([]), "resid")
    with pytest.raises(ValueError, match="empty prompt set: the negative prompts"):
        S.mean_difference(lm, ids, ids[:0], lm.site("resid_post", 0))
    with pytest.raises(ValueError, match="unknown hook site kind 'resid'"):
        lm.site("resid", 0)


def test_vocab_round_trip():
    v = CharVocab()
    text = "<U>say 417: ABC\n<eos>"
    assert v.decode(v.encode(text)) == text
    assert v.encode("<REFUSE>") == [v.id("<REFUSE>")]


# ---------------------------------------------------------------------- micro pipeline


def job_options(tmp_path, section: dict, name: str = "scale.yaml") -> list[str]:
    """The job options of a tiny scale file whose ``papers.mi_steer`` section is ``section``."""
    import yaml

    from claimbench.config import CONFIG_DIR

    scale = yaml.safe_load((CONFIG_DIR / "scales" / "tiny.yaml").read_text())
    scale["papers"]["mi_steer"] = {"seeds": [0], **section}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(scale))
    return ["--scale", "tiny", "--scale-file", str(path), "--paper", "mi_steer"]


def test_micro_pipeline_writes_run_records(tmp_path):
    from benchmarks.data import mi_worlds
    from claimbench.job import job_from_args, job_parser
    from claimbench.records import load_run_record
    from methods.mi_steer import suite, train

    small = {**SPEC, "num_kv_heads": 4}
    spec = {
        **small,
        "train": {"steps": 4, "batch_size": 4, "seq_len": 32, "lr": 0.01, "warmup_steps": 1},
    }
    cfgs = {
        "locate": {"n_pairs": 4, "lens_sequences": 4, "tuned_lens_steps": 2, "tuned_lens_lr": 0.01},
        "probe": {},
        "steer": {
            "n_fit": 8,
            "n_eval": 4,
            "n_neutral": 2,
            "neutral_len": 16,
            "alphas": [-1, 0, 1],
            "max_new_tokens": 3,
            "n_random": 1,
        },
        "improve": {
            "n_fit": 8,
            "n_neutral": 2,
            "neutral_len": 16,
            "positions": [-1],
            "select_kl_max": 100.0,
            "select_max_depth": 1.0,
            "induce_alpha": 1.0,
            "max_new_tokens": 4,
            "min_rel_change": 0.5,
            "max_kl": 0.1,
            "max_ppl_rise": 0.05,
        },
        "sensitivity": {"n_neutral": 2, "neutral_len": 16},
    }
    worlds = {"n_induction": 200, "half": 12, "n_mode": 300, "n_trigger": 300, "n_eval": 64}
    opts = job_options(
        tmp_path, {"worlds": worlds, "models": {"induction": spec, "behaviour": spec}, **cfgs}
    )
    data = tmp_path / "worlds"
    mi_worlds.main([*opts, "--variant", "mi_worlds", "--out", str(data)])
    meta = json.loads((data / "meta.json").read_text())
    assert meta["generator"] == "mi_worlds" and meta["counts"]["induction.jsonl"] == 200
    assert meta["paper"] == "mi_steer" and meta["scale"] == "tiny" and "provenance" in meta
    for world in ("induction", "behaviour"):
        out = tmp_path / world
        train.main(
            [*opts, "--variant", world, "--world", world, "--data", str(data), "--out", str(out)]
        )
        meta = json.loads((out / "meta.json").read_text())
        assert meta["world"] == world and meta["name"] == world and meta["dtype"] == "float32"
        assert meta["config"]["train"]["weight_decay"] == 0.1  # the schema's default
    for cmd, cfg in cfgs.items():
        art = tmp_path / ("induction" if cmd == "locate" else "behaviour")
        rec = tmp_path / "runs" / f"{cmd}.json"
        args = [*opts, "--variant", art.name, "--out", str(rec)]
        args += ["--artifact", str(art), "--data", str(data)]
        if cmd == "sensitivity":
            args += ["--sensitivity", str(tmp_path / "sens.json")]
        suite.main([cmd, *args])
        r = load_run_record(rec)
        assert r["paper"] == "mi_steer" and r["suite"] == cmd and r["metrics"]
        assert r["variant"] == art.name and r["scale"] == "tiny"
        assert {k: v for k, v in r["config"].items() if k in cfg} == cfg
    sens = json.loads((tmp_path / "sens.json").read_text())
    assert set(sens["modules"]) == {
        f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn", "mlp")
    }
    loc = load_run_record(tmp_path / "runs" / "locate.json")
    assert any(s["name"].startswith("heatmap:denoise resid") for s in loc["series"])
    vals = {m["metric"]: m["value"] for m in loc["metrics"]}
    assert vals["last_layer_max_abs_diff"] < 1e-5
    # the NE of the last layer's heads patched together, beside the best single head
    assert {"last_layer_all_heads_ne", "last_layer_top2_heads_ne"} <= set(vals)
    st = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(tmp_path / "runs" / "steer.json")["metrics"]
    }
    # signed effect at alpha = +1, random controls the same way
    assert st["steer", "caa_effect"] == pytest.approx(
        st["steer", "rate_alpha_1"] - st["steer", "rate_alpha_0"]
    )
    rnd = [st["steer", "random_0_effect_alpha1"]]  # n_random = 1
    assert st["steer", "random_effect"] == pytest.approx(np.mean(np.abs(rnd)))
    pr = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(tmp_path / "runs" / "probe.json")["metrics"]
    }
    assert pr["latent", "control_types"] == 100 and 0.5 <= pr["latent", "chance"] <= 1
    assert pr["latent", "best_selectivity"] == pytest.approx(
        pr["latent", "best_acc"] - pr["latent", "control_acc_at_best"]
    )
    imp = {
        m["metric"]: m["value"]
        for m in load_run_record(tmp_path / "runs" / "improve.json")["metrics"]
    }
    assert imp["orth_vs_runtime_max_abs_diff"] < 1e-4
    # The job's dtype reaches the model, its hooks and every tensor the suite makes (bfloat16 on
    # the CPU here): the improve suite (directions, orthogonalised copy, random controls) runs.
    ap = job_parser(None, papers=["mi_steer"])
    job = job_from_args(
        ap.parse_args([*opts, "--variant", "behaviour", "--out", "x", "--dtype", "bfloat16"])
    )
    lm, _, _ = suite.load(job, tmp_path / "behaviour")
    assert lm.dtype == torch.bfloat16 and lm.device.type == "cpu"
    rec = tmp_path / "runs" / "bf16" / "improve.json"
    suite.main(
        [
            "improve",
            *opts,
            "--variant",
            "behaviour",
            "--dtype",
            "bfloat16",
            "--out",
            str(rec),
            "--artifact",
            str(tmp_path / "behaviour"),
            "--data",
            str(data),
        ]
    )
    assert load_run_record(rec)["provenance"]["dtype"] == "bfloat16"
    # a suite whose section the scale file lacks is refused by name
    bare = job_options(tmp_path, {}, "bare.yaml")
    with pytest.raises(SystemExit) as err:
        suite.main(
            [
                "steer",
                *bare,
                "--variant",
                "behaviour",
                "--out",
                str(tmp_path / "x.json"),
                "--artifact",
                str(tmp_path / "behaviour"),
                "--data",
                str(data),
            ]
        )
    assert err.value.code == 2


def test_heatmap_svg_and_line_labels():
    from claimbench.report.render import _line_label, _natural
    from claimbench.report.svg import heatmap

    svg = heatmap(
        "NE <map>",
        ["embed", "resid_post.0"],
        [[0.0, 1.0, -0.5], [0.2, float("nan"), 1.0]],
        x_label="position",
    )
    assert svg.count("<rect") == 6 and "NE &lt;map&gt;" in svg and "rgb(255, 0, 0)" in svg
    assert heatmap("empty", [], []) == ""
    group = [
        {"run_id": "a", "y_label": "layer 0"},
        {"run_id": "a", "y_label": "random"},
        {"run_id": "b", "y_label": "x"},
    ]
    assert _line_label(group[1], group, {"a": "behaviour"}) == "behaviour · random"
    group[0]["y_label"] = "rate | layer 0"
    assert _line_label(group[0], group, {"a": "behaviour"}) == "behaviour · layer 0"
    assert _line_label(group[2], group, {"b": "other"}) == "other"
    assert sorted(["resid_post.10", "resid_post.2", "embed"], key=_natural) == [
        "embed",
        "resid_post.2",
        "resid_post.10",
    ]


def test_contrast_pipeline_on_a_micro_hf_model(tmp_path):
    from claimbench.records import load_run_record
    from methods.mi_steer import contrast
    from tests.posttrain_fixtures import save_micro_model

    art = tmp_path / "micro"
    save_micro_model(art)
    text = tmp_path / "test.jsonl"
    text.write_text(
        "\n".join(
            json.dumps({"text": f"Question: What is {i} plus {i}?\nAnswer: {2 * i}"})
            for i in range(40)
        )
    )
    cfg = {
        "model": "micro",
        "chat_template": True,
        "layers": [0],
        "alphas": [-1, 0, 1],
        "n_neutral": 2,
        "neutral_len": 8,
        "behaviours": {
            "refusal": {
                "positive": "benchmarks/data/mi_prompts/harmful.jsonl",
                "negative": "benchmarks/data/mi_prompts/harmless.jsonl",
                "positive_tokens": ["I", "Sorry"],
                "negative_tokens": ["Sure", "Here"],
            }
        },
    }
    rec = tmp_path / "contrast.json"
    args = ["--variant", "micro-refusal", "--out", str(rec), "--artifact", str(art)]
    args += ["--text", str(text)]
    contrast.main([*job_options(tmp_path, {"contrast": cfg}), *args, "--behaviour", "refusal"])
    r = load_run_record(rec)
    vals = {m["metric"]: m["value"] for m in r["metrics"]}
    assert {"rate_positive", "rate_positive_ablated", "kl_neutral", "criterion_met"} <= set(vals)
    assert vals["criterion_met"] <= vals["selection_passed"]
    # the refusal claims' premise: the unedited model's harmful-minus-harmless refusal rate,
    # with the two-proportion standard error
    rows = {m["metric"]: m for m in r["metrics"]}
    p1, p0 = vals["rate_positive"], vals["rate_negative"]
    assert rows["refusal_gap"]["value"] == pytest.approx(p1 - p0)
    se = (p1 * (1 - p1) / 6 + p0 * (1 - p0) / 6) ** 0.5
    assert rows["refusal_gap"]["stderr"] == pytest.approx(se)
    # Arditi et al.'s protocol: fit / validation / test splits, candidates = layers x positions
    assert (vals["n_fit"], vals["n_val"], vals["n_test"]) == (12, 6, 6)
    assert vals["n_candidates"] >= 2 and vals["position"] < 0
    assert vals["n_passing_kl"] <= vals["n_candidates"]
    # the record's config is the validated section (schema defaults filled in) + the behaviour
    assert r["config"]["behaviour"] == "refusal" and r["config"]["select_kl_max"] == 0.1
    assert r["config"]["layers"] == [0] and r["variant"] == "micro-refusal"
    # no layer passing the selection rule is a recorded failure of the criterion, not a crash
    strict = job_options(tmp_path, {"contrast": {**cfg, "select_kl_max": 0.0}}, "strict.yaml")
    contrast.main([*strict, *args, "--behaviour", "refusal"])
    vals = {m["metric"]: m["value"] for m in load_run_record(rec)["metrics"]}
    assert vals["selection_passed"] == 0 and vals["criterion_met"] == 0
    assert vals["layer"] == 0 and vals["select_kl"] >= 0
    with pytest.raises(SystemExit):
        contrast.main([*strict, *args, "--behaviour", "sentiment"])


# ---------------------------------------------------------------------- real architectures


@pytest.fixture(scope="module")
def micro_archs(tmp_path_factory):
    from claimbench.micro import micro_lm

    root = tmp_path_factory.mktemp("micro")
    return {arch: micro_lm(root / arch, arch=arch) for arch in ("llama", "qwen2")}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_steer_file_is_what_lm_eval_steered_model_applies(micro_archs, arch, tmp_path):
    """Our S1 edit and lm-eval's SteeredModel reading our exported file change the logits the
    same way (same vector, layer, coefficient) on Llama and Qwen2 micro models."""
    from lm_eval.models.hf_steered import SteeredModel
    from transformers import AutoModelForCausalLM

    path = micro_archs[arch]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    lm = HookedLM(model)
    ids = torch.randint(3, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    # the hook layer reads the decoder layers of this architecture
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    _, cache = lm.run(ids, read=[lm.site("embed"), lm.site("resid_post", 0)])
    assert torch.allclose(cache[lm.site("embed")], hs[0])
    assert torch.allclose(cache[lm.site("resid_post", 0)], hs[1], atol=1e-6)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    f = tmp_path / "steer.pt"
    S.save_steering_file(f, 1, v, 1.5)
    loaded = torch.load(f, weights_only=True)
    assert list(loaded) == ["layers.1"]
    entry = loaded["layers.1"]
    assert entry["action"] == "add" and entry["steering_coefficient"] == 1.5
    assert entry["bias"] is None and entry["head_index"] is None
    assert torch.equal(entry["steering_vector"], v)
    ours = lm.run(ids, edits=S.steering_edits(lm, v, 1.5, 1))[0]
    base = lm.run(ids)[0]
    sm = SteeredModel(pretrained=str(path), steer_path=str(f), device="cpu", dtype="float32")
    with torch.no_grad():
        theirs = sm._model_call(ids)
    assert not torch.allclose(ours, base, atol=1e-3)  # the edit does something
    assert torch.allclose(theirs, ours, atol=1e-5)
    with pytest.raises(ValueError, match=r"\.pt / \.pth"):
        S.save_steering_file(tmp_path / "steer.json", 1, v, 1.0)


def test_contrast_loads_a_hub_id_and_exports_the_selected_direction(micro_archs, tmp_path, capsys):
    """A base artifact that only names a hub id loads from the local cache (Qwen2 micro model),
    the pipeline runs, and the steer file holds the selected layer's direction."""
    from claimbench.records import load_run_record
    from methods.mi_steer import contrast
    from tests.micro_hub import fill_hub_cache, hub_artifact, use_cache

    import_cache = tmp_path / "hub"
    fill_hub_cache(import_cache, "org/micro-qwen2", micro_archs["qwen2"])
    art = hub_artifact(tmp_path / "base" / "micro-qwen2", "org/micro-qwen2")
    text = tmp_path / "test.jsonl"
    text.write_text(
        "\n".join(json.dumps({"text": f"Problem {i}: what is {i} plus 2?"}) for i in range(60))
    )
    cfg = {
        "model": "micro-qwen2",
        "chat_template": True,
        "layers": [0, 1],
        "select_max_depth": 1.0,
        "select_kl_max": 1e9,
        "alphas": [-1, 0, 1],
        "n_neutral": 2,
        "neutral_len": 8,
        "steer_alpha": 2.0,
        "behaviours": {
            "refusal": {
                "positive": "benchmarks/data/mi_prompts/harmful.jsonl",
                "negative": "benchmarks/data/mi_prompts/harmless.jsonl",
                "positive_tokens": ["I", "Sorry"],
                "negative_tokens": ["Sure", "Here"],
            }
        },
    }
    rec, steer = tmp_path / "contrast.json", tmp_path / "steer.pt"
    args = ["--variant", "micro-qwen2-refusal", "--out", str(rec), "--artifact", str(art)]
    args += ["--text", str(text), "--behaviour", "refusal", "--steer-out", str(steer)]
    opts = job_options(tmp_path, {"contrast": cfg})
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, import_cache)
        contrast.main([*opts, *args])
    capsys.readouterr()
    vals = {m["metric"]: m["value"] for m in load_run_record(rec)["metrics"]}
    loaded = torch.load(steer, weights_only=True)
    assert list(loaded) == [f"layers.{int(vals['layer'])}"]
    assert loaded[f"layers.{int(vals['layer'])}"]["steering_coefficient"] == 2.0
    # without the cache the hub id does not resolve: one line, exit 2
    missing = hub_artifact(tmp_path / "base" / "gone", "org/not-cached")
    assert args[4] == "--artifact"
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, tmp_path / "empty")
        with pytest.raises(SystemExit) as e:
            contrast.main([*opts, *args[:5], str(missing), *args[6:]])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "'org/not-cached' is not available locally" in err[0]


@pytest.mark.slow
def test_gpu_smoke_cpu(tmp_path):
    from methods.mi_steer.smoke import gpu_smoke

    lines = gpu_smoke("cpu", "bfloat16", tmp_path)
    assert len(lines) == 2 and all("lm-eval steered == ours" in ln for ln in lines)


def test_contrast_side_effects_in_chunks_equal_the_whole_batch(lm, ids):
    from methods.mi_steer import contrast

    edits = S.steering_edits(lm, torch.randn(lm.d_model), 2.0, 1)
    whole = S.side_effects(lm, ids, edits)
    for chunk in (1, 2, 3):
        got = contrast.side_effects(lm, ids, edits, chunk=chunk)
        assert got["kl"] > 1e-4
        for k in ("kl", "ppl_base", "ppl"):
            assert got[k] == pytest.approx(whole[k], rel=1e-5), (chunk, k)


# ---------------------------------------------------------------------- faithful-setup fixes


def test_heads_patched_together_equal_the_attention_output_patch(lm, ids):
    """All heads of a layer patched together = patching that layer's attention output (o_proj is
    linear in the concatenated heads); one head = the per-head all-positions patch."""
    clean, corrupt = ids[:2], ids[1:]
    a_c, a_r = torch.tensor([5, 6]), torch.tensor([7, 8])
    attn = L.activation_patching(lm, clean, corrupt, a_c, a_r, "attn")
    site = lm.site("attn", 1)
    _, cache = lm.run(clean, read=[site])
    got_all = L.patch_heads_together(lm, clean, corrupt, a_c, a_r, 1, list(range(lm.n_heads)))
    logits, _ = lm.run(corrupt, edits=[(site, patch_from(cache[site]))])
    m = float(L.logit_diff(logits, a_c, a_r).mean())
    want = L.normalised_effect(m, float(attn["m_r"].mean()), float(attn["m_c"].mean()))
    assert got_all == pytest.approx(want, abs=1e-5)
    heads = L.activation_patching(lm, clean, corrupt, a_c, a_r, "head")
    one = L.patch_heads_together(lm, clean, corrupt, a_c, a_r, 1, [2])
    assert one == pytest.approx(float(heads["ne_all_pos"][1, 2]), abs=1e-5)
    two = L.patch_heads_together(lm, clean, corrupt, a_c, a_r, 1, [0, 2])
    assert two != pytest.approx(one, abs=1e-6)
    with pytest.raises(IndexError):
        L.patch_heads_together(lm, clean, corrupt, a_c, a_r, 1, [lm.n_heads])


def test_steering_on_generated_positions_leaves_the_prompt_alone(lm, ids):
    """CAA adds the vector only after the prompt: logits at prompt positions are unchanged, the
    positions from ``start`` on move; start=0 is the every-position edit."""
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(4))
    base, _ = lm.run(ids)
    start = ids.shape[1] - 3
    got, _ = lm.run(ids, edits=S.steering_edits(lm, v, 2.0, 0, start=start))
    assert torch.equal(got[:, :start], base[:, :start])
    assert (got[:, start:] - base[:, start:]).abs().max() > 1e-3
    every, _ = lm.run(ids, edits=S.steering_edits(lm, v, 2.0, 0))
    zero, _ = lm.run(ids, edits=S.steering_edits(lm, v, 2.0, 0, start=0))
    assert torch.allclose(every, zero)
    with pytest.raises(ValueError, match="negative"):
        S.steering_edits(lm, v, 1.0, 0, start=-1)


def test_selection_induce_filter():
    cands = [
        {"layer": 0, "score": -5.0, "kl": 0.01, "induce": -1.0},  # adding it induces nothing
        {"layer": 1, "score": -2.0, "kl": 0.01, "induce": 0.5},
        {"layer": 2, "score": -3.0, "kl": 0.5, "induce": 2.0},  # KL too high
    ]
    assert S.select_direction(cands, n_layers=5)["layer"] == 0  # no induce filter
    assert S.select_direction(cands, n_layers=5, induce_min=0.0)["layer"] == 1
    assert S.select_direction(cands[:1], n_layers=5, induce_min=0.0) is None


def test_contrast_splits_and_post_instruction_positions(micro_archs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.mi_steer import contrast

    p = [f"p{i}" for i in range(24)]
    fit, val, test = contrast.split_prompts(p, None, None, "x.jsonl")
    assert (len(fit), len(val), len(test)) == (12, 6, 6) and fit + val + test == p
    assert contrast.split_prompts(p, 16, 4, "x.jsonl")[2] == p[20:]
    with pytest.raises(ValueError, match="x.jsonl: 24 prompts"):
        contrast.split_prompts(p, 20, 4, "x.jsonl")
    path = micro_archs["qwen2"]
    tok = AutoTokenizer.from_pretrained(path)
    lm = HookedLM(AutoModelForCausalLM.from_pretrained(path).eval())
    chat = contrast.Contrast(lm, tok, True, "cpu")
    prompts = ["How do I bake bread?", "Name a colour.", "What is two plus two?"]
    pos = chat.post_instruction_positions(prompts, 64)
    # the candidate positions are the generation prompt after the user turn, nothing of the text
    tail = tok.decode(chat.encode(prompts[0])[0, pos[-1] :])
    assert pos == [-i for i in range(1, len(pos) + 1)] and len(pos) >= 2
    assert "assistant" in tail and "bread" not in tail and "?" not in tail
    assert chat.post_instruction_positions(prompts, 2) == [-1, -2]
    plain = contrast.Contrast(lm, tok, False, "cpu")
    assert plain.post_instruction_positions(["ab cd", "xy"], 8) == [-1]  # nothing shared
    means = chat.mean_resid(prompts[:2], [0, 1], [-1, -2])
    _, c0 = lm.run(chat.encode(prompts[0]), read=[lm.site("resid_post", 1)])
    _, c1 = lm.run(chat.encode(prompts[1]), read=[lm.site("resid_post", 1)])
    s = lm.site("resid_post", 1)
    assert torch.allclose(means[1, -2], (c0[s][0, -2] + c1[s][0, -2]) / 2, atol=1e-6)


def test_latent_probe_labels_and_control_types():
    """The latent is the trained model's own style choice on mode-free prompts (p(upper |
    letter) > 0.5 after ``say NNN: ``); the control gives one random label per type (last two
    digits); a model that always picks one style probes at the constant prediction."""
    import string

    from methods.mi_steer.suite import latent_probe

    vocab = CharVocab()
    lm = HookedLM(build_model(SPEC, vocab, seed=0).eval())
    rand = HookedLM(build_model(SPEC, vocab, seed=1).eval())
    out = latent_probe(lm, rand, vocab, seed=0)
    ids = vocab.batch([f"say {n}: " for n in range(100, 1000)])
    with torch.no_grad():
        p = torch.softmax(lm.run(ids)[0][:, -1], -1)
    up = p[:, [vocab.id(c) for c in string.ascii_uppercase]].sum(-1)
    lo = p[:, [vocab.id(c) for c in string.ascii_lowercase]].sum(-1)
    assert np.array_equal(out["labels"], (up / (up + lo) > 0.5).long().numpy())
    ctrl = out["control_labels"]
    assert np.array_equal(ctrl[:800], ctrl[100:])  # same last two digits, same label
    assert 20 < ctrl[:100].sum() < 80  # 100 types with random labels
    sites = lm.n_layers + 1
    for key in ("task", "control", "mass_mean"):
        assert len(out["trained", key]) == sites and len(out["random_init", key]) == sites
    assert out["n"] == 900 and out["n_test"] == 450 and out["n_types"] == 100
    if len(set(out["labels"].tolist())) == 1:  # this random micro model picks one style
        assert out["trained", "task"] == [out["chance"]] * sites == out["random_init", "task"]
        assert out["chance"] == 1.0


def _contrast_metric(metric, value, stderr=None):
    return {
        "scale": "small",
        "paper": "mi_steer",
        "variant": "smollm2-refusal",
        "suite": "contrast",
        "task": "contrast",
        "metric": metric,
        "value": value,
        "stderr": stderr,
        "n": 40,
        "task_hash": None,
        "run_id": "r",
    }


@pytest.mark.parametrize(
    "p1,p0,gated_out",
    [(0.0, 0.0, True), (0.05, 0.0, True), (0.025, 0.05, True), (0.6, 0.05, False)],
)
def test_smollm2_refusal_claims_need_a_model_that_refuses(p1, p0, gated_out):
    """A model that does not refuse the harmful prompts (SmolLM2-135M-Instruct answers them)
    has no refusal direction to find: the refusal claims are inconclusive by their premise,
    not failed; a model that refuses gets its claims checked."""
    from claimbench import claims as claims_mod

    _, rows = claims_mod.load_claims_file("methods/mi_steer/claims.yaml")
    by_id = {c["id"]: {**c, "paper": "mi_steer"} for c in rows}
    se = (p1 * (1 - p1) / 40 + p0 * (1 - p0) / 40) ** 0.5
    lookup = [
        _contrast_metric("refusal_gap", p1 - p0, se),
        _contrast_metric("selection_passed", 0.0),
        _contrast_metric("criterion_met", 0.0),
    ]
    for cid in ("smollm2_refusal_direction_selected", "smollm2_refusal_ablation"):
        row = claims_mod.check_all([by_id[cid]], lookup, ["small"])[0]
        if gated_out:
            assert row["status"] == "inconclusive", row
            assert row["detail"].startswith("setup condition not met (the premise"), row["detail"]
        else:
            assert row["status"] == "failed", row
