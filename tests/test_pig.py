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


CAPTIONS = ["a red circle moves left", "a small blue square stays still", "a green ring rises"]


@pytest.mark.parametrize(
    "device,dtype", [("cpu", "float32"), ("cuda", "float32"), ("cuda", "bfloat16")]
)
def test_towers_and_training_follow_the_job_device_and_dtype(device, dtype):
    """A float32 model moved like ``job.to`` encodes on that device as the CPU model does (exactly
    on the CPU), stores a float32 index, and trains repeatably there (deterministic kernels)."""
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

    def moved():
        return copy.deepcopy(ref).to(device=device, dtype=getattr(torch, dtype))

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
            ),
            "splits": splits,
            "benchmarks": {"shapes": {"train": "train", "tests": ["t1k", "multi"]}},
            "pretrain": {
                "split": "pretrain",
                "vocab_splits": ["train"],
                "tower": tower,
                "train": {"steps": 3, "batch_size": 8, "lr": 1e-3},
            },
            "finetune": {"gen_lambda": 1.0, "train": {"steps": 2, "batch_size": 8, "lr": 1e-3}},
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
    for name in ("pretrain", "train", "t1k", "multi"):
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
        record = runs / art.name / "retrieval.json"
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
    rec = load_run_record(runs / "pig-s0" / "retrieval.json")
    assert rec["suite"] == "retrieval" and rec["variant"] == "pig"
    assert (runs / "pig-s0" / "retrieval.t1k.sim.npy").is_file()
    assert np.load(runs / "pig-s0" / "retrieval.multi.sim.npy").shape == (12, 6)
    cost.main(
        [*job, "--variant", "cost", "--seed", "0", "--out", str(runs / "pig-s0" / "cost.json")]
        + ["--baseline", str(tmp_path / "two_tower-s0"), "--pig", str(tmp_path / "pig-s0")]
        + ["--data", str(data), "--out-baseline", str(runs / "two_tower-s0" / "cost.json")]
    )
    c = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(runs / "pig-s0" / "cost.json")["metrics"]
    }
    b = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(runs / "two_tower-s0" / "cost.json")["metrics"]
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
    assert status["r1"] in ("held", "failed")
    assert "over seeds [0]" in detail["r1"] and "paired over 10 docs" in detail["r1"]
