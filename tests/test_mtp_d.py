"""MTP-D: the loss on hand-made tensors, the stop-gradient, looped copies, lossless decoding,
bad-input errors, and the whole pipeline (train -> extend -> speculative records) on a micro config."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from claimbench.errors import ConfigError
from claimbench.records import load_run_record
from methods.mtp_d import loss as loss_mod
from methods.mtp_d.decode import (
    SpecStats,
    greedy_decode,
    left_pad,
    speculative_decode,
    teacher_forced_acceptance,
)
from methods.mtp_d.heads import (
    MTPHeads,
    cyclic_schedule,
    extend_looped,
    load_heads,
)
from methods.mtp_d.loss import MTPLM, MTPLoss, freeze_for_extension, run_heads, topn_kl

V = 40
# papers.mtp_d.loss as its schema fills it in
LOSS = {
    "mtp_lambda": 0.3,
    "beta": 1.0,
    "top_n_fraction": 0.08,
    "kl_direction": "forward",
    "temperature": 1.0,
}


def _config(hidden=32, vocab=V, init=0.02):
    return LlamaConfig(
        initializer_range=init,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="module")
def trained():
    """A random main model (non-degenerate greedy output) and 2 heads distilled into it with
    the MTP-D KL for a few steps: drafts are sometimes accepted, sometimes rejected."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    main = LlamaForCausalLM(_config(init=0.2))
    heads = MTPHeads(main.config, 2)
    model = MTPLM(main, heads, MTPLoss([0.0, 0.0], [1.0, 1.0], top_n=V, train_main=False))
    main.requires_grad_(False)
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        out = model(torch.randint(0, V, (16, 32), generator=gen))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    return main.double(), heads.double()


# ---- the loss --------------------------------------------------------------------------------
def test_topn_kl_on_hand_made_tensors():
    t = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert topn_kl(t, t.clone(), 2).item() == pytest.approx(0.0, abs=1e-7)
    # KL on S = top-2 of the teacher {0, 1}: renormalised q = softmax([2, 1]), p = softmax([0, 1])
    s = torch.tensor([[0.0, 1.0, 5.0, 5.0]])  # mass outside S is ignored
    q, p = torch.softmax(torch.tensor([2.0, 1.0]), 0), torch.softmax(torch.tensor([0.0, 1.0]), 0)
    want = float((q * (q.log() - p.log())).sum())
    assert topn_kl(t, s, 2).item() == pytest.approx(want, rel=1e-6)
    rev = float((p * (p.log() - q.log())).sum())
    assert topn_kl(t, s, 2, direction="reverse").item() == pytest.approx(rev, rel=1e-6)


def test_kl_zero_when_head_equals_shifted_main(monkeypatch):
    """Head k's teacher is the main head at offset k: feeding it exactly that gives KL = 0."""
    torch.manual_seed(0)
    main = LlamaForCausalLM(_config())
    heads = MTPHeads(main.config, 3)
    model = MTPLM(main, heads, MTPLoss(alpha=[0.1] * 3, beta=[1.0] * 3, top_n=10))
    x = torch.randint(0, V, (2, 12))

    def shifted(main_, heads_, ids, h0):
        logits0 = main_.lm_head(h0)
        return [logits0[:, k:] for k in range(1, heads_.depth + 1)]

    monkeypatch.setattr(loss_mod, "run_heads", shifted)
    parts = model(x).parts
    for k in (1, 2, 3):
        assert parts[f"kl_{k}"] == pytest.approx(0.0, abs=1e-6)

    def off_by_one(main_, heads_, ids, h0):  # the wrong offset must not give zero
        logits0 = main_.lm_head(h0)
        return [logits0[:, k - 1 : -1] for k in range(1, heads_.depth + 1)]

    monkeypatch.setattr(loss_mod, "run_heads", off_by_one)
    assert all(model(x).parts[f"kl_{k}"] > 1e-4 for k in (1, 2, 3))


