"""Small builders shared by tests: run records and claims files in a temporary folder, and the
reduced tiny workflow (scale file, runner, metric values) that the end-to-end tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import yaml

from claimbench import provenance
from claimbench.io import atomic_write_jsonl
from claimbench.records import make_run_record, metric, write_run_record


def write_record(
    runs: Path,
    variant: str,
    metrics: list[tuple],
    *,
    scale: str = "tiny",
    paper: str = "demo",
    suite: str = "lm_eval",
    samples: list[dict] | None = None,
    task_hashes: dict | None = None,
) -> Path:
    """metrics: (task, name, value, stderr) tuples; each metric's n is the number of its task's
    sample rows when ``samples`` are given (ingest checks it), else 100."""
    path = runs / scale / paper / variant / f"{suite}.json"
    rows: dict[str, int] = {}
    for s in samples or []:
        rows[s["task"]] = rows.get(s["task"], 0) + 1
    sname = None
    if samples is not None:
        sname = f"{suite}.samples.jsonl"
        atomic_write_jsonl(path.parent / sname, samples)
    rec = make_run_record(
        scale=scale,
        paper=paper,
        method=paper,
        variant=variant,
        base_model="lm-s",
        suite=suite,
        tasks=sorted({m[0] for m in metrics}),
        seed=0,
        config={"variant": variant},
        metrics=[
            metric(t, name, v, stderr=se, n=rows.get(t, 100), higher_is_better=True)
            for t, name, v, se in metrics
        ],
        provenance=provenance.capture(),
        task_hashes=task_hashes or {m[0]: "h" + m[0] for m in metrics},
        samples=sname,
    )
    write_run_record(path, rec)
    return path


def beats_claim(a: str, b: str, task: str = "t", metric: str = "acc") -> dict:
    """A tiny-scale claim "variant a beats variant b" on one task's metric."""
    return {
        "id": f"{a}_beats_{b}",
        "statement": f"{a} beats {b}",
        "scales": ["tiny"],
        "check": {
            "compare": {
                "lhs": {"variant": a, "task": task, "metric": metric},
                "rhs": {"variant": b, "task": task, "metric": metric},
                "op": ">",
            }
        },
    }


def write_claims(methods: Path, paper: str, claims: list[dict], pkg: str | None = None) -> Path:
    path = methods / (pkg or paper) / "claims.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"paper": paper, "title": f"Paper {paper}", "claims": claims}))
    return path


# --------------------------------------------------------------------------- reduced workflow


def reduced_scale(path: Path, root: Path) -> Path:
    """The tiny scale cut down to about a minute of CPU: fewer samples, steps and eval docs."""
    data = yaml.safe_load((root / "config/scales/tiny.yaml").read_text())
    data["data"]["arith"].update(n_train_per_family=400, n_eval_per_family=10)
    data["data"]["text"].update(max_train_chars=150_000, n_eval_chunks=8, eval_chunk_chars=500)
    data["tokenizer"]["vocab_size"] = 300
    for spec in data["models"].values():
        spec["train"].update(steps=40, batch_size=8, warmup_steps=5)
    data["eval"]["lm_eval"]["limit"] = 16
    path.write_text(yaml.safe_dump(data))
    return path


def workflow_command(
    root: Path, workdir: Path, scale_file: Path, *extra: str, cores: int | None = 2
) -> list[str]:
    """``snakemake`` on the checkout's Snakefile, run in ``workdir`` (reduced tiny scale)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # Share the PyPI download cache with the checkout (fetched at most once per machine).
    (root / "resources").mkdir(exist_ok=True)
    if not (workdir / "resources").exists():
        (workdir / "resources").symlink_to(root / "resources")
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(root / "Snakefile")]
    cmd += ["--directory", str(workdir)]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    cmd += ["reproduce_all", "--config", "scale=tiny", f"scale_file={scale_file}", "papers=[base]"]
    return [*cmd, *extra]


def run_workflow(
    root: Path,
    workdir: Path,
    scale_file: Path,
    *extra: str,
    cores: int | None = 2,
    env: dict | None = None,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = workflow_command(root, workdir, scale_file, *extra, cores=cores)
    # SIGINT, not SIGTERM: a Snakemake stuck in a status loop ignores SIGTERM.
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def metric_values(db: Path) -> list[tuple]:
    """Every leaderboard value of a store, sorted (what two runs must agree on)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT scale, paper, variant, task, metric, value, stderr, n FROM leaderboard "
            "ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()


def tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-n:]}\n--- stderr\n{proc.stderr[-n:]}"


def dry_run(snakemake_bin: str, root: Path, *args: str) -> tuple[int, str]:
    """``snakemake -n --cores 1 <args>`` in the repository: (exit status, stdout + stderr)."""
    proc = subprocess.run(
        [snakemake_bin, "-n", "--cores", "1", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr
