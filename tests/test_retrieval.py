"""The retrieval suite: metrics on hand-made matrices, MSR-VTT loaders, bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.data import moving_shapes
from benchmarks.retrieval import metrics as M
from benchmarks.retrieval.loaders import FrameStore, RetrievalDataError, load_annotations
from benchmarks.retrieval.prepare import prepare
from benchmarks.retrieval.suite import load_split, score, similarity


def test_perfect_matrix():
    sim = np.eye(5)
    r = M.t2v_ranks(sim, np.arange(5))
    s = M.summarize(r)
    assert r.tolist() == [0] * 5
    assert s == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0}
    assert M.v2t_ranks(sim, np.arange(5)).tolist() == [0] * 5


def test_reversed_matrix_ranks_last():
    # ground truth gets the lowest score of its row: rank n-1 (0-based), MdR = MnR = n (1-based)
    n = 12
    sim = -np.eye(n)
    r = M.t2v_ranks(sim, np.arange(n))
    assert r.tolist() == [n - 1] * n
    s = M.summarize(r)
    assert s["R1"] == 0.0 and s["R5"] == 0.0 and s["R10"] == 0.0
    assert s["MdR"] == n and s["MnR"] == n


def test_mixed_ranks_one_based():
    # row 0: gt best (rank 0); row 1: gt second (rank 1); row 2: gt third (rank 2)
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.7, 0.6, 0.2]])
    r = M.t2v_ranks(sim, np.arange(3))
    assert r.tolist() == [0, 1, 2]
    s = M.summarize(r)
    assert s["R1"] == pytest.approx(100 / 3)
    assert s["MdR"] == 2.0 and s["MnR"] == 2.0


def test_ties_counted_by_position():
    # all scores equal: stable sort keeps column order, so the gt's rank is its column index
    sim = np.zeros((4, 4))
    assert M.t2v_ranks(sim, np.arange(4)).tolist() == [0, 1, 2, 3]
    # a tie with an earlier column pushes the gt back; with a later column it does not
    sim = np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1], [0.3, 0.9, 0.9]])
    assert M.t2v_ranks(sim, np.arange(3)).tolist() == [0, 1, 1]


def test_multi_caption_padding_matches_direct():
    rng = np.random.default_rng(0)
    cap_video = np.array([0, 0, 0, 1, 2, 2, 3])  # 3, 1, 2, 1 captions per video
    sim = rng.normal(size=(len(cap_video), 4))
    padded = M.pad_by_video(sim, cap_video)
    assert padded.shape == (4, 3, 4)
    assert np.isneginf(padded[1, 1:]).all() and np.isneginf(padded[3, 1:]).all()
    direct = M.t2v_ranks(sim, cap_video)
    via_pad = M.t2v_ranks_padded(padded)
    # the padded tensor lists captions grouped by video in order; here captions are already so
    assert direct.tolist() == via_pad.tolist()
    assert M.v2t_ranks(sim, cap_video).tolist() == M.v2t_ranks_padded(padded).tolist()


def test_v2t_max_over_captions_by_hand():
    # 2 videos; video 0 has captions rows 0,1; video 1 has row 2
    sim = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4]])
    # group max: group0 vs video0 = max(0.1, 0.8) = 0.8, vs video1 = max(0.9, 0.2) = 0.9
    #            group1 vs video0 = 0.3, vs video1 = 0.4
    # video 0 ranks groups [0.8, 0.3] -> own group first; video 1 ranks [0.9, 0.4] -> own second
    assert M.v2t_ranks(sim, np.array([0, 0, 1])).tolist() == [0, 1]
    assert M.t2v_ranks(sim, np.array([0, 0, 1])).tolist() == [1, 0, 0]


def test_nan_rejected():
    with pytest.raises(ValueError, match="NaN"):
        M.ranks(np.array([[np.nan, 1.0]]), np.array([0]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    spec = dict(
        frames=2,
        size=16,
        max_objects=2,
        captions_per_video=3,
        n_pretrain=4,
        n_train=6,
        n_test1k=5,
        n_test_multi=4,
    )
    moving_shapes.build(spec, seed=3, out=out)
    return out


def test_generator_is_deterministic(world, tmp_path):
    spec = json.loads((world / "manifest.json").read_text())["spec"]
    m = moving_shapes.build(spec, seed=3, out=tmp_path)
    assert m["sha256"] == json.loads((world / "manifest.json").read_text())["sha256"]
    frames = np.load(world / "frames" / "test1k.npy")
    assert frames.shape == (5, 2, 16, 16, 3) and frames.dtype == np.uint8


def test_loaders_read_every_format(world):
    a = load_annotations(world / "MSRVTT_JSFUSION_test.csv")
    b = load_annotations(world / "test1k.jsonl")
    assert a.fmt == "jsfusion_csv" and b.fmt == "jsonl"
    assert a.captions == b.captions and a.videos == b.videos and len(a.videos) == 5
    c = load_annotations(world / "MSRVTT_data.json", split="test")
    assert c.fmt == "msrvtt_json" and len(c.videos) == 4 and len(c.captions) == 12
    d = load_annotations(world / "train.jsonl")
    e = load_annotations(world / "MSRVTT_data.json", split="train")
    assert d.captions == e.captions
    FrameStore(world / "frames").check(c)


def test_bad_annotation_format_names_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello world\n")
    with pytest.raises(RetrievalDataError, match=r"notes\.txt: not a supported annotation format"):
        load_annotations(bad)


def test_caption_with_missing_video_names_file_and_entry(world, tmp_path):
    obj = json.loads((world / "MSRVTT_data.json").read_text())
    obj["sentences"][2]["video_id"] = "video999"
    p = tmp_path / "MSRVTT_data.json"
    p.write_text(json.dumps(obj))
    with pytest.raises(RetrievalDataError, match=r"MSRVTT_data\.json: sentences\[2\].*'video999'"):
        load_annotations(p)
    csv = tmp_path / "test.csv"
    csv.write_text("key,vid_key,video_id,sentence\nret0,msr1,video4242,a red circle\n")
    with pytest.raises(RetrievalDataError, match=r"test\.csv: caption 0 .*'video4242'.*no frames"):
        FrameStore(world / "frames").check(load_annotations(csv))


def test_suite_scores_and_rejects_wrong_shape(world, tmp_path):
    data = tmp_path / "data"
    prepare(world / "MSRVTT_data.json", world / "frames", "multi", data, split="test")
    rows, videos = load_split(data, "multi")
    emb = tmp_path / "emb"
    emb.mkdir()
    ids = {"captions": [r["video_id"] for r in rows], "videos": videos}
    (emb / "multi.ids.json").write_text(json.dumps(ids))
    # perfect embeddings: each caption equals its video's one-hot vector
    v = np.eye(len(videos), dtype=np.float32)
    t = v[[r["video_index"] for r in rows]]
    np.save(emb / "multi.text.npy", t)
    np.save(emb / "multi.video.npy", v)
    sim = similarity(emb, "multi", rows, videos)
    metrics, samples = score(sim, rows, videos, "multi")
    got = {(m["task"], m["metric"]): m["value"] for m in metrics}
    assert got[("multi_t2v", "R1")] == 100.0 and got[("multi_v2t", "MnR")] == 1.0
    t2v = [s for s in samples if s["task"] == "multi_t2v"]
    assert len(t2v) == len(rows) and all(s["metrics"]["MnR"] == 1.0 for s in t2v)
    np.save(emb / "multi.sim.npy", np.zeros((len(rows) + 1, len(videos)), dtype=np.float32))
    with pytest.raises(RetrievalDataError, match=r"multi\.sim\.npy: similarity matrix has shape"):
        similarity(emb, "multi", rows, videos)


def test_prepare_checks_expected_counts(world, tmp_path):
    with pytest.raises(RetrievalDataError, match="has 5 videos, the config expects 1000"):
        prepare(world / "test1k.jsonl", world / "frames", "t", tmp_path, expect={"videos": 1000})


def test_prepare_job_names_a_split_missing_from_the_scale(tmp_path, capsys):
    from benchmarks.retrieval import prepare as prep

    argv = ["--scale", "tiny", "--paper", "pig", "--variant", "nosuch", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        prep.main([*argv, "--device", "cpu"])
    assert exc.value.code == 2
    assert "papers.pig.splits: no split named 'nosuch'" in capsys.readouterr().err
    # a {generated} path without --generated is refused, naming the split
    with pytest.raises(SystemExit) as exc:
        prep.main([*argv[:5], "shapes1k", *argv[6:], "--device", "cpu"])
    assert exc.value.code == 2
    assert "papers.pig.splits.shapes1k" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