@pytest.mark.parametrize("stop_grad", [True, False])
def test_stop_gradient_blocks_kl_into_main_logits(stop_grad):
    torch.manual_seed(0)
    main = LlamaForCausalLM(_config())
    heads = MTPHeads(main.config, 2)
    cfg = MTPLoss(alpha=[0.0, 0.0], beta=[1.0, 1.0], top_n=10, stop_grad=stop_grad)
    model = MTPLM(main, heads, cfg)
    captured = []
    hook = main.lm_head.register_forward_hook(lambda m, i, o: captured.append(o))
    out = model(torch.randint(0, V, (2, 12)))
    hook.remove()
    main_logits = captured[0]  # first lm_head call: the main head's Q
    (g,) = torch.autograd.grad(out.kl, main_logits, allow_unused=True, retain_graph=True)
    if stop_grad:
        assert g is None or torch.count_nonzero(g) == 0
    else:
        assert g is not None and torch.count_nonzero(g) > 0
    # the KL still trains the modules in both cases
    (gm,) = torch.autograd.grad(out.kl, heads.mods[0].proj.weight)
    assert torch.count_nonzero(gm) > 0


def _grads(model, loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


def test_kl_into_modules_trains_only_the_modules():
    """kl_into = modules: the KL's gradient reaches no trunk, embedding or output-head weight,
    the loss is unchanged, and the modules get the same gradient as with kl_into = all."""
    x = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    res = {}
    for kl_into in ("all", "modules"):
        torch.manual_seed(0)
        main = LlamaForCausalLM(_config())
        heads = MTPHeads(main.config, 2)
        cfg = MTPLoss(alpha=[0.15, 0.15], beta=[1.0, 1.0], top_n=10, kl_into=kl_into)
        model = MTPLM(main, heads, cfg).train()
        out = model(x)
        main_p, head_p = list(main.parameters()), list(heads.parameters())
        kl_main = _grads(model, out.kl, main_p)
        res[kl_into] = (
            float(out.loss.detach()),
            [g if g is None else g.clone() for g in kl_main],
            _grads(model, out.loss, head_p),
        )
    loss_all, kl_main_all, head_all = res["all"]
    loss_mod, kl_main_mod, head_mod = res["modules"]
    assert loss_mod == pytest.approx(loss_all, rel=1e-6)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in kl_main_mod)
    assert sum(int(torch.count_nonzero(g)) for g in kl_main_all if g is not None) > 0
    for a, b in zip(head_all, head_mod, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_loss_config_beta_over_k_and_kl_into():
    cfg = MTPLoss.from_config({**LOSS, "beta_over_k": True}, 4, V)
    assert cfg.beta == [0.25] * 4 and cfg.alpha == pytest.approx([0.075] * 4)
    assert MTPLoss.from_config(LOSS, 4, V).beta == [1.0] * 4
    assert MTPLoss.from_config({**LOSS, "top_n_fraction": 1.0}, 2, V).top_n == V
    with pytest.raises(ConfigError, match="kl_into = 'trunk'"):
        MTPLoss.from_config({**LOSS, "kl_into": "trunk"}, 2, V)


def test_untied_output_head_is_its_own_matrix(tmp_path):
    from methods.mtp_d.build import untie_output_head

    torch.manual_seed(0)
    main = LlamaForCausalLM(_config())
    assert main.lm_head.weight is main.get_input_embeddings().weight
    untie_output_head(main)
    emb, out = main.get_input_embeddings().weight, main.lm_head.weight
    assert out is not emb and torch.equal(out, emb)  # a copy of E at initialisation
    heads = MTPHeads(main.config, 1)
    model = MTPLM(main, heads, MTPLoss([0.1], [1.0], top_n=10)).train()
    model(torch.randint(0, V, (2, 10))).loss.backward()
    assert not torch.equal(emb.grad, out.grad)  # two matrices, two gradients
    with torch.no_grad():
        out.add_(1.0)
    main.save_pretrained(tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path)
    assert back.lm_head.weight is not back.get_input_embeddings().weight
    assert torch.equal(back.lm_head.weight, out) and torch.equal(
        back.model.embed_tokens.weight, emb
    )


# ---- looped extension ------------------------------------------------------------------------
def test_looped_copies_are_bit_equal_and_independent():
    torch.manual_seed(0)
    heads = MTPHeads(_config(), 2)
    big = extend_looped(heads, 2)
    assert big.num_modules == 4 and big.schedule == [0, 1, 2, 3]
    for j in range(2):
        a, b = big.mods[j].state_dict(), big.mods[2 + j].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert all(torch.equal(a[k], heads.mods[j].state_dict()[k]) for k in a)
    with torch.no_grad():
        big.mods[2].proj.weight.add_(1.0)
    assert not torch.equal(big.mods[2].proj.weight, big.mods[0].proj.weight)
    assert cyclic_schedule(2, 4) == [0, 1, 0, 1]


def test_extension_trains_only_new_modules():
    torch.manual_seed(0)
    main = LlamaForCausalLM(_config())
    old = MTPHeads(main.config, 2)
    model = MTPLM(main, extend_looped(old, 2), MTPLoss([0.1] * 4, [1.0] * 4, top_n=10))
    freeze_for_extension(model, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    out = model(torch.randint(0, V, (2, 12)))
    out.loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("heads.mods.2.", "heads.mods.3.")) for k in changed)


