"""The inference-cost claim, measured: ``python -m methods.pig.cost <job options> --baseline DIR
--pig DIR --data DIR --out-baseline F`` (``--out``: the PIG record).

One job (variant ``cost``, seed = ``papers.pig.cost.seed``), settings from ``papers.pig.cost``
(``test``, ``queries``, ``repeats``). In one process, on the job's device and dtype, for the two
artifacts (Two-Tower and PIG, same seed):

* the offline index (one vector per test video) of both arms must have the same shape and
  dtype, or this stops with an error; bytes per stored video are reported;
* online query latency: :func:`methods.pig.model.query_scores` (one text pass + dot products
  with the whole test gallery + top-10), the same function for both arms, timed per query with
  the arms interleaved (A, B, A, B, ...) after a warm-up; the median over queries x repeats;
* offline per-video encoding time (batch of 64, median of repeats), reported separately.

Writes one run record per arm (suite ``cost``, variant = the arm as its artifact's meta.json
names it): tasks ``index`` (bytes_per_video, dim, dtype_bits), ``query`` (latency_ms, and for
PIG latency_ratio = PIG / Two-Tower) and ``offline`` (encode_ms_per_video). On a GPU every
timed call ends with a device synchronisation, so the timings cover the work, not its launch.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from claimbench.errors import ClaimbenchError
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric
from methods.pig.model import query_scores
from methods.pig.train import (
    autocast,
    encode_videos,
    load_model,
    place,
    read_split,
    set_determinism,
)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(
    job: Job, artifacts: dict[str, Path], data: Path, test: str, queries: int, repeats: int
):
    """Index, median query latency, offline encode time per video (seconds) of each artifact."""
    split = read_split(data, test)
    arms = {}
    for name, path in artifacts.items():
        model, vocab = load_model(path)
        arms[name] = (place(model, job.device, job.dtype), vocab)
    device = job.torch_device
    batch, workers = job.config["eval_batch"], job.config["workers"]
    index, offline = {}, {}
    for name, (model, _) in arms.items():
        index[name] = encode_videos(model, split.frames, batch, workers)
    shapes = {n: (tuple(i.shape), str(i.dtype)) for n, i in index.items()}
    if len(set(shapes.values())) != 1:
        raise ClaimbenchError(f"stored per-video vectors differ between arms: {shapes}")
    caps = split.captions[:queries]
    tok = {
        n: [tuple(x.to(device) for x in vocab.encode([c], m.cfg.context_length)) for c in caps]
        for n, (m, vocab) in arms.items()
    }
    times: dict[str, list[float]] = {n: [] for n in arms}
    for rep in range(repeats + 1):  # the first pass is a warm-up
        for q in range(len(caps)):
            for name, (model, _) in arms.items():
                tokens, eot = tok[name][q]
                _sync(device)
                t0 = time.perf_counter()
                with autocast(model):
                    query_scores(model, tokens, eot, index[name]).topk(10, dim=1)
                _sync(device)
                if rep:
                    times[name].append(time.perf_counter() - t0)
    for name, (model, _) in arms.items():
        runs = []
        for _ in range(3):
            _sync(device)
            t0 = time.perf_counter()
            encode_videos(model, split.frames, batch, workers)
            _sync(device)
            runs.append((time.perf_counter() - t0) / len(split.frames))
        offline[name] = statistics.median(runs)
    latency = {n: statistics.median(v) for n, v in times.items()}
    return index, latency, offline, {n: len(v) for n, v in times.items()}, len(split.frames)


def run(job: Job) -> None:
    args, cfg = job.args, job.config["cost"]
    set_determinism()
    arts = {"baseline": args.baseline, "pig": args.pig}
    index, latency, offline, n_timed, n_videos = measure(
        job, arts, args.data, cfg["test"], cfg["queries"], cfg["repeats"]
    )
    for name, out in (("baseline", args.out_baseline), ("pig", job.out)):
        meta = json.loads((arts[name] / "meta.json").read_text(encoding="utf-8"))
        seed = int(meta.get("seed", 0))
        if seed != job.seed:
            raise ClaimbenchError(
                f"{arts[name] / 'meta.json'}: seed {seed}, but this cost job runs with --seed "
                f"{job.seed} (papers.pig.cost.seed)"
            )
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
            "test": cfg["test"],
            "gallery": n_videos,
            "queries": cfg["queries"],
            "repeats": cfg["repeats"],
            "threads": job.threads,
            "dtype": str(idx.dtype),
            "query_path": "methods.pig.model.query_scores + topk(10), arms interleaved",
            "artifact": str(arts[name]),
            "seed": seed,
        }
        record = job.record(
            method=meta["method"],
            variant=meta["variant"],
            base_model=meta.get("base_model", ""),
            suite="cost",
            tasks=["index", "offline", "query"],
            config=config,
            metrics=ms,
        )
        job.write_record(record, out)
    print(
        json.dumps(
            {
                "latency_ms": {k: 1e3 * v for k, v in latency.items()},
                "offline_ms_per_video": {k: 1e3 * v for k, v in offline.items()},
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["pig"], out="the PIG arm's cost record")
    ap.add_argument("--baseline", type=Path, required=True, help="Two-Tower artifact folder")
    ap.add_argument("--pig", type=Path, required=True, help="PIG artifact folder")
    ap.add_argument("--data", type=Path, required=True, help="folder of the canonical splits")
    ap.add_argument(
        "--out-baseline", type=Path, required=True, help="the Two-Tower arm's cost record"
    )
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
