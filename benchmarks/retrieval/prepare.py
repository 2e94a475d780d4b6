"""Turn one annotation file (any supported MSR-VTT format) + frames into the canonical split.

``python -m benchmarks.retrieval.prepare <job options> [--generated DIR]``: the job's variant
names the split, and the paper's ``splits.<variant>`` section of the scale file says where its
files are (``annotations``, ``frames``, optional ``split`` and ``videos_csv``; ``{generated}``
in a path stands for ``--generated``) and which counts to ``expect``. Writes into ``--out``:

* ``<name>.jsonl``: one row per caption, ``{"video_id", "caption", "video_index"}``;
* ``<name>.videos.json``: the videos in order (column order of every similarity matrix);
* their frames, never all in memory: ``<name>.frames.npy`` (videos x ..., in that order,
  written one video at a time) when the source packs them (``<file>.npy`` + ``.ids.json``), or
  ``<name>.frames.json`` (``{"root", "layout"}``) when they are stored per video
  (``<id>.npy`` or ``<id>/frame_XXXX.jpg``), read in place by ``benchmarks.retrieval.frames``;
* ``<name>.manifest.json``: source, detected format, counts and a content hash (the task hash).

Methods read these files; the suite scores against them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmarks.retrieval.loaders import FrameStore, RetrievalDataError, load_annotations
from claimbench.errors import ConfigError
from claimbench.io import atomic_write_json, atomic_write_jsonl, sha256_files
from claimbench.job import Job, job_parser, run_job


def write_packed(store: FrameStore, videos: list[str], path: Path) -> None:
    """``videos``' frames into one ``.npy``, one video at a time (a memory map; atomic rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arr = None
    try:
        for i, x in enumerate(store.iter_frames(videos)):
            if arr is None:
                shape = (len(videos), *x.shape)
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=x.dtype, shape=shape)
            if x.shape != arr.shape[1:]:
                raise RetrievalDataError(
                    f"{store.folder}: frames of video {videos[i]!r} have shape {x.shape}, "
                    f"those before {arr.shape[1:]}"
                )
            arr[i] = x
        arr.flush()
        del arr
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    layouts = {store.per_video_layout(v) for v in sp.videos}
    if len(layouts) == 1 and None not in layouts:
        layout = layouts.pop()
        atomic_write_json(
            out / f"{name}.frames.json", {"root": str(Path(frames).resolve()), "layout": layout}
        )
        (out / f"{name}.frames.npy").unlink(missing_ok=True)
    else:
        layout = "packed"
        write_packed(store, sp.videos, out / f"{name}.frames.npy")
        (out / f"{name}.frames.json").unlink(missing_ok=True)
    manifest = {
        "name": name,
        "source": str(annotations),
        "format": sp.fmt,
        "split": split,
        "videos_csv": None if videos_csv is None else str(videos_csv),
        "frames": str(frames),
        "frames_layout": layout,
        "n_captions": len(rows),
        "n_videos": len(sp.videos),
        "task_hash": sha256_files(files)[:16],
    }
    atomic_write_json(out / f"{name}.manifest.json", manifest)
    return manifest


def run(job: Job) -> None:
    spec = (job.config.get("splits") or {}).get(job.variant)
    if spec is None:
        raise ConfigError(
            f"papers.{job.paper}.splits: no split named {job.variant!r} in the {job.scale} scale"
        )
    generated = job.args.generated

    def path(value: str | None) -> Path | None:
        if value is None:
            return None
        if "{generated}" in value:
            if generated is None:
                raise ConfigError(
                    f"papers.{job.paper}.splits.{job.variant}: {value!r} needs --generated"
                )
            value = value.replace("{generated}", str(generated))
        return Path(value)

    m = prepare(
        path(spec["annotations"]),
        path(spec["frames"]),
        job.variant,
        job.out,
        spec.get("split"),
        path(spec.get("videos_csv")),
        spec["expect"],
    )
    print(f"{job.variant}: {m['n_captions']} captions, {m['n_videos']} videos ({m['format']})")


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, out="folder of the canonical splits")
    ap.add_argument(
        "--generated", type=Path, default=None, help="folder that {generated} in the paths names"
    )
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
