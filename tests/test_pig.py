"""PIG: equations on hand-made tensors, query independence, and the pipeline on a micro config."""

from __future__ import annotations

import copy
import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.pig.model import (
    PseudoInteraction,
    RetrievalModel,
    TowerConfig,
    generation_loss,
    informative_tokens,
    nce_loss,
    query_scores,
    vip_mask,
)
from methods.pig.train import (
    SplitData,
    Vocab,
    encode_texts,
    encode_videos,
    set_determinism,
    train,
)

MICRO = dict(
    frames=2,
    image_size=16,
    patch=8,
    vision_width=16,
    vision_heads=2,
    vision_layers=2,
    text_width=16,
    text_heads=2,
    text_layers=1,
    context_length=24,
    vocab_size=40,
    embed_dim=16,
    its_top_k=3,
)


def _frames(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 2, 16, 16, 3), generator=g, dtype=torch.uint8)


def _ln(x, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def test_fusion_at_init_equals_hand_formula():
    torch.manual_seed(0)
    d = 8
    fusion = PseudoInteraction(d, dropout=0.1).eval()
    for lin in (fusion.wq, fusion.wk, fusion.wv, fusion.wo, fusion.wl):
        assert torch.equal(lin.weight, torch.eye(d)) and torch.equal(lin.bias, torch.zeros(d))
    q_hat, x_f = torch.randn(2, d), torch.randn(2, 5, d)
    # identity projections, LN with unit gain/zero bias:
    q = _ln(q_hat)
    k = v = _ln(x_f)
    a = torch.softmax(torch.einsum("bmd,bd->bm", k, q) / math.sqrt(d), dim=-1)
    o = _ln(torch.einsum("bm,bmd->bd", a, v))
    expected = _ln(o + o)  # W_l = I, dropout off in eval
    assert torch.allclose(fusion(q_hat, x_f), expected, atol=1e-5)


def test_its_never_selects_global_or_frame_cls():
    torch.manual_seed(0)
    cfg = TowerConfig(**MICRO)
    model = RetrievalModel(cfg, "pig").eval()
    fcls = model.video.frame_cls_index()
    n = cfg.n_global + cfg.frames * (1 + cfg.patches)
    scores = torch.rand(4, n)
    scores[:, : cfg.n_global] = 10.0  # the most attended tokens are global / frame-CLS
    scores[:, fcls] = 9.0
    sel = informative_tokens(scores, cfg.n_global, fcls, cfg.its_top_k)
    assert sel.shape == (4, cfg.its_top_k)
    bad = set(range(cfg.n_global)) | set(fcls.tolist())
    assert not bad & set(sel.flatten().tolist())
    # sorted by score, and really the top-k patches
    vals = scores.gather(1, sel)
    assert (vals[:, :-1] >= vals[:, 1:]).all()


def test_vip_mask_frame_local():
    m = vip_mask(2, 2, 3)  # 2 globals, 2 frames of 3 tokens
    allowed = m == 0
    assert allowed[:2].all() and allowed[:, :2].all()
    assert allowed[2:5, 2:5].all() and not allowed[2:5, 5:].any() and not allowed[5:, 2:5].any()


def test_losses_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # cos = 1 and 0 -> (0 + 2) / 2
    assert generation_loss(q, t).item() == pytest.approx(1.0)
    s = torch.tensor(math.log(10.0))
    logits = 10.0 * torch.eye(2)
    ce = F.cross_entropy(logits, torch.arange(2)).item()
    assert nce_loss(t, t, s).item() == pytest.approx(2 * ce)  # both directions summed


@pytest.mark.parametrize("arm", ["pig", "pig_static", "two_tower"])
def test_video_encoding_independent_of_queries(arm):
    torch.manual_seed(0)
    cfg = TowerConfig(**MICRO)
    model = RetrievalModel(cfg, arm).eval()
    assert list(inspect.signature(model.encode_video).parameters) == ["frames"]
    vocab = Vocab.build(["a red circle moves left", "a small blue square stays still"])
    frames = _frames()
    with torch.no_grad():
        v1 = model.encode_video(frames)[0]
        ta, ea = vocab.encode(["a red circle moves left"], cfg.context_length)
        query_scores(model, ta, ea, F.normalize(v1, dim=-1))
        v2 = model.encode_video(frames)[0]
        tb, eb = vocab.encode(["a small blue square stays still", "a red"], cfg.context_length)
        query_scores(model, tb, eb, F.normalize(v2, dim=-1))
        v3 = model.encode_video(frames)[0]
    assert torch.equal(v1, v2) and torch.equal(v2, v3)
    assert v1.shape == (3, cfg.embed_dim) and v1.dtype == torch.float32


def test_generator_starts_from_text_tower_and_constant_bos_eos():
    torch.manual_seed(0)
    model = RetrievalModel(TowerConfig(**MICRO), "pig")
    g, t = model.generator, model.text
    assert torch.equal(g.blocks[0].attn.qkv.weight, t.blocks[0].attn.qkv.weight)
    assert g.blocks[0].attn.qkv.weight.data_ptr() != t.blocks[0].attn.qkv.weight.data_ptr()
    names = {n for n, _ in g.named_parameters()}
    assert "e_bos" not in names and "e_eos" not in names  # buffers, no gradient


@pytest.mark.parametrize("arm", ["pig", "pig_nogen", "pig_static"])
def test_pig_arms_start_exactly_as_two_tower(arm, tmp_path):
    """Step 0 of every PIG arm (theta_0 -> arm, the fine-tuning path) stores the Two-Tower
    vector bit for bit, so it scores every query exactly as Two-Tower; the released code's
    reading (v_hat = fusion output, ``video_residual`` false) does not."""
    from methods.pig.train import load_model, save_model

    torch.manual_seed(0)
    vocab = Vocab.build(CAPTIONS)
    frames = _frames(4)
    tokens, eot = vocab.encode(CAPTIONS, MICRO["context_length"])
    scores = {}
    for residual in (True, False):
        cfg = TowerConfig(**MICRO, video_residual=residual)
        save_model(RetrievalModel(cfg, "two_tower"), vocab, tmp_path / str(residual))
        with torch.no_grad():
            for a in ("two_tower", arm):
                model, _ = load_model(tmp_path / str(residual), arm=a)
                index = F.normalize(model.encode_video(frames)[0], dim=-1)
                scores[residual, a] = query_scores(model, tokens, eot, index)
    assert torch.equal(scores[True, arm], scores[True, "two_tower"])
    assert not torch.allclose(scores[False, arm], scores[False, "two_tower"], atol=1e-3)
    model, _ = load_model(tmp_path / "True", arm=arm)
    assert model.fusion_gate.item() == 0.0 and model.fusion_gate.requires_grad


def test_fusion_gate_learns_and_the_fusion_then_moves_the_vector():
    """The zero gate is not a dead end: one update moves it, and then the fused vector counts."""
    torch.manual_seed(0)
    cfg = TowerConfig(**MICRO)
    model = RetrievalModel(cfg, "pig")
    vocab = Vocab.build(CAPTIONS)
    data = SplitData(CAPTIONS, np.arange(3), ["v0", "v1", "v2"], _frames(3).numpy())
    before = model.fusion_gate.item()
    train(
        model,
        vocab,
        data,
        steps=2,
        batch_size=3,
        lr=1e-2,
        seed=0,
        gen_lambda=1.0,
        weight_decay=0.2,
        warmup_ratio=0.01,
        grad_clip=1.0,
        log_every=1,
    )
    assert before == 0.0 and model.fusion_gate.item() != 0.0


def test_learning_curve_rows_and_series():
    from methods.pig.train import curves, val_r1

    torch.manual_seed(0)
    model = RetrievalModel(TowerConfig(**MICRO), "pig")
    vocab = Vocab.build(CAPTIONS)
    data = SplitData(CAPTIONS, np.arange(3), ["v0", "v1", "v2"], _frames(3).numpy())
    log = train(
        model,
        vocab,
        data,
        steps=3,
        batch_size=3,
        lr=1e-3,
        seed=0,
        gen_lambda=1.0,
        weight_decay=0.2,
        warmup_ratio=0.01,
        grad_clip=1.0,
        log_every=2,
        eval_every=2,
        val=data,
    )
    ev = [r for r in log if "val_R1" in r]
    assert [r["step"] for r in ev] == [0, 2, 3]
    assert ev[-1]["val_R1"] == val_r1(model, vocab, data)  # the final point is the final model
    assert all(r["val_R1"] * 3 / 100 == pytest.approx(round(r["val_R1"] * 3 / 100)) for r in ev)
    named = {c["name"]: c for c in curves(log)}
    assert named["train_loss"]["x"] == [0.0, 2.0]
    assert named["val_R1"]["y"] == [r["val_R1"] for r in ev]


CAPTIONS = ["a red circle moves left", "a small blue square stays still", "a green ring rises"]


@pytest.mark.parametrize(
    "device,dtype", [("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")]
)
def test_towers_and_training_follow_the_job_device_and_dtype(device, dtype):
    """A float32 model placed on the job's device (``dtype``: the autocast dtype) encodes there as
    the CPU model does (exactly on the CPU), stores a float32 index, and trains repeatably
    there (deterministic kernels)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    set_determinism()
    torch.manual_seed(0)
    ref = RetrievalModel(TowerConfig(**MICRO), "pig").eval()
    vocab = Vocab.build(CAPTIONS)
    frames = _frames(b=3).numpy()
    data = SplitData(CAPTIONS, np.arange(3), ["v0", "v1", "v2"], frames)
    settings = dict(steps=3, batch_size=3, lr=1e-3, seed=0, gen_lambda=1.0, weight_decay=0.2)
    settings.update(warmup_ratio=0.01, grad_clip=1.0, log_every=1)

    from methods.pig.train import place

    def moved():
        return place(copy.deepcopy(ref), device, dtype)

    model = moved()
    idx, txt = encode_videos(model, frames), encode_texts(model, vocab, CAPTIONS)
    assert idx.device.type == txt.device.type == device
    assert idx.dtype == txt.dtype == torch.float32
    ref_idx, ref_txt = encode_videos(ref, frames), encode_texts(ref, vocab, CAPTIONS)
    if device == "cpu":
        assert torch.equal(idx, ref_idx) and torch.equal(txt, ref_txt)
    else:
        tol = 1e-3 if dtype == "float32" else 0.1
        assert torch.allclose(idx.cpu(), ref_idx, atol=tol)
        assert torch.allclose(txt.cpu(), ref_txt, atol=tol)
    tokens, eot = vocab.encode(CAPTIONS[:1], model.cfg.context_length)
    with torch.no_grad():
        s = query_scores(model, tokens.to(device), eot.to(device), idx)
    assert s.shape == (1, 3) and s.dtype == torch.float32
    logs = []
    for _ in range(2):
        torch.manual_seed(1)
        m = moved()
        logs.append(train(m, vocab, data, **settings))
        assert next(m.parameters()).device.type == device
    assert all(math.isfinite(r["loss"]) for r in logs[0])
    assert logs[0] == logs[1]  # same seed, same device: the same run


def _micro_scale(path):
    """A tiny scale file whose ``papers.pig`` section is the micro pipeline (a job's --scale-file)."""
    import yaml

    from claimbench.config import CONFIG_DIR

    scale = yaml.safe_load((CONFIG_DIR / "scales" / "tiny.yaml").read_text())
    tower = {k: v for k, v in MICRO.items() if k not in ("frames", "image_size", "vocab_size")}
    splits = {
        "pretrain": {"annotations": "{generated}/pretrain.jsonl"},
        "train": {"annotations": "{generated}/train.jsonl"},
        "t1k": {"annotations": "{generated}/MSRVTT_JSFUSION_test.csv"},
        "multi": {"annotations": "{generated}/MSRVTT_data.json", "split": "test"},
        "val": {"annotations": "{generated}/val.jsonl"},
    }
    for spec in splits.values():
        spec["frames"] = "{generated}/frames"
    scale["papers"] = {
        "pig": {
            "seeds": [0],
            "arms": ["two_tower", "pig"],
            "generator": dict(
                frames=2,
                size=16,
                max_objects=2,
                captions_per_video=2,
                n_pretrain=24,
                n_train=24,
                n_test1k=10,
                n_test_multi=6,
                n_val=8,
            ),
            "splits": splits,
            "benchmarks": {"shapes": {"train": "train", "tests": ["t1k", "multi"], "val": "val"}},
            "pretrain": {
                "split": "pretrain",
                "vocab_splits": ["train"],
                "tower": tower,
                "train": {"steps": 3, "batch_size": 8, "lr": 1e-3},
            },
            "finetune": {
                "gen_lambda": 1.0,
                "logit_scale_init": 4.6,
                "eval_every": 1,
                "train": {"steps": 2, "batch_size": 8, "lr": 1e-3},
            },
            "cost": {"benchmark": "shapes", "test": "t1k", "seed": 0, "queries": 3, "repeats": 2},
        }
    }
    path.write_text(yaml.safe_dump(scale))
    return path


def test_pipeline_micro(tmp_path, monkeypatch):
    """generate -> prepare -> stage 0 -> two arms -> suite -> cost -> ingest -> claims, each step
    through its entry point with the job options (scale file: the micro ``papers.pig``)."""
    from benchmarks.data import moving_shapes
    from benchmarks.retrieval import prepare, suite
    from claimbench.records import load_run_record
    from claimbench.store import ingest
    from methods.pig import build, cost

    sf = _micro_scale(tmp_path / "scale.yaml")
    job = ["--scale", "tiny", "--scale-file", str(sf), "--paper", "pig", "--device", "cpu"]
    gen = tmp_path / "gen"
    moving_shapes.main([*job, "--variant", "moving_shapes", "--out", str(gen)])
    data = tmp_path / "data"
    for name in ("pretrain", "train", "t1k", "multi", "val"):
        prepare.main([*job, "--variant", name, "--out", str(data), "--generated", str(gen)])
    assert json.loads((data / "multi.manifest.json").read_text())["format"] == "msrvtt_json"
    build.main(
        ["pretrain", *job, "--variant", "theta0", "--out", str(tmp_path / "theta0")]
        + ["--data", str(data)]
    )
    theta0 = json.loads((tmp_path / "theta0" / "meta.json").read_text())
    assert theta0["variant"] == theta0["name"] == "theta0" and theta0["dtype"] == "float32"
    # schema defaults reach the training loop (the scale file names none of these)
    assert theta0["config"]["train"]["weight_decay"] == 0.2
    runs = tmp_path / "runs" / "tiny" / "pig"
    for arm in ("two_tower", "pig"):
        art = tmp_path / f"{arm}-s0"
        build.main(
            ["finetune", *job, "--variant", arm, "--seed", "0", "--out", str(art)]
            + ["--data", str(data), "--init", str(tmp_path / "theta0"), "--benchmark", "shapes"]
        )
        meta = json.loads((art / "meta.json").read_text())
        assert meta["variant"] == meta["arm"] == arm and meta["seed"] == 0
        record = runs / f"shapes-{art.name}" / "retrieval.json"
        suite.main(
            [*job, "--variant", arm, "--seed", "0", "--out", str(record)]
            + ["--artifact", str(art), "--data", str(data), "--tests", "t1k,multi"]
        )
    # a record takes the job's variant and seed: an artifact of another arm or seed is refused
    for wrong in (["--variant", "pig", "--seed", "0"], ["--variant", "two_tower", "--seed", "1"]):
        with pytest.raises(SystemExit) as exc:
            suite.main(
                [*job, *wrong, "--out", str(tmp_path / "wrong" / "retrieval.json")]
                + ["--artifact", str(tmp_path / "two_tower-s0"), "--data", str(data)]
                + ["--tests", "t1k"]
            )
        assert exc.value.code == 2
    assert not (tmp_path / "wrong" / "retrieval.json").exists()
    rec = load_run_record(runs / "shapes-pig-s0" / "retrieval.json")
    assert rec["suite"] == "retrieval" and rec["variant"] == "pig"
    # learning curves: loss per logged step, val R@1 at step 0, after each update and at the end;
    # at step 0 PIG scores exactly as Two-Tower (same theta_0, zero fusion gate)
    base = load_run_record(runs / "shapes-two_tower-s0" / "retrieval.json")
    curves = {c["name"]: c for c in rec["series"]}
    base_curves = {c["name"]: c for c in base["series"]}
    assert {"train_loss", "train_nce", "train_gen", "val_R1"} <= set(curves)
    assert "train_gen" not in base_curves  # no L_gen in the Two-Tower arm
    assert curves["val_R1"]["x"] == [0.0, 1.0, 2.0]
    assert curves["val_R1"]["y"][0] == base_curves["val_R1"]["y"][0]
    # the log inverse temperature is reset to finetune.logit_scale_init (theta_0's is ~2.66)
    from safetensors.torch import load_file

    s0 = load_file(str(tmp_path / "theta0" / "model.safetensors"))["logit_scale"].item()
    for arm in ("two_tower", "pig"):
        s = load_file(str(tmp_path / f"{arm}-s0" / "model.safetensors"))["logit_scale"].item()
        assert abs(s - 4.6) < 0.01 and abs(s0 - 4.6) > 1
    assert (runs / "shapes-pig-s0" / "retrieval.t1k.sim.npy").is_file()
    assert np.load(runs / "shapes-pig-s0" / "retrieval.multi.sim.npy").shape == (12, 6)
    cost.main(
        [
            *job,
            "--variant",
            "cost",
            "--seed",
            "0",
            "--out",
            str(runs / "shapes-pig-s0" / "cost.json"),
        ]
        + ["--baseline", str(tmp_path / "two_tower-s0"), "--pig", str(tmp_path / "pig-s0")]
        + ["--data", str(data), "--out-baseline", str(runs / "shapes-two_tower-s0" / "cost.json")]
    )
    c = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(runs / "shapes-pig-s0" / "cost.json")["metrics"]
    }
    b = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(runs / "shapes-two_tower-s0" / "cost.json")["metrics"]
    }
    assert (
        c[("index", "bytes_per_video")] == b[("index", "bytes_per_video")] == 4 * MICRO["embed_dim"]
    )
    assert c[("query", "latency_ratio")] > 0
    methods = tmp_path / "methods" / "pig"
    methods.mkdir(parents=True)
    claims = {
        "paper": "pig",
        "title": "PIG",
        "claims": [
            {
                "id": "storage",
                "statement": "equal",
                "scales": ["tiny"],
                "check": {
                    "compare": {
                        "lhs": {
                            "variant": "pig",
                            "suite": "cost",
                            "task": "index",
                            "metric": "bytes_per_video",
                        },
                        "op": "<=",
                        "rhs": {
                            "variant": "two_tower",
                            "suite": "cost",
                            "task": "index",
                            "metric": "bytes_per_video",
                        },
                    }
                },
            },
            {
                "id": "r1",
                "statement": "above",
                "scales": ["tiny"],
                "check": {
                    "seeds": {
                        "seeds": [0],
                        "compare": {
                            "lhs": {
                                "variant": "pig",
                                "suite": "retrieval",
                                "task": "t1k_t2v",
                                "metric": "R1",
                            },
                            "op": ">=",
                            "rhs": {
                                "variant": "two_tower",
                                "suite": "retrieval",
                                "task": "t1k_t2v",
                                "metric": "R1",
                            },
                        },
                    }
                },
            },
        ],
    }
    (methods / "claims.yaml").write_text(json.dumps(claims))
    db = tmp_path / "c.duckdb"
    ingest(tmp_path / "runs", db, tmp_path / "methods")
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    status = dict(con.execute("SELECT claim_id, status FROM claim_checks").fetchall())
    detail = dict(con.execute("SELECT claim_id, detail FROM claim_checks").fetchall())
    assert status["storage"] == "held"
    assert status["r1"] in ("held", "failed", "inconclusive")  # decided over the seeds
    assert "over seeds [0]" in detail["r1"] and "over 10 docs" in detail["r1"]


