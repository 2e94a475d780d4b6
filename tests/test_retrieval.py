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


@pytest.mark.parametrize("frames", [4, 8, 16])
def test_captioned_motion_holds_in_every_frame(frames):
    """No bounce: each object's centre moves in its captioned direction between every pair of
    frames and stays inside the picture; the rendered object's centroid follows it."""
    rng = np.random.default_rng(0)
    for motion, (dx, dy) in moving_shapes.MOTIONS.items():
        for r in moving_shapes.SIZES.values():
            for _ in range(20):
                path = moving_shapes.track(motion, r, rng, frames, 32)
                step = np.diff(path, axis=0)
                assert np.all(np.sign(step[:, 0]) == dx) and np.all(np.sign(step[:, 1]) == dy)
                assert path.min() >= r - 1e-9 and path.max() <= 31 - r + 1e-9
        obj = moving_shapes.Obj("square", "white", "large", motion)
        video = moving_shapes.render([obj], np.random.default_rng(1), frames, 32)
        ys, xs = [], []
        for t in range(frames):
            m = video[t].sum(-1) == 3 * 245
            yy, xx = np.nonzero(m)
            xs.append(xx.mean())
            ys.append(yy.mean())
        assert np.all(np.sign(np.round(np.diff(xs), 6)) == dx), motion
        assert np.all(np.sign(np.round(np.diff(ys), 6)) == dy), motion