# ---- decoding --------------------------------------------------------------------------------
def _prompts(seed, lengths):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=gen).tolist() for n in lengths]


@pytest.mark.parametrize("bsz,depth,new", [(1, 2, 30), (3, 2, 30), (3, 1, 17), (2, 2, 1)])
def test_speculative_decoding_is_lossless(trained, bsz, depth, new):
    """Incremental verify loop (preallocated buffers, masks and rotary built once) = greedy,
    for padded batches, one draft depth or two, and budgets that end mid-step."""
    main, heads = trained
    prompts = _prompts(1, [5, 9, 7, 12, 6, 10])
    stats = SpecStats(depth)
    for i in range(0, len(prompts), bsz):
        ids, valid = left_pad(prompts[i : i + bsz], 0)
        want = greedy_decode(main, ids, valid, new)
        got = speculative_decode(main, heads, ids, valid, new, depth=depth, stats=stats)
        assert got.shape == (len(prompts[i : i + bsz]), new) and torch.equal(got, want)
    if new > 1:  # meaningful only if drafts were sometimes accepted and sometimes rejected
        assert 0.0 < stats.car()[0] < 1.0 and stats.accepted[depth - 1] > 0


def test_speculative_loops_and_reuse_are_lossless(trained):
    main, heads = trained
    for h in (extend_looped(heads, 2), MTPHeads(main.config, 2)):
        if h.num_modules == 2:
            h.load_state_dict(heads.state_dict())
            h.set_schedule(cyclic_schedule(2, 4))
        h = h.double().eval()
        for p in _prompts(2, [4, 11, 8]):
            ids, valid = left_pad([p], 0)
            assert torch.equal(
                speculative_decode(main, h, ids, valid, 25), greedy_decode(main, ids, valid, 25)
            )


def test_batched_greedy_equals_one_by_one(trained):
    main, _ = trained
    prompts = _prompts(3, [3, 8, 5])
    ids, valid = left_pad(prompts, 0)
    both = greedy_decode(main, ids, valid, 12)
    for i, p in enumerate(prompts):
        one = greedy_decode(main, *left_pad([p], 0), 12)
        assert torch.equal(both[i], one[0])


def test_drafts_match_teacher_forced_heads(trained):
    """The cached incremental chain drafts what the teacher-forced chain predicts."""
    main, heads = trained
    checked = 0
    for p in _prompts(4, [6, 9]):
        ids, valid = left_pad([p], 0)
        trace = []
        out = speculative_decode(main, heads, ids, valid, 30, trace=trace)
        seq = torch.cat([ids, out], dim=1)
        with torch.no_grad():
            h0 = main.model(input_ids=seq).last_hidden_state
            tf = [lk.argmax(-1)[0] for lk in run_heads(main, heads, seq, h0)]
        for n, drafts in trace:
            for k in range(1, heads.depth + 1):
                if n - 1 + k >= seq.shape[1] or n - 1 >= tf[k - 1].shape[0]:
                    break
                if k > 1 and not torch.equal(seq[0, n + 1 : n + k], drafts[0, : k - 1]):
                    break  # head k saw a rejected draft: nothing to compare
                assert int(drafts[0, k - 1]) == int(tf[k - 1][n - 1])
                checked += 1
    assert checked > 20


