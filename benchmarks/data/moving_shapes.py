"""MovingShapes: a deterministic synthetic video-caption world for text-to-video retrieval.

Each video shows 1..``max_objects`` objects (shape, colour, size, motion) moving in a straight
line on a plain background, inside the frame for the whole clip (no bounce: a bounce would
reverse the captioned motion); captions are templated, some *partial* (one object only, or
without size or motion) so that fine-grained tokens matter. The splits are written in the MSR-VTT formats that real
data comes in, so the real loaders (``benchmarks.retrieval.loaders``) are exercised at tiny
scale:

* ``pretrain.jsonl``, ``train.jsonl``: CLIP-ViP / PIG JSON Lines (``{"clip_id", "text": [..]}``);
  the pre-train split uses a disjoint template set (stand-in for CLIP pre-training);
* ``MSRVTT_JSFUSION_test.csv``: the 1k-A style test (one full caption per video);
* ``MSRVTT_data.json``: ``videos`` with a ``split`` field and ``sentences``; its ``test``
  videos are the multi-caption test (``captions_per_video`` captions each), its ``train``
  videos the train split again (as in the real release);
* ``test1k.jsonl``: the 1k-A test again in JSONL;
* ``val.jsonl`` (with ``n_val``): a validation split, one full caption per video (the
  learning curves' R@1), drawn after the other splits;
* ``frames/<split>.npy`` (uint8, videos x T x H x W x 3) + ``frames/<split>.ids.json``:
  pre-extracted frames, the form the loaders accept for real videos too.

``python -m benchmarks.data.moving_shapes <job options>`` (paper ``pig``, variant = the data
set's name, ``moving_shapes``): the world described by ``papers.pig.generator`` of the scale
file, drawn with the job's ``--seed``, written into ``--out``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from claimbench.errors import ConfigError
from claimbench.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, sha256_files
from claimbench.job import Job, job_parser, run_job

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 240),
    "yellow": (235, 225, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
}
SIZES = {"small": 3.0, "large": 6.0}
MOTIONS = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
    "still": (0, 0),
}
BACKGROUNDS = ((0, 0, 0), (30, 30, 30), (20, 20, 50), (45, 30, 20))

# Captions of the fine-tuning/test splits ("MSR-VTT" templates), with synonyms.
MOTION_PHRASES = {
    "left": ["moves to the left", "goes left", "slides left"],
    "right": ["moves to the right", "goes right", "slides right"],
    "up": ["moves up", "goes up", "rises"],
    "down": ["moves down", "goes down", "falls"],
    "up-left": ["moves up and left", "goes up to the left"],
    "up-right": ["moves up and right", "goes up to the right"],
    "down-left": ["moves down and left", "goes down to the left"],
    "down-right": ["moves down and right", "goes down to the right"],
    "still": ["stays still", "does not move", "rests"],
}
JOINERS = ["while", "and"]
# Pre-training templates (disjoint sentence patterns, same attribute words).
PRE_MOTION = {
    "left": "heading left",
    "right": "heading right",
    "up": "heading up",
    "down": "heading down",
    "up-left": "heading up left",
    "up-right": "heading up right",
    "down-left": "heading down left",
    "down-right": "heading down right",
    "still": "not moving",
}


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    motion: str


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    d = np.sqrt(dx * dx + dy * dy)
    if shape == "circle":
        return d <= r
    if shape == "ring":
        return (d <= r) & (d >= r - 1.6)
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "triangle":  # apex up: half-planes
        return (dy <= 0.8 * r) & (dy >= -r) & (np.abs(dx) <= 0.6 * (dy + r))
    if shape == "cross":
        bar = max(r / 3.0, 1.0)
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= r)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def track(motion: str, r: float, rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """Centre (x, y) of one object in each frame, float (T, 2): a straight line at constant speed
    in the captioned direction that stays inside the frame for the whole clip.

    The start is drawn from the positions whose whole path fits (no bounce, so the captioned
    direction holds in every frame); the speed (1-2 px/frame) is capped where the clip is too
    long for the frame at that speed.
    """
    lo, hi = r, size - 1 - r
    speed = float(rng.uniform(1.0, 2.0))
    step = np.array(MOTIONS[motion], dtype=np.float64)
    if frames > 1 and step.any():
        speed = min(speed, (hi - lo) / (frames - 1))
    d = step * speed * (frames - 1)  # displacement over the clip
    u = rng.uniform(0.0, 1.0, size=2)
    start = lo - np.minimum(d, 0) + u * ((hi - lo) - np.abs(d))
    return start + np.arange(frames)[:, None] * (step * speed)


def render(objs: list[Obj], rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """One video, uint8 (T, H, W, 3): every object moves as captioned (:func:`track`)."""
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = np.array(bg, dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    tracks = [track(o.motion, SIZES[o.size], rng, frames, size) for o in objs]
    for t in range(frames):
        for o, path in zip(objs, tracks, strict=True):
            cx, cy = path[t]
            m = _mask(o.shape, xx - cx, yy - cy, SIZES[o.size])
            video[t][m] = COLOURS[o.colour]
    return video


def _sample_objs(rng: np.random.Generator, max_objects: int) -> list[Obj]:
    n = int(rng.integers(1, max_objects + 1))
    objs = []
    for _ in range(n):
        objs.append(
            Obj(
                SHAPES[int(rng.integers(len(SHAPES)))],
                list(COLOURS)[int(rng.integers(len(COLOURS)))],
                list(SIZES)[int(rng.integers(len(SIZES)))],
                list(MOTIONS)[int(rng.integers(len(MOTIONS)))],
            )
        )
    return objs


def _phrase(o: Obj, rng, *, with_size=True, with_motion=True) -> str:
    words = ["a"] + ([o.size] if with_size else []) + [o.colour, o.shape]
    if with_motion:
        opts = MOTION_PHRASES[o.motion]
        words.append(opts[int(rng.integers(len(opts)))])
    return " ".join(words)


def full_caption(objs: list[Obj], rng) -> str:
    parts = [_phrase(o, rng) for o in objs]
    out = parts[0]
    for p in parts[1:]:
        out += f" {JOINERS[int(rng.integers(len(JOINERS)))]} {p}"
    return out


def partial_caption(objs: list[Obj], rng) -> str:
    """One object only, or all objects without size or without motion."""
    kind = int(rng.integers(3))
    if kind == 0:
        o = objs[int(rng.integers(len(objs)))]
        return _phrase(o, rng, with_size=bool(rng.integers(2)))
    parts = [_phrase(o, rng, with_size=kind != 1, with_motion=kind != 2) for o in objs]
    return " and ".join(parts) if kind == 2 else f" {JOINERS[0]} ".join(parts)


def pretrain_caption(objs: list[Obj], rng) -> str:
    """Disjoint template set: 'there is a small red circle heading left , and ...'."""
    parts = [f"{o.size} {o.colour} {o.shape} {PRE_MOTION[o.motion]}" for o in objs]
    if rng.integers(2):
        return "there is a " + " , and a ".join(parts)
    return "video of a " + " with a ".join(parts)


def _key(objs: list[Obj]) -> tuple:
    return tuple(sorted((o.shape, o.colour, o.size, o.motion) for o in objs))


def make_split(
    rng, n: int, *, frames: int, size: int, max_objects: int, captions: int, kind: str, unique: bool
):
    """(videos uint8 [n,T,H,W,3], captions per video). kind: pretrain | train | test."""
    vids, caps, seen = [], [], set()
    while len(vids) < n:
        objs = _sample_objs(rng, max_objects)
        if unique:
            if _key(objs) in seen:
                continue
            seen.add(_key(objs))
        vids.append(render(objs, rng, frames, size))
        if kind == "pretrain":
            caps.append([pretrain_caption(objs, rng) for _ in range(captions)])
        elif kind == "test1k":
            caps.append([full_caption(objs, rng)])
        else:  # train / test multi: the first caption full, the others mixed full / partial
            c = [full_caption(objs, rng)]
            for _ in range(captions - 1):
                c.append(
                    partial_caption(objs, rng) if rng.random() < 0.5 else full_caption(objs, rng)
                )
            caps.append(c)
    return np.stack(vids), caps


def _write_frames(out: Path, split: str, ids: list[str], frames: np.ndarray) -> list[Path]:
    buf = io.BytesIO()
    np.save(buf, frames, allow_pickle=False)
    return [
        atomic_write_bytes(out / "frames" / f"{split}.npy", buf.getvalue()),
        atomic_write_json(out / "frames" / f"{split}.ids.json", ids),
    ]


def build(spec: dict, seed: int, out: Path) -> dict:
    """Write every split of the world; returns the manifest."""
    rng = np.random.default_rng(seed)
    geo = {"frames": spec["frames"], "size": spec["size"], "max_objects": spec["max_objects"]}
    cpv = spec["captions_per_video"]
    plan = [
        ("pretrain", spec["n_pretrain"], cpv, "pretrain", False),
        ("train", spec["n_train"], cpv, "train", False),
        ("test1k", spec["n_test1k"], 1, "test1k", True),
        ("test_multi", spec["n_test_multi"], cpv, "test", True),
    ]
    if spec.get("n_val", 0):  # validation for the learning curves: one full caption per video
        plan.append(("val", spec["n_val"], 1, "test1k", True))
    files: list[Path] = []
    splits: dict[str, tuple[list[str], list[list[str]]]] = {}
    offset = 0
    for name, n, k, kind, unique in plan:
        frames, caps = make_split(rng, n, captions=k, kind=kind, unique=unique, **geo)
        ids = [f"video{offset + i}" for i in range(n)]
        offset += n
        splits[name] = (ids, caps)
        files += _write_frames(out, name, ids, frames)
    for name in ("pretrain", "train"):
        ids, caps = splits[name]
        rows = [{"clip_id": v, "text": c} for v, c in zip(ids, caps, strict=True)]
        files.append(atomic_write_jsonl(out / f"{name}.jsonl", rows))
    if "val" in splits:
        ids, caps = splits["val"]
        rows = [{"clip_id": v, "text": c[0]} for v, c in zip(ids, caps, strict=True)]
        files.append(atomic_write_jsonl(out / "val.jsonl", rows))
    ids, caps = splits["test1k"]
    files.append(
        atomic_write_jsonl(
            out / "test1k.jsonl",
            [{"clip_id": v, "text": c[0]} for v, c in zip(ids, caps, strict=True)],
        )
    )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "vid_key", "video_id", "sentence"])
    for i, (v, c) in enumerate(zip(ids, caps, strict=True)):
        w.writerow([f"ret{i}", f"msr{v[5:]}", v, c[0]])
    files.append(atomic_write_bytes(out / "MSRVTT_JSFUSION_test.csv", buf.getvalue().encode()))
    videos, sentences = [], []
    for name, split in (("train", "train"), ("test_multi", "test")):
        ids, caps = splits[name]
        for v, c in zip(ids, caps, strict=True):
            videos.append(
                {
                    "video_id": v,
                    "category": 0,
                    "url": "",
                    "start time": 0.0,
                    "end time": float(spec["frames"]),
                    "split": split,
                    "id": int(v[5:]),
                }
            )
            for cap in c:
                sentences.append({"caption": cap, "video_id": v, "sen_id": len(sentences)})
    files.append(
        atomic_write_json(out / "MSRVTT_data.json", {"videos": videos, "sentences": sentences})
    )
    manifest = {
        "generator": "benchmarks.data.moving_shapes",
        "seed": seed,
        "spec": spec,
        "counts": {k: len(v[0]) for k, v in splits.items()},
        "sha256": sha256_files(files),
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def run(job: Job) -> None:
    spec = job.config.get("generator")
    if spec is None:
        raise ConfigError(
            f"papers.{job.paper}.generator: absent in the {job.scale} scale (it uses real data)"
        )
    build(spec, job.seed, job.out)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["pig"], out="folder of the generated world")
    run_job(ap, run, argv, errors=(ValueError, KeyError))


if __name__ == "__main__":
    main()