# -- paper scale: CLIP ViT-B/32 towers (micro CLIP in the same transformers classes) ---------
@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory):
    from methods.pig.smoke import micro_clip_checkpoint

    return micro_clip_checkpoint(tmp_path_factory.mktemp("clip") / "clip")


def _clip_theta0(ckpt, **tower):
    from methods.pig.build import clip_theta0
    from methods.pig.smoke import MICRO_TOWER

    return clip_theta0(MICRO_TOWER | tower, "openai/clip-vit-base-patch32", str(ckpt), "pt")


def test_clip_init_from_equals_clipmodel_features(micro_ckpt, tmp_path):
    """init_from: our towers' embeddings are CLIPModel's get_text_features / get_image_features
    on the same inputs (each frame's CLS through the video tower's own path), before training;
    the new tokens start from CLIP's class embedding, the temporal embedding at zero; saved
    and reloaded as another arm, the towers are unchanged and G is a copy of the text layers."""
    from transformers import CLIPModel

    from methods.pig.train import load_model, save_model

    model, tok, _ = _clip_theta0(micro_ckpt)
    ref = CLIPModel.from_pretrained(str(micro_ckpt), dtype=torch.float32).eval()
    assert tok.bos != tok.eos and model.cfg.backbone == "clip" and model.cfg.embed_dim == 16
    tokens, eot = tok.encode(CAPTIONS, model.cfg.context_length)
    px = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = model.encode_text(tokens, eot)
        assert torch.allclose(t, ref.get_text_features(input_ids=tokens).pooler_output, atol=1e-6)
        h, _ = model.video(px, with_globals=False)
        frame_cls = h[:, torch.arange(3) * model.video.per_frame].flatten(0, 1)
        img = ref.get_image_features(pixel_values=px.flatten(0, 1)).pooler_output
        assert torch.allclose(frame_cls, img, atol=1e-6)
    e = ref.vision_model.embeddings
    start = e.class_embedding + e.position_embedding.weight[0]
    assert torch.allclose(model.video.global_embedding, start.expand(4, -1))
    assert not model.video.temporal_embedding.any()
    assert torch.equal(model.logit_scale, ref.logit_scale)
    save_model(model, tok, tmp_path / "theta0")
    pig, tok2 = load_model(tmp_path / "theta0", arm="pig")
    with torch.no_grad():
        assert torch.equal(pig.encode_text(*tok2.encode(CAPTIONS, 32)), t)
        v, q_hat = pig.encode_video(px)
    assert v.shape == (2, 16) and q_hat.shape == (2, 16)
    g, txt = pig.generator, pig.text.model
    assert torch.equal(g.layers[0].mlp.fc1.weight, txt.encoder.layers[0].mlp.fc1.weight)
    assert g.layers[0].mlp.fc1.weight.data_ptr() != txt.encoder.layers[0].mlp.fc1.weight.data_ptr()
    assert torch.equal(g.e_bos, txt.embeddings.token_embedding.weight[tok.bos])


