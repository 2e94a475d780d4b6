"""The retrieval suite: method outputs (files) -> R@K run record.

``python -m benchmarks.retrieval.suite <job options> --artifact DIR --data DIR --tests a,b``
(``--out results/runs/.../retrieval.json``; ``--variant`` and ``--seed`` are the artifact's:
its ``meta.json`` must agree, so that no record is mislabelled).

For each test split ``t`` the artifact folder holds either embeddings
``embeddings/<t>.text.npy`` (captions x D) and ``embeddings/<t>.video.npy`` (videos x D), scored
as ``S = T V^T`` (two-tower and hybrid-tower methods), or a similarity matrix
``embeddings/<t>.sim.npy`` (captions x videos; single-tower methods), plus
``embeddings/<t>.ids.json`` ``{"captions": [video id of each row], "videos": [...]}`` that must
match the canonical split ``<data>/<t>.jsonl`` / ``<t>.videos.json`` written by ``prepare``.

The record has tasks ``<t>_t2v`` and ``<t>_v2t`` (R1, R5, R10, MdR, MnR) and ``<t>`` (RSum);
the per-sample file holds one row per query with its 1-based rank (``MnR``) and hits
(``R1/R5/R10`` in 0/100, so their mean is the stored R@K and claims pair runs per query);
the similarity matrix of each test is saved beside the record as ``retrieval.<t>.sim.npy``;
the artifact's ``curves.json`` (learning curves, a list of series), if present, becomes the
record's ``series``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from benchmarks.retrieval import metrics as M
from benchmarks.retrieval.loaders import RetrievalDataError
from claimbench.io import atomic_write_bytes, atomic_write_jsonl
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric

SUITE = "retrieval"


def _read_json(path: Path):
    if not path.is_file():
        raise RetrievalDataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RetrievalDataError(f"{path}: invalid JSON ({e.msg})") from e


def _npy(path: Path, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise RetrievalDataError(f"{path}: file not found")
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != ndim:
        raise RetrievalDataError(f"{path}: expected a {ndim}-d array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise RetrievalDataError(f"{path}: contains NaN or infinite values")
    return arr


def load_split(data: Path, test: str) -> tuple[list[dict], list[str]]:
    rows = []
    path = data / f"{test}.jsonl"
    if not path.is_file():
        raise RetrievalDataError(
            f"{path}: canonical split not found (run benchmarks.retrieval.prepare)"
        )
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    videos = _read_json(data / f"{test}.videos.json")
    index = {v: i for i, v in enumerate(videos)}
    for i, r in enumerate(rows):
        if r["video_id"] not in index:
            raise RetrievalDataError(
                f"{path}: line {i + 1} references video {r['video_id']!r}, which is not in "
                f"{test}.videos.json"
            )
    return rows, videos


def similarity(emb_dir: Path, test: str, rows: list[dict], videos: list[str]) -> np.ndarray:
    """The test's text x video similarity matrix, checked against the split's counts and ids."""
    ids_path = emb_dir / f"{test}.ids.json"
    ids = _read_json(ids_path)
    if ids.get("captions") != [r["video_id"] for r in rows]:
        raise RetrievalDataError(
            f"{ids_path}: 'captions' does not list the {len(rows)} captions of split {test!r} "
            "in order (video id of each row)"
        )
    if ids.get("videos") != videos:
        raise RetrievalDataError(
            f"{ids_path}: 'videos' does not list the {len(videos)} videos of split {test!r} in order"
        )
    sim_path = emb_dir / f"{test}.sim.npy"
    if sim_path.is_file():
        sim = _npy(sim_path, 2).astype(np.float64)
        where = sim_path
    else:
        t = _npy(emb_dir / f"{test}.text.npy", 2)
        v = _npy(emb_dir / f"{test}.video.npy", 2)
        if t.shape[1] != v.shape[1]:
            raise RetrievalDataError(
                f"{emb_dir}: {test}.text.npy has dim {t.shape[1]} but {test}.video.npy has {v.shape[1]}"
            )
        sim = t.astype(np.float64) @ v.astype(np.float64).T
        where = emb_dir / f"{test}.text.npy / {test}.video.npy"
    if sim.shape != (len(rows), len(videos)):
        raise RetrievalDataError(
            f"{where}: similarity matrix has shape {sim.shape} but split {test!r} has "
            f"{len(rows)} captions and {len(videos)} videos"
        )
    return sim


def score(sim: np.ndarray, rows: list[dict], videos: list[str], test: str):
    """(metric rows, per-sample rows) of one test split."""
    cap_video = np.array([r["video_index"] for r in rows], dtype=np.int64)
    t2v = M.t2v_ranks(sim, cap_video)
    v2t = M.v2t_ranks(sim, cap_video)
    out, samples = [], []
    for direction, r in (("t2v", t2v), ("v2t", v2t)):
        task = f"{test}_{direction}"
        s = M.summarize(r)
        n = len(r)
        for k in M.KS:
            p = s[f"R{k}"] / 100.0
            se = 100.0 * math.sqrt(p * (1 - p) / n) if n > 1 else None
            out.append(metric(task, f"R{k}", s[f"R{k}"], stderr=se, n=n, higher_is_better=True))
        out.append(metric(task, "MdR", s["MdR"], n=n, higher_is_better=False))
        mn_se = float(np.std(r, ddof=1) / math.sqrt(n)) if n > 1 else None
        out.append(metric(task, "MnR", s["MnR"], stderr=mn_se, n=n, higher_is_better=False))
    rsum = sum(M.summarize(r)[f"R{k}"] for r in (t2v, v2t) for k in M.KS)
    out.append(metric(test, "RSum", rsum, n=len(t2v), higher_is_better=True))
    top_t2v = np.argmax(sim, axis=1)
    for i, (row, rk) in enumerate(zip(rows, t2v, strict=True)):
        samples.append(
            {
                "task": f"{test}_t2v",
                "doc_id": i,
                "prompt": row["caption"],
                "target": row["video_id"],
                "response": videos[int(top_t2v[i])],
                "metrics": {f"R{k}": 100.0 * float(rk < k) for k in M.KS} | {"MnR": float(rk + 1)},
            }
        )
    for j, rk in enumerate(v2t):
        samples.append(
            {
                "task": f"{test}_v2t",
                "doc_id": j,
                "prompt": videos[j],
                "target": videos[j],
                "response": "",
                "metrics": {f"R{k}": 100.0 * float(rk < k) for k in M.KS} | {"MnR": float(rk + 1)},
            }
        )
    return out, samples


def _check_identity(job: Job, meta: dict, artifact: Path) -> None:
    """The record takes the job's variant and seed: the artifact's meta.json must name the same."""
    for key, want in (("variant", job.variant), ("seed", job.seed)):
        if key in meta and meta[key] != want:
            raise RetrievalDataError(
                f"{artifact / 'meta.json'}: {key} {meta[key]!r}, but this job runs with "
                f"--{key} {want!r}"
            )


def _curves(artifact: Path) -> list[dict] | None:
    """The method's learning curves (``curves.json``: a list of run-record series), if any."""
    path = artifact / "curves.json"
    if not path.is_file():
        return None
    curves = _read_json(path)
    if not isinstance(curves, list):
        raise RetrievalDataError(f"{path}: expected a list of series, got {type(curves).__name__}")
    return curves