# ---- bad input -------------------------------------------------------------------------------
def test_teacher_forced_acceptance_by_definition(trained):
    """Teacher-forced AR/CAR on fixed text, counted position by position from the definitions."""
    main, heads = trained
    windows = _prompts(5, [14, 9, 3])  # the 3-token window has no scored position
    ref, agree = teacher_forced_acceptance(main, heads, windows)
    want_ref, want_agree = [0, 0], [0, 0]
    att_ref, steps = [0, 0], 0
    with torch.no_grad():
        for w in windows[:2]:
            seq = torch.tensor([w])
            h0 = main.model(input_ids=seq).last_hidden_state
            top0 = main.lm_head(h0).argmax(-1)[0].tolist()
            top = [lk.argmax(-1)[0].tolist() for lk in run_heads(main, heads, seq, h0)]
            for i in range(len(w) - 3):
                steps += 1
                ok_ref = ok_agree = True
                for k in (1, 2):
                    att_ref[k - 1] += ok_ref
                    ok_ref = ok_ref and top[k - 1][i] == w[i + k + 1]
                    ok_agree = ok_agree and top[k - 1][i] == top0[i + k]
                    want_ref[k - 1] += ok_ref
                    want_agree[k - 1] += ok_agree
    assert ref.steps == agree.steps == steps == 11 + 6
    assert ref.accepted == want_ref and agree.accepted == want_agree
    assert ref.attempted == att_ref
    assert ref.car() == pytest.approx([a / steps for a in want_ref])
    assert ref.tau() == pytest.approx(1 + sum(want_ref) / steps)
    assert want_agree[0] > want_ref[0]  # distilled heads follow the main head, not random text


def test_bad_inputs_name_the_value(tmp_path):
    cfg = _config()
    with pytest.raises(ConfigError, match="K = 0"):
        MTPHeads(cfg, 0)
    with pytest.raises(ConfigError, match="top_n = 50 is larger than the vocabulary size 40"):
        MTPLoss.from_config({**LOSS, "top_n": 50}, 2, V)
    with pytest.raises(ConfigError, match="top_n = 41"):
        topn_kl(torch.zeros(1, V), torch.zeros(1, V), 41)
    with pytest.raises(ConfigError, match="needs a model with trained MTP heads"):
        extend_looped(None)
    torch.manual_seed(0)
    MTPHeads(cfg, 2).save(tmp_path / "a")
    other = LlamaForCausalLM(_config(hidden=48))
    with pytest.raises(
        ConfigError, match="hidden_size 32 does not match the main model's hidden_size 48"
    ):
        load_heads(tmp_path / "a", other)
    with pytest.raises(ConfigError, match="vocab_size 40 does not match"):
        load_heads(tmp_path / "a", LlamaForCausalLM(_config(vocab=50)))
    with pytest.raises(ConfigError, match="no trained MTP heads"):
        load_heads(tmp_path / "missing", other)


def test_scale_config_errors_name_the_key(tmp_path, root):
    import yaml

    from claimbench.config import load_scale

    data = yaml.safe_load((root / "config/scales/tiny.yaml").read_text())
    data["papers"]["mtp_d"]["heads"] = 0
    bad = tmp_path / "tiny.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"papers.mtp_d: heads: 0 is less than the minimum of 1"):
        load_scale("tiny", bad)
    data["papers"]["mtp_d"]["heads"] = 2
    data["papers"]["mtp_d"]["loop"]["sources"] = ["ntp"]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"loop.sources.0: 'ntp' is not one of"):
        load_scale("tiny", bad)


