"""End to end: the whole tiny reproduce_all path through Snakemake, with a reduced scale file.

It runs the harness's own pipeline (``papers=[base]``: data, tokenizer, base models, lm-eval,
ingest, report); each paper tests its own pipeline on a micro config in its test module.

``test_reproduce_all_reduced`` runs in `make test` (about a minute); the from-scratch
determinism check runs the same workflow twice and is marked slow (`make test-all`).
"""

from __future__ import annotations

import shutil

import duckdb
import pytest

from claimbench.report.svg import fmt_num
from tests.helpers import metric_values, reduced_scale, run_workflow, tail

pytestmark = pytest.mark.e2e


def test_reproduce_all_reduced(reduced_run, root):
    work, scale_file, proc = reduced_run["work"], reduced_run["scale_file"], reduced_run["proc"]
    assert proc.returncode == 0, tail(proc)

    db = work / "results" / "claimbench.duckdb"
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT paper, variant, suite, scale FROM runs ORDER BY ALL").fetchall()
        assert runs == [
            ("base", "lm-m", "lm_eval", "tiny"),
            ("base", "lm-m", "train", "tiny"),
            ("base", "lm-s", "lm_eval", "tiny"),
            ("base", "lm-s", "train", "tiny"),
        ]
        tasks = {r[0] for r in con.execute("SELECT DISTINCT task FROM metrics").fetchall()}
        assert tasks == {"arith_id", "arith_ood", "arith_mc", "text_ppl", "train"}
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
        assert all(
            s in ("held", "failed", "inconclusive", "missing", "not attempted") for _, s in statuses
        )
        bpb = con.execute(
            "SELECT value FROM leaderboard WHERE variant = 'lm-s' AND metric = 'bits_per_byte'"
        ).fetchone()[0]
        # Training curves come from each tiny model's own train record, one per model.
        curves = con.execute(
            "SELECT r.variant, r.suite FROM series s JOIN runs r USING (run_id) "
            "WHERE s.name = 'train_loss' ORDER BY ALL"
        ).fetchall()
        assert curves == [("lm-m", "train"), ("lm-s", "train")]
    finally:
        con.close()

    index = (work / "reports" / "index.html").read_text()
    page = (work / "reports" / "base.html").read_text()
    # every stored number is on its paper's page; the index links there with verdict counts
    assert fmt_num(bpb) in page and 'href="base.html' in index
    assert "<svg" in page
    # Per-sample outputs reach the page escaped (prompts hold "Question:" lines).
    assert "Question: " in page

    # Nothing left to do right after a complete run.
    again = run_workflow(root, work, scale_file, "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


@pytest.mark.slow
def test_two_runs_from_scratch_are_identical(tmp_path, root):
    scale_file = reduced_scale(tmp_path / "tiny-ci.yaml", root)
    values = []
    for name in ("a", "b"):
        proc = run_workflow(root, tmp_path / name, scale_file)
        assert proc.returncode == 0, tail(proc)
        values.append(metric_values(tmp_path / name / "results" / "claimbench.duckdb"))
    assert values[0] == values[1]


def test_one_task_index_per_evaluation(reduced_run, tmp_path, monkeypatch):
    """lm-eval builds a default TaskManager (an index of its thousands of built-in task YAMLs,
    about 10 s) inside every ``simple_evaluate`` call unless it is handed one. The suite builds
    exactly one, of the harness's own tasks, and still gives the pipeline's numbers."""
    import json

    import torch
    from lm_eval.tasks import TaskManager

    from benchmarks import lm_eval_suite

    assert reduced_run["proc"].returncode == 0, tail(reduced_run["proc"])
    work = reduced_run["work"]
    ref = json.loads((work / "results/runs/tiny/base/lm-s/lm_eval.json").read_text())
    cfg = ref["config"]
    built = []
    init = TaskManager.__init__

    def counting_init(self, *args, **kwargs):
        built.append(kwargs.get("include_defaults", True))
        init(self, *args, **kwargs)

    monkeypatch.setattr(TaskManager, "__init__", counting_init)
    out = tmp_path / "lm_eval.json"
    argv = ["--artifact", str(work / "artifacts/tiny/base/lm-s"), "--scale", "tiny"]
    argv += ["--scale-file", str(reduced_run["scale_file"])]
    argv += ["--paper", "base", "--variant", "lm-s", "--tasks", ",".join(cfg["tasks"])]
    argv += ["--data-dir", str(work / "data/tiny"), "--out", str(out), "--seed", str(ref["seed"])]
    argv += ["--batch-size", str(cfg["batch_size"]), "--limit", str(cfg["limit"])]
    argv += ["--max-gen-toks", str(cfg["max_gen_toks"]), "--dtype", cfg["dtype"]]
    threads = torch.get_num_threads()
    try:
        lm_eval_suite.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert built == [False]
    assert json.loads(out.read_text())["metrics"] == ref["metrics"]


def test_a_task_group_is_refused_before_any_work(reduced_run, tmp_path, monkeypatch, capsys):
    from benchmarks import lm_eval_suite

    tasks = tmp_path / "tasks"
    shutil.copytree(lm_eval_suite.TASK_DIR, tasks)
    (tasks / "arith_both.yaml").write_text("group: arith_both\ntask: [arith_id, arith_ood]\n")
    monkeypatch.setattr(lm_eval_suite, "TASK_DIR", tasks)
    work, out = reduced_run["work"], tmp_path / "lm_eval.json"
    argv = ["--artifact", str(work / "artifacts/tiny/base/lm-s"), "--scale", "tiny"]
    argv += ["--scale-file", str(reduced_run["scale_file"])]
    argv += ["--paper", "base", "--variant", "lm-s", "--tasks", "arith_mc,arith_both"]
    argv += ["--data-dir", str(work / "data/tiny"), "--out", str(out)]
    with pytest.raises(SystemExit) as exc:
        lm_eval_suite.main(argv)
    assert exc.value.code == 2
    assert "['arith_both'] are groups or tags" in capsys.readouterr().err
    assert not out.exists()