def test_clip_vip_attention_is_frame_local():
    """The ViP pattern handed to CLIP's layers: globals see all and are seen by all; a frame's
    tokens see their own frame only (besides the globals)."""
    from methods.pig.clip import vip_allowed

    allowed = vip_allowed(2, 2, 3)
    assert allowed[:2].all() and allowed[:, :2].all()
    assert allowed[2:5, 2:5].all() and not allowed[2:5, 5:].any() and not allowed[5:, 2:5].any()


def test_clip_init_errors_name_key_and_value(micro_ckpt, tmp_path):
    from claimbench.errors import ConfigError, ModelNotAvailableError
    from methods.pig.build import clip_theta0

    with pytest.raises(ConfigError, match=r"pt\.tower\.vision_width: 768 but the CLIP checkpoint"):
        _clip_theta0(micro_ckpt, vision_width=768)
    with pytest.raises(ModelNotAvailableError, match=r"pt\.local_path: '.*nowhere'.*init_from"):
        clip_theta0({}, "openai/clip-vit-base-patch32", str(tmp_path / "nowhere"), "pt")


def test_mixed_precision_keeps_float32_master_weights():
    """place(): a bfloat16 job trains a float32 model under autocast (outputs differ from the
    float32 run, weights and optimizer state stay float32, losses finite)."""
    from methods.pig.train import autocast, place

    torch.manual_seed(0)
    ref = RetrievalModel(TowerConfig(**MICRO), "pig").eval()
    frames = _frames(b=3)
    m = place(copy.deepcopy(ref), "cpu", "bfloat16")
    assert (
        m.amp_dtype == torch.bfloat16
        and place(copy.deepcopy(ref), "cpu", "float32").amp_dtype is None
    )
    with torch.no_grad(), autocast(m):
        v_amp = m.encode_video(frames)[0]
    with torch.no_grad():
        v_ref = ref.encode_video(frames)[0]
    assert v_amp.dtype == torch.bfloat16 and not torch.equal(v_amp.float(), v_ref)
    assert torch.allclose(v_amp.float(), v_ref, atol=0.2)
    data = SplitData(CAPTIONS, np.arange(3), ["v0", "v1", "v2"], frames.numpy())
    log = train(
        m,
        Vocab.build(CAPTIONS),
        data,
        steps=2,
        batch_size=3,
        lr=1e-3,
        seed=0,
        gen_lambda=1.0,
        weight_decay=0.2,
        warmup_ratio=0.01,
        grad_clip=1.0,
        log_every=1,
    )
    assert all(math.isfinite(r["loss"]) for r in log)
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_streamed_frames_train_as_in_memory(tmp_path):
    """Training on frames streamed from a packed .npy (memory map, DataLoader with a worker)
    gives the same run as on the same frames in memory."""
    from benchmarks.retrieval.frames import VideoFrames

    frames = _frames(b=4, seed=3).numpy()
    np.save(tmp_path / "f.npy", frames)
    caps = CAPTIONS + ["a white cross falls"]
    vocab = Vocab.build(caps)
    settings = dict(steps=3, batch_size=2, lr=1e-3, seed=0, gen_lambda=1.0, weight_decay=0.2)
    settings.update(warmup_ratio=0.01, grad_clip=1.0, log_every=1)
    logs = []
    for source, workers in ((frames, 0), (tmp_path / "f.npy", 1)):
        torch.manual_seed(0)
        m = RetrievalModel(TowerConfig(**MICRO), "pig")
        streamed = VideoFrames(["a", "b", "c", "d"], source)
        data = SplitData(caps, np.arange(4), ["a", "b", "c", "d"], streamed)
        logs.append(train(m, vocab, data, workers=workers, **settings))
    assert logs[0] == logs[1]


@pytest.mark.slow
def test_gpu_smoke_cpu(tmp_path):
    """make gpu-smoke's PIG area on the CPU in bfloat16 (micro CLIP, a few steps per arm)."""
    from methods.pig.smoke import gpu_smoke

    lines = gpu_smoke("cpu", "bfloat16", tmp_path)
    assert len(lines) == 4 and "R@1" in lines[1] and "pig on cpu bfloat16" in lines[2]