def test_val_split_written_when_asked(tmp_path):
    spec = dict(
        frames=2,
        size=16,
        max_objects=1,
        captions_per_video=2,
        n_pretrain=2,
        n_train=2,
        n_test1k=3,
        n_test_multi=2,
        n_val=4,
    )
    m = moving_shapes.build(spec, seed=0, out=tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert m["counts"]["val"] == 4 and len(rows) == 4
    assert all(isinstance(r["text"], str) for r in rows)
    assert np.load(tmp_path / "frames" / "val.npy").shape == (4, 2, 16, 16, 3)


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


# -- frames streamed from disk (benchmarks/retrieval/frames.py) ------------------------------
def test_prepare_packs_a_packed_source_one_video_at_a_time(world, tmp_path):
    """A packed source becomes <split>.frames.npy in the split's order (written through a
    memory map), equal to the frames read directly."""
    from benchmarks.retrieval.frames import open_split_frames

    m = prepare(world / "MSRVTT_data.json", world / "frames", "multi", tmp_path, split="test")
    assert m["frames_layout"] == "packed" and not (tmp_path / "multi.frames.json").exists()
    videos = json.loads((tmp_path / "multi.videos.json").read_text())
    want = FrameStore(world / "frames").load(videos)
    assert np.array_equal(np.load(tmp_path / "multi.frames.npy"), want)
    ds = open_split_frames(tmp_path, "multi", videos)
    assert len(ds) == 4 and np.array_equal(ds[2].numpy(), want[2])


def _per_video(root, n=3, t=5):
    rng = np.random.default_rng(0)
    (root / "frames").mkdir(parents=True)
    rows = []
    for i in range(n):
        np.save(root / "frames" / f"v{i}.npy", rng.integers(0, 256, (t, 6, 8, 3), dtype=np.uint8))
        rows.append({"clip_id": f"v{i}", "text": [f"caption {i} a", f"caption {i} b"]})
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_per_video_frames_are_read_in_place_and_sampled_uniformly(tmp_path):
    """Per-video <id>.npy frames are not copied (a .frames.json names them); a DataLoader with
    a worker streams T of them per video, uniformly spaced (first and last included)."""
    from benchmarks.retrieval.frames import open_split_frames, uniform_indices, video_loader

    _per_video(tmp_path / "raw")
    out = tmp_path / "data"
    m = prepare(tmp_path / "raw" / "ann.jsonl", tmp_path / "raw" / "frames", "s", out)
    assert m["frames_layout"] == "npy" and not (out / "s.frames.npy").exists()
    assert list(uniform_indices(5, 3)) == [0, 2, 4] and list(uniform_indices(4, 1)) == [0]
    ds = open_split_frames(out, "s", ["v0", "v1", "v2"]).prepared(3)
    import torch

    state = torch.get_rng_state()
    batches = list(video_loader(ds, batch_size=2, workers=1))
    assert torch.equal(torch.get_rng_state(), state)  # the run's dropout draws are untouched
    assert [tuple(b.shape) for b in batches] == [(2, 3, 6, 8, 3), (1, 3, 6, 8, 3)]
    v1 = np.load(tmp_path / "raw" / "frames" / "v1.npy")
    assert np.array_equal(batches[0][1].numpy(), v1[[0, 2, 4]])
    (tmp_path / "raw" / "frames" / "v2.npy").unlink()
    with pytest.raises(RetrievalDataError, match=r"no frames for video 'v2'"):
        ds[2]


def test_jpg_frame_folders(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    from benchmarks.retrieval.frames import open_split_frames

    for i in range(2):
        d = tmp_path / "raw" / "frames" / f"v{i}"
        d.mkdir(parents=True)
        for k in range(4):
            pil.fromarray(np.full((8, 8, 3), 60 * k, dtype=np.uint8)).save(d / f"frame_{k:04d}.jpg")
    rows = [{"clip_id": f"v{i}", "text": "a caption"} for i in range(2)]
    (tmp_path / "raw" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = prepare(tmp_path / "raw" / "a.jsonl", tmp_path / "raw" / "frames", "s", tmp_path / "d")
    assert m["frames_layout"] == "jpg"
    x = open_split_frames(tmp_path / "d", "s", ["v0", "v1"]).prepared(2)[0].numpy()
    assert x.shape == (2, 8, 8, 3) and abs(int(x[1].mean()) - 180) <= 2


def test_clip_preprocess_resizes_crops_and_normalises():
    """CLIP's preprocessing from a preprocessor_config.json: shortest edge -> size, centre crop,
    rescale, normalise with the checkpoint's mean / std (torch path, by hand)."""
    import torch

    from benchmarks.retrieval.frames import ClipPreprocess

    cfg = {
        "size": {"shortest_edge": 4},
        "crop_size": {"height": 4, "width": 4},
        "image_mean": [0.5, 0.25, 0.0],
        "image_std": [0.5, 0.25, 1.0],
    }
    pre = ClipPreprocess(cfg, use_hf=False)
    const = torch.full((2, 8, 12, 3), 102, dtype=torch.uint8)
    x = pre(const)
    assert x.shape == (2, 3, 4, 4)
    want = (torch.tensor([0.4, 0.4, 0.4]) - torch.tensor([0.5, 0.25, 0.0])) / torch.tensor(
        [0.5, 0.25, 1.0]
    )
    assert torch.allclose(x, want[None, :, None, None].expand_as(x), atol=1e-6)
    crop_only = ClipPreprocess(cfg | {"do_resize": False, "do_normalize": False}, use_hf=False)
    ramp = torch.arange(6 * 8, dtype=torch.uint8).view(1, 6, 8, 1).expand(1, 6, 8, 3)
    y = crop_only(ramp.contiguous())
    assert torch.allclose(y[0, 0], ramp[0, 1:5, 2:6, 0].float() / 255)


def test_ranks_by_counting_equal_the_stable_sort_definition():
    """Ranks counted in row blocks equal the position after a stable descending sort (many
    ties, blocks smaller than the matrix)."""
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 4, size=(37, 11)).astype(np.float64)
    gt = rng.integers(0, 11, size=37)
    order = np.argsort(-sim, axis=1, kind="stable")
    want = np.argmax(order == gt[:, None], axis=1)
    assert np.array_equal(M.ranks(sim, gt, chunk=5), want)
    assert np.array_equal(M.ranks(sim, gt), want)