def run(job: Job) -> Path:
    args, out = job.args, job.out
    meta = _read_json(args.artifact / "meta.json")
    _check_identity(job, meta, args.artifact)
    emb_dir = args.artifact / "embeddings"
    all_metrics, all_samples, hashes = [], [], {}
    for test in args.tests:
        rows, videos = load_split(args.data, test)
        manifest = _read_json(args.data / f"{test}.manifest.json")
        sim = similarity(emb_dir, test, rows, videos)
        buf = io.BytesIO()
        np.save(buf, sim.astype(np.float32), allow_pickle=False)
        atomic_write_bytes(out.parent / f"{SUITE}.{test}.sim.npy", buf.getvalue())
        m, s = score(sim, rows, videos, test)
        all_metrics += m
        all_samples += s
        for task in (f"{test}_t2v", f"{test}_v2t", test):
            hashes[task] = manifest["task_hash"]
    samples = f"{SUITE}.samples.jsonl"
    atomic_write_jsonl(out.parent / samples, all_samples)
    config = {
        "tests": list(args.tests),
        "artifact": str(args.artifact),
        "seed": int(meta.get("seed", 0)),
        "score": "dot product of the stored vectors (L2-normalised by the method)",
        "ties": M.TIES,
        "v2t": M.V2T_CONVENTION,
        "dsl": False,
    }
    record = job.record(
        method=meta.get("method", job.paper),
        base_model=meta.get("base_model", ""),
        suite=SUITE,
        config=config,
        metrics=all_metrics,
        task_hashes=hashes,
        samples=samples,
        series=_curves(args.artifact),
    )
    path = job.write_record(record)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, out="the run record (retrieval.json)")
    ap.add_argument("--artifact", type=Path, required=True, help="the method's artifact folder")
    ap.add_argument("--data", type=Path, required=True, help="folder of the canonical splits")
    ap.add_argument(
        "--tests",
        type=lambda s: [x for x in s.split(",") if x],
        required=True,
        help="test splits (comma-separated)",
    )
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
