"""PIG: equations on hand-made tensors, query independence, and the pipeline on a micro config."""

from __future__ import annotations

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
from methods.pig.train import Vocab

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


def test_pipeline_micro(tmp_path, monkeypatch):
    """generate -> prepare -> stage 0 -> two arms -> suite -> cost -> ingest -> claims."""
    from benchmarks.data import moving_shapes
    from benchmarks.retrieval import prepare, suite
    from claimbench.records import load_run_record
    from claimbench.store import ingest
    from methods.pig import build, cost

    gen = tmp_path / "gen"
    moving_shapes.build(
        dict(
            frames=2,
            size=16,
            max_objects=2,
            captions_per_video=2,
            n_pretrain=24,
            n_train=24,
            n_test1k=10,
            n_test_multi=6,
        ),
        seed=0,
        out=gen,
    )
    data = tmp_path / "data"
    for name, ann, split in (
        ("pretrain", "pretrain.jsonl", None),
        ("train", "train.jsonl", None),
        ("t1k", "MSRVTT_JSFUSION_test.csv", None),
        ("multi", "MSRVTT_data.json", "test"),
    ):
        prepare.prepare(gen / ann, gen / "frames", name, data, split=split)
    tower = {k: v for k, v in MICRO.items() if k not in ("frames", "image_size", "vocab_size")}
    pre = {"split": "pretrain", "tower": tower, "train": {"steps": 3, "batch_size": 8, "lr": 1e-3}}
    build.main(
        [
            "pretrain",
            "--spec",
            json.dumps(pre),
            "--data",
            str(data),
            "--split",
            "pretrain",
            "--vocab-splits",
            "train",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "theta0"),
        ]
    )
    ft = {"gen_lambda": 1.0, "train": {"steps": 2, "batch_size": 8, "lr": 1e-3}}
    runs = tmp_path / "runs" / "tiny" / "pig"
    for arm in ("two_tower", "pig"):
        art = tmp_path / f"{arm}-s0"
        build.main(
            [
                "finetune",
                "--spec",
                json.dumps(ft),
                "--data",
                str(data),
                "--split",
                "train",
                "--arm",
                arm,
                "--init",
                str(tmp_path / "theta0"),
                "--tests",
                "t1k,multi",
                "--seed",
                "0",
                "--out",
                str(art),
            ]
        )
        assert json.loads((art / "meta.json").read_text())["variant"] == arm
        suite.main(
            [
                "--artifact",
                str(art),
                "--data",
                str(data),
                "--tests",
                "t1k,multi",
                "--scale",
                "tiny",
                "--paper",
                "pig",
                "--out",
                str(runs / art.name / "retrieval.json"),
            ]
        )
    rec = load_run_record(runs / "pig-s0" / "retrieval.json")
    assert rec["suite"] == "retrieval" and rec["variant"] == "pig"
    assert (runs / "pig-s0" / "retrieval.t1k.sim.npy").is_file()
    assert np.load(runs / "pig-s0" / "retrieval.multi.sim.npy").shape == (12, 6)
    cost.main(
        [
            "--baseline",
            str(tmp_path / "two_tower-s0"),
            "--pig",
            str(tmp_path / "pig-s0"),
            "--data",
            str(data),
            "--test",
            "t1k",
            "--queries",
            "3",
            "--repeats",
            "2",
            "--scale",
            "tiny",
            "--out-baseline",
            str(runs / "two_tower-s0" / "cost.json"),
            "--out-pig",
            str(runs / "pig-s0" / "cost.json"),
        ]
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
