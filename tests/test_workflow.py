"""End to end: the whole tiny reproduce_all path through Snakemake, with a reduced scale file.

It runs the harness's own pipeline (``papers=[base]``: data, tokenizer, base models, lm-eval,
ingest, report); each paper tests its own pipeline on a micro config in its test module.

``test_reproduce_all_reduced`` runs in `make test` (about a minute); the from-scratch
determinism check runs the same workflow twice and is marked slow (`make test-all`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import duckdb
import pytest
import yaml

from claimbench.report.svg import fmt_num

pytestmark = pytest.mark.e2e


def reduced_scale(path: Path, root: Path) -> Path:
    data = yaml.safe_load((root / "config/scales/tiny.yaml").read_text())
    data["data"]["arith"].update(n_train_per_family=400, n_eval_per_family=10)
    data["data"]["text"].update(max_train_chars=150_000, n_eval_chunks=8, eval_chunk_chars=500)
    data["tokenizer"]["vocab_size"] = 300
    for spec in data["models"].values():
        spec["train"].update(steps=40, batch_size=8, warmup_steps=5)
    data["eval"]["lm_eval"]["limit"] = 16
    path.write_text(yaml.safe_dump(data))
    return path


def run_workflow(snakemake_bin: str, root: Path, workdir: Path, scale_file: Path, *extra: str):
    workdir.mkdir(parents=True, exist_ok=True)
    # Share the PyPI download cache with the checkout (fetched at most once per machine).
    (root / "resources").mkdir(exist_ok=True)
    if not (workdir / "resources").exists():
        (workdir / "resources").symlink_to(root / "resources")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [
        snakemake_bin,
        "-s",
        str(root / "Snakefile"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "reproduce_all",
        "--config",
        "scale=tiny",
        f"scale_file={scale_file}",
        "papers=[base]",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def metric_values(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "SELECT variant, task, metric, value, stderr FROM leaderboard ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()


def test_reproduce_all_reduced(tmp_path, root, snakemake_bin):
    scale_file = reduced_scale(tmp_path / "tiny-ci.yaml", root)
    work = tmp_path / "work"
    proc = run_workflow(snakemake_bin, root, work, scale_file)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    db = work / "results" / "claimbench.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT paper, variant, suite, scale FROM runs ORDER BY ALL").fetchall()
        assert runs == [("base", "lm-m", "lm_eval", "tiny"), ("base", "lm-s", "lm_eval", "tiny")]
        tasks = {r[0] for r in con.execute("SELECT DISTINCT task FROM metrics").fetchall()}
        assert tasks == {"arith_id", "arith_ood", "arith_mc", "text_ppl"}
        n_docs = con.execute("SELECT max(n) FROM metrics WHERE task = 'arith_mc'").fetchone()[0]
        assert n_docs == 16  # the limit of the reduced config
        statuses = con.execute(
            "SELECT claim_id, status FROM claim_checks WHERE paper = 'base' ORDER BY ALL"
        ).fetchall()
        assert {c for c, _ in statuses} == {
            "larger_lower_bpb",
            "mc_above_chance",
            "id_above_zero",
            "ood_below_id",
        }
        assert all(s in ("held", "failed", "missing") for _, s in statuses)
        bpb = con.execute(
            "SELECT value FROM leaderboard WHERE variant = 'lm-s' AND metric = 'bits_per_byte'"
        ).fetchone()[0]
        assert (
            con.execute("SELECT count(*) FROM series WHERE name = 'train_loss'").fetchone()[0] == 2
        )
    finally:
        con.close()

    index = (work / "reports" / "index.html").read_text()
    page = (work / "reports" / "base.html").read_text()
    assert fmt_num(bpb) in index and fmt_num(bpb) in page
    assert "<svg" in page
    # Per-sample outputs reach the page escaped (prompts hold "Question:" lines).
    assert "Question: " in page

    # Nothing left to do right after a complete run.
    again = run_workflow(snakemake_bin, root, work, scale_file, "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


@pytest.mark.slow
def test_two_runs_from_scratch_are_identical(tmp_path, root, snakemake_bin):
    scale_file = reduced_scale(tmp_path / "tiny-ci.yaml", root)
    values = []
    for name in ("a", "b"):
        proc = run_workflow(snakemake_bin, root, tmp_path / name, scale_file)
        assert proc.returncode == 0, proc.stderr[-3000:]
        values.append(metric_values(tmp_path / name / "results" / "claimbench.duckdb"))
    assert values[0] == values[1]
