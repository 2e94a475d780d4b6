"""The inference-cost claim, measured: ``python -m methods.pig.cost --baseline DIR --pig DIR ...``.

In one process, for the two artifacts (Two-Tower and PIG, same seed):

* the offline index (one vector per test video) of both arms must have the same shape and
  dtype, or this stops with an error; bytes per stored video are reported;
* online query latency: :func:`methods.pig.model.query_scores` (one text pass + dot products
  with the whole test gallery + top-10), the same function for both arms, timed per query with
  the arms interleaved (A, B, A, B, ...) after a warm-up; the median over queries x repeats;
* offline per-video encoding time (batch of 64, median of repeats), reported separately.

Writes one run record per arm (suite ``cost``): tasks ``index`` (bytes_per_video, dim,
dtype_bits), ``query`` (latency_ms, and for PIG latency_ratio = PIG / Two-Tower) and
``offline`` (encode_ms_per_video).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.errors import ClaimbenchError, exit_on_user_error
from claimbench.records import make_run_record, metric, write_run_record
from methods.pig.model import query_scores
from methods.pig.train import encode_videos, load_model, read_split, set_determinism


@torch.no_grad()
def measure(artifacts: dict[str, Path], data: Path, test: str, queries: int, repeats: int):
    split = read_split(data, test)
    arms = {name: load_model(path) for name, path in artifacts.items()}
    index, offline = {}, {}
    for name, (model, _) in arms.items():
        index[name] = encode_videos(model, split.frames)
    shapes = {n: (tuple(i.shape), str(i.dtype)) for n, i in index.items()}
    if len(set(shapes.values())) != 1:
        raise ClaimbenchError(f"stored per-video vectors differ between arms: {shapes}")
    caps = split.captions[:queries]
    tok = {
        n: [vocab.encode([c], m.cfg.context_length) for c in caps] for n, (m, vocab) in arms.items()
    }
    times: dict[str, list[float]] = {n: [] for n in arms}
    for rep in range(repeats + 1):  # the first pass is a warm-up
        for q in range(len(caps)):
            for name, (model, _) in arms.items():
                tokens, eot = tok[name][q]
                t0 = time.perf_counter()
                query_scores(model, tokens, eot, index[name]).topk(10, dim=1)
                if rep:
                    times[name].append(time.perf_counter() - t0)
    for name, (model, _) in arms.items():
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            encode_videos(model, split.frames)
            runs.append((time.perf_counter() - t0) / len(split.frames))
        offline[name] = statistics.median(runs)
    latency = {n: statistics.median(v) for n, v in times.items()}
    return index, latency, offline, {n: len(v) for n, v in times.items()}, len(split.frames)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--baseline", type=Path, required=True, help="Two-Tower artifact folder")
    ap.add_argument("--pig", type=Path, required=True, help="PIG artifact folder")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--test", required=True, help="test split whose videos form the gallery")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", required=True)
    ap.add_argument("--paper", default="pig")
    ap.add_argument("--out-baseline", type=Path, required=True)
    ap.add_argument("--out-pig", type=Path, required=True)
    args = ap.parse_args(argv)
    with exit_on_user_error():
        set_determinism(0, args.threads)
        with provenance.timed() as t:
            arts = {"baseline": args.baseline, "pig": args.pig}
            index, latency, offline, n_timed, n_videos = measure(
                arts, args.data, args.test, args.queries, args.repeats
            )
        for name, out in (("baseline", args.out_baseline), ("pig", args.out_pig)):
            meta = json.loads((arts[name] / "meta.json").read_text(encoding="utf-8"))
            idx = index[name]
            ms = [
                metric(
                    "index",
                    "bytes_per_video",
                    idx.element_size() * idx.shape[1],
                    n=idx.shape[0],
                    higher_is_better=False,
                ),
                metric("index", "dim", idx.shape[1], n=idx.shape[0]),
                metric("index", "dtype_bits", 8 * idx.element_size(), n=idx.shape[0]),
                metric(
                    "query",
                    "latency_ms",
                    1e3 * latency[name],
                    n=n_timed[name],
                    higher_is_better=False,
                ),
                metric(
                    "offline",
                    "encode_ms_per_video",
                    1e3 * offline[name],
                    n=n_videos,
                    higher_is_better=False,
                ),
            ]
            if name == "pig":
                ms.append(
                    metric(
                        "query",
                        "latency_ratio",
                        latency["pig"] / latency["baseline"],
                        n=n_timed[name],
                        higher_is_better=False,
                    )
                )
                ms.append(
                    metric(
                        "offline",
                        "encode_ratio",
                        offline["pig"] / offline["baseline"],
                        n=n_videos,
                        higher_is_better=False,
                    )
                )
            config = {
                "test": args.test,
                "gallery": n_videos,
                "queries": args.queries,
                "repeats": args.repeats,
                "threads": args.threads,
                "dtype": str(idx.dtype),
                "query_path": "methods.pig.model.query_scores + topk(10), arms interleaved",
                "artifact": str(arts[name]),
                "seed": int(meta.get("seed", 0)),
            }
            record = make_run_record(
                scale=args.scale,
                paper=args.paper,
                method=meta["method"],
                variant=meta["variant"],
                base_model=meta.get("base_model", ""),
                suite="cost",
                tasks=["index", "offline", "query"],
                seed=int(meta.get("seed", 0)),
                config=config,
                metrics=ms,
                provenance=provenance.capture(t["started_at"], t["wall_s"]),
            )
            write_run_record(out, record)
    print(
        json.dumps(
            {
                "latency_ms": {k: 1e3 * v for k, v in latency.items()},
                "offline_ms_per_video": {k: 1e3 * v for k, v in offline.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