# ---- the pipeline on a micro config ----------------------------------------------------------
def test_pipeline_micro(tmp_path):
    from transformers import AutoTokenizer

    from methods.lm.tokenizer import save_tokenizer, train_tokenizer
    from methods.mtp_d import build, speculative
    from tests.posttrain_fixtures import scale_file

    torch.set_num_threads(1)
    data = tmp_path / "data"
    (data / "arith").mkdir(parents=True)
    (data / "text").mkdir()
    probs = [
        {
            "id": f"add-{i}",
            "prompt": f"Question: What is {i} + {i + 1}?\nAnswer:",
            "short": str(2 * i + 1),
            "long": f"First, {i} + {i + 1} = {2 * i + 1}. So the answer is {2 * i + 1}.",
        }
        for i in range(30)
    ]
    for name in ("train.jsonl", "test_id.jsonl"):
        (data / "arith" / name).write_text("".join(json.dumps(p) + "\n" for p in probs))
    text = "\n\n".join(f"To be or not to be, line {i}, that is the question." for i in range(60))
    (data / "text" / "train.txt").write_text(text)
    (data / "text" / "test.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "text": text[i * 50 :]}) + "\n" for i in range(3))
    )
    tok_dir = tmp_path / "tok"
    save_tokenizer(train_tokenizer(text.split("\n\n") + [p["long"] for p in probs], 300), tok_dir)
    spec = {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "intermediate_size": 32,
        "max_position_embeddings": 128,
    }
    train = {"steps": 3, "batch_size": 4, "seq_len": 16, "lr": 0.01, "warmup_steps": 1}
    section = {
        "architecture": spec,
        "heads": 2,
        "tie_embeddings": False,
        "train": train,
        "loss": {"mtp_lambda": 0.3, "beta": 1.0, "top_n_fraction": 0.08},
        "variants": ["ntp", "mtp", "mtp_d"],
        "loop": {"sources": ["mtp_d"], "factors": [2], "train": train},
        "reuse": {"sources": ["mtp_d"], "depth": 4},
        "speculative": {"n_prompts": 4, "new_tokens": 6, "batch_sizes": [1, 2], "repeats": 2},
    }
    sf = scale_file(tmp_path / "scale.yaml", "mtp_d", section)
    job = ["--scale", "tiny", "--paper", "mtp_d", "--scale-file", str(sf)]
    common = ["--tokenizer", str(tok_dir), "--text", str(data / "text" / "train.txt")]
    common += ["--arith", str(data / "arith" / "train.jsonl")]
    art = tmp_path / "art"
    for v in ("ntp", "mtp", "mtp_d"):
        build.main(["train", *job, "--variant", v, "--out", str(art / v), *common])
    build.main(
        ["extend", *job, "--variant", "mtp_d_loop4", "--source", str(art / "mtp_d")]
        + ["--factor", "2", "--out", str(art / "mtp_d_loop4"), *common]
    )
    loop_meta = json.loads((art / "mtp_d_loop4" / "meta.json").read_text())
    assert loop_meta["main_weights_sha256"] == loop_meta["source_main_weights_sha256"]
    assert loop_meta["name"] == "mtp_d_loop4" and loop_meta["paper"] == "mtp_d"
    assert loop_meta["base_model"] == "mtp_d-arch" and loop_meta["dtype"] == "float32"
    # the main model loads alone; the heads load beside it
    main = LlamaForCausalLM.from_pretrained(art / "mtp_d")
    assert load_heads(art / "mtp_d", main).num_modules == 2
    assert main.lm_head.weight is not main.get_input_embeddings().weight  # tie_embeddings: false
    loop_main = LlamaForCausalLM.from_pretrained(art / "mtp_d_loop4")
    assert torch.equal(loop_main.lm_head.weight, main.lm_head.weight)
    assert AutoTokenizer.from_pretrained(art / "mtp_d") is not None
    with pytest.raises(SystemExit):  # a model with no heads cannot be extended
        build.main(
            ["extend", *job, "--variant", "x", "--source", str(art / "ntp"), "--factor", "2"]
            + ["--out", str(tmp_path / "x"), *common]
        )
    runs = tmp_path / "runs"
    speculative.main(
        [*job, "--variant", "speculative", "--artifacts", str(art), "--data-dir", str(data)]
        + ["--variants", "ntp,mtp,mtp_d,mtp_d_loop4", "--reuse", "mtp_d:4", "--out", str(runs)]
    )
    names = {"ntp", "mtp_1head", "mtp", "mtp_d", "mtp_d_loop4", "mtp_d_reuse4"}
    assert {p.parent.name for p in runs.glob("*/speculative.json")} == names
    rec = load_run_record(runs / "mtp_d_loop4" / "speculative.json")
    assert rec["suite"] == "speculative" and rec["variant"] == "mtp_d_loop4"
    assert rec["config"]["dtype"] == "float32" and rec["config"]["device"] == "cpu"
    assert rec["config"]["prompt_tokens"] == 24  # the schema's default
    m = {(x["task"], x["metric"]): x["value"] for x in rec["metrics"]}
    assert m[("spec_b1", "lossless")] == 1.0
    assert {f"car_{k}" for k in range(1, 5)} <= {k[1] for k in m}
    assert m[("spec_b1", "tau")] == pytest.approx(
        1 + sum(m[("spec_b1", f"car_{k}")] for k in range(1, 5))
    )
    assert m[("spec_b2", "speedup_vs_greedy")] > 0
    for task in ("tf_text", "tf_text_main"):  # teacher-forced acceptance on held-out text
        assert 0.0 <= m[(task, "car_4")] <= m[(task, "car_1")] <= 1.0
        assert m[(task, "tau")] == pytest.approx(
            1 + sum(m[(task, f"car_{k}")] for k in range(1, 5))
        )
    assert rec["config"]["acceptance_modes"]["tf_text"].startswith("teacher_forced")
    assert [s["name"] for s in rec["series"]] == [
        "cumulative acceptance CAR per head",
        "conditional acceptance AR per head",
    ]
