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
