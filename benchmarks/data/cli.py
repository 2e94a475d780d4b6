"""Write the data files of one scale: ``python -m benchmarks.data.cli {arith,text} ...``.

A job of paper ``base`` whose variant is the data set's name (``arith`` or ``text``); its
settings are the scale file's ``data.<variant>`` section (schema defaults filled in)::

    python -m benchmarks.data.cli arith --scale tiny --paper base --variant arith \
        --out data/tiny/arith
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.data import arith, text
from claimbench.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_files
from claimbench.job import Job, add_job_options, run_job


def build_arith(spec: dict, seed: int, out: Path) -> None:
    world = arith.build_world(
        seed=seed,
        id_families=spec["id_families"],
        ood_families=spec["ood_families"],
        n_train_per_family=spec["n_train_per_family"],
        n_eval_per_family=spec["n_eval_per_family"],
        max_digits=spec["max_digits"],
    )
    files = []
    for split, problems in world.items():
        files.append(atomic_write_jsonl(out / f"{split}.jsonl", [p.as_dict() for p in problems]))
    mc = arith.multiple_choice(world["test_id"], seed=seed)
    files.append(atomic_write_jsonl(out / "mc_test.jsonl", mc))
    manifest = {
        "generator": "benchmarks.data.arith",
        "seed": seed,
        "spec": spec,
        "counts": {split: len(p) for split, p in world.items()} | {"mc_test": len(mc)},
        "sha256": sha256_files(files),
    }
    atomic_write_json(out / "manifest.json", manifest)


def build_text(spec: dict, sdist: Path, out: Path) -> None:
    plays = text.read_plays(sdist)
    splits = text.build_splits(
        plays,
        valid_docs=spec["valid_docs"],
        test_docs=spec["test_docs"],
        max_train_chars=spec["max_train_chars"],
        eval_chunk_chars=spec["eval_chunk_chars"],
        n_eval_chunks=spec["n_eval_chunks"],
    )
    files = [atomic_write_text(out / "train.txt", splits["train"])]
    for split in ("valid", "test"):
        rows = [{"id": f"{split}-{i:05d}", "text": t} for i, t in enumerate(splits[split])]
        files.append(atomic_write_jsonl(out / f"{split}.jsonl", rows))
    manifest = {
        "source": f"{spec['package']}=={spec['version']}",
        "source_sha256": spec["sha256"],
        "spec": spec,
        "chars": {"train": len(splits["train"])}
        | {s: sum(map(len, splits[s])) for s in ("valid", "test")},
        "sha256": sha256_files(files),
    }
    atomic_write_json(out / "manifest.json", manifest)


def _spec(job: Job, what: str) -> dict:
    if job.variant != what:
        raise ValueError(f"--variant {job.variant}: the {what} data set's variant is {what!r}")
    return job.scale_config["data"][what]


def run_arith(job: Job) -> None:
    build_arith(_spec(job, "arith"), job.seed, job.out)


def run_text(job: Job) -> None:
    build_text(_spec(job, "text"), job.args.sdist, job.out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="what", required=True)
    a = add_job_options(sub.add_parser("arith"), papers=["base"], out="folder of the data set")
    a.set_defaults(run=run_arith)
    t = add_job_options(sub.add_parser("text"), papers=["base"], out="folder of the data set")
    t.add_argument("--sdist", type=Path, required=True, help="the text package's sdist")
    t.set_defaults(run=run_text)
    run_job(ap, None, argv)


if __name__ == "__main__":
    main()
