"""Turn one annotation file (any supported MSR-VTT format) + frames into the canonical split.

``python -m benchmarks.retrieval.prepare --annotations F --frames DIR --name test1k --out DIR
[--split test] [--videos-csv F]`` writes into ``DIR``:

* ``<name>.jsonl``: one row per caption, ``{"video_id", "caption", "video_index"}``;
* ``<name>.videos.json``: the videos in order (column order of every similarity matrix);
* ``<name>.frames.npy``: their frames (videos x ...), in that order;
* ``<name>.manifest.json``: source, detected format, counts and a content hash (the task hash).

Methods read these files; the suite scores against them.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

from benchmarks.retrieval.loaders import FrameStore, RetrievalDataError, load_annotations
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, sha256_files


def prepare(
    annotations: Path, frames: Path, name: str, out: Path, split=None, videos_csv=None, expect=None
) -> dict:
    sp = load_annotations(annotations, split=split, videos_csv=videos_csv)
    for what, got in (("videos", len(sp.videos)), ("captions", len(sp.captions))):
        want = (expect or {}).get(what)
        if want is not None and got != want:
            raise RetrievalDataError(
                f"{annotations}: split {name!r} has {got} {what}, the config expects {want} "
                f"(split={split!r}, videos_csv={videos_csv})"
            )
    store = FrameStore(frames)
    store.check(sp)
    idx = sp.caption_video_index()
    rows = [
        {"video_id": v, "caption": c, "video_index": int(i)}
        for v, c, i in zip(sp.caption_video, sp.captions, idx, strict=True)
    ]
    files = [
        atomic_write_jsonl(out / f"{name}.jsonl", rows),
        atomic_write_json(out / f"{name}.videos.json", sp.videos),
    ]
    buf = io.BytesIO()
    np.save(buf, store.load(sp.videos), allow_pickle=False)
    atomic_write_bytes(out / f"{name}.frames.npy", buf.getvalue())
    manifest = {
        "name": name,
        "source": str(annotations),
        "format": sp.fmt,
        "split": split,
        "videos_csv": None if videos_csv is None else str(videos_csv),
        "frames": str(frames),
        "n_captions": len(rows),
        "n_videos": len(sp.videos),
        "task_hash": sha256_files(files)[:16],
    }
    atomic_write_json(out / f"{name}.manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--annotations", type=Path, required=True)
    ap.add_argument("--frames", type=Path, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default=None, help="MSRVTT_data.json 'split' value to keep")
    ap.add_argument("--videos-csv", type=Path, default=None, help="csv with a video_id column")
    ap.add_argument("--expect", default="{}", help='JSON {"videos": N, "captions": M} to check')
    args = ap.parse_args(argv)
    with exit_on_user_error():
        m = prepare(
            args.annotations,
            args.frames,
            args.name,
            args.out,
            args.split,
            args.videos_csv,
            json.loads(args.expect),
        )
    print(f"{args.name}: {m['n_captions']} captions, {m['n_videos']} videos ({m['format']})")


if __name__ == "__main__":
    main()
