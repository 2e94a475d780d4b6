"""Turn one annotation file (any supported MSR-VTT format) + frames into the canonical split.

``python -m benchmarks.retrieval.prepare <job options> [--generated DIR]``: the job's variant
names the split, and the paper's ``splits.<variant>`` section of the scale file says where its
files are (``annotations``, ``frames``, optional ``split`` and ``videos_csv``; ``{generated}``
in a path stands for ``--generated``) and which counts to ``expect``. Writes into ``--out``:

* ``<name>.jsonl``: one row per caption, ``{"video_id", "caption", "video_index"}``;
* ``<name>.videos.json``: the videos in order (column order of every similarity matrix);
* ``<name>.frames.npy``: their frames (videos x ...), in that order;
* ``<name>.manifest.json``: source, detected format, counts and a content hash (the task hash).

Methods read these files; the suite scores against them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from benchmarks.retrieval.loaders import FrameStore, RetrievalDataError, load_annotations
from claimbench.errors import ConfigError
from claimbench.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, sha256_files
from claimbench.job import Job, job_parser, run_job


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
