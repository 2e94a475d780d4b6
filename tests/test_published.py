"""Published results: publish a scale, merge it into a fresh clone's store and report, and audit
it with ``claimbench verify`` (re-run through Snakemake targets, compare every metric)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from claimbench import cli
from claimbench.errors import ClaimbenchError
from claimbench.published import CAP_BYTES, publish, read_manifest
from claimbench.report import render_report
from claimbench.store import ingest
from tests.helpers import beats_claim, metric_values, tail, write_claims, write_record

ROOT = Path(__file__).resolve().parent.parent
VALUES = {"a": 0.75, "b": 0.5, "c": 0.25}
CLAIMS = [beats_claim("a", "b")]
# A workflow whose rule writes each record again from the test's own run (a copy kept under
# origin/, with a new start time): a re-run gives identical values.
SNAKEFILE = """
import json

from claimbench.records import write_run_record


rule record:
    input:
        "origin/{v}.json",
    output:
        "results/runs/tiny/demo/{v}/lm_eval.json",
    run:
        rec = json.loads(open(input[0]).read())
        rec["provenance"]["started_at"] = "rerun"
        write_run_record(output[0], rec)
"""


def _runs(work: Path, values: dict, scale: str = "tiny") -> None:
    for v, x in values.items():
        write_record(work / "results" / "runs", v, [("t", "acc", x, 0.01)], scale=scale)


@pytest.fixture
def published(tmp_path):
    """A computed tiny scale (three runs, one claim), its store, and its export."""
    work = tmp_path / "work"
    _runs(work, VALUES)
    write_claims(work / "methods", "demo", CLAIMS)
    db = work / "results" / "claimbench.duckdb"
    ingest(work / "results" / "runs", db, work / "methods")
    manifest = publish("tiny", db, work / "results" / "published")
    return {"work": work, "db": db, "out": work / "results" / "published", "manifest": manifest}


def _con(db: Path):
    return duckdb.connect(str(db), read_only=True)


def test_publish_writes_parquet_and_a_manifest(published):
    out, m = published["out"] / "tiny", published["manifest"]
    assert m["scale"] == "tiny" and m["git_sha"] and m["date"] and m["package_versions"]
    assert m["tables"]["runs"]["rows"] == 3 and m["tables"]["metrics"]["rows"] == 3
    assert m["bytes_total"] < CAP_BYTES and m["left_out"]
    assert json.loads((out / "manifest.json").read_text()) == m
    assert read_manifest(out) == (m, [])
    con = duckdb.connect()
    values = con.execute(
        "SELECT value FROM read_parquet(?) ORDER BY value", [str(out / "metrics.parquet")]
    ).fetchall()
    assert [v[0] for v in values] == sorted(VALUES.values())
    # publishing again swaps the folder in whole; the same content gives the same hash
    again = publish("tiny", published["db"], published["out"])
    assert again["content_hash"] == m["content_hash"]
    assert sorted(p.name for p in published["out"].iterdir()) == ["tiny"]


def test_fresh_clone_ingests_and_reports_the_published_scale(published, tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(published["work"] / "methods", clone / "methods")
    shutil.copytree(published["out"], clone / "results" / "published")
    (clone / "results" / "runs").mkdir()
    db = clone / "results" / "claimbench.duckdb"
    cli.main(
        ["ingest", "--runs", str(clone / "results" / "runs"), "--db", str(db), "--methods",
         str(clone / "methods"), "--published", str(clone / "results" / "published")]
    )  # fmt: skip
    assert metric_values(db) == metric_values(published["db"])
    label = f"published at {published['manifest']['git_sha'][:10]}, {published['manifest']['date']}"
    with _con(db) as con:
        assert con.execute("SELECT DISTINCT source FROM runs").fetchall() == [(label,)]
        checks = con.execute("SELECT scale, claim_id, status, detail FROM claim_checks").fetchall()
    with _con(published["db"]) as con:  # the same checker on the same numbers: same verdicts
        assert (
            checks
            == con.execute("SELECT scale, claim_id, status, detail FROM claim_checks").fetchall()
        )
    assert len(checks) == 1
    render_report(db, clone / "reports", clone / "methods")
    index = (clone / "reports" / "index.html").read_text()
    page = (clone / "reports" / "demo.html").read_text()
    assert label in index and label in page and "computed here" not in index


def test_a_computed_scale_is_never_overwritten_by_a_published_one(published, tmp_path):
    work = tmp_path / "local"
    _runs(work, {"a": 0.1, "b": 0.9})  # computed here, other numbers than the export's
    db = work / "store.duckdb"
    ingest(work / "results" / "runs", db, published["work"] / "methods",
           published_dir=published["out"])  # fmt: skip
    with _con(db) as con:
        rows = con.execute(
            "SELECT r.variant, m.value, r.source FROM runs r JOIN metrics m USING (run_id) "
            "ORDER BY 1"
        ).fetchall()
    assert rows == [("a", 0.1, "computed here"), ("b", 0.9, "computed here")]


def _tamper(folder: Path, variant: str, value: float) -> None:
    """Rewrite one published metric (what a wrong or edited export would hold)."""
    path = folder / "metrics.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT m.* REPLACE (CASE WHEN r.variant = $1 THEN $2 ELSE m.value END AS value) "
        f"FROM read_parquet('{path}') m JOIN read_parquet('{folder / 'runs.parquet'}') r "
        f"USING (run_id)) TO '{folder / 'edited.parquet'}' (FORMAT parquet)",
        [variant, value],
    )
    con.close()
    (folder / "edited.parquet").replace(path)


def test_ingest_refuses_an_edited_export(published, tmp_path):
    _tamper(published["out"] / "tiny", "a", 0.5)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ClaimbenchError, match=r"metrics\.parquet: sha256 differs"):
        ingest(tmp_path / "runs", tmp_path / "s.duckdb", published["work"] / "methods",
               published_dir=published["out"])  # fmt: skip


def _verify(work: Path, capsys, *args: str) -> tuple[int, str]:
    """``claimbench verify`` on the working folder ``work``: (exit status, what it printed)."""
    argv = ["verify", "--scale", "tiny", "--directory", str(work)]
    argv += ["--published", str(work / "results" / "published"), *args]
    capsys.readouterr()
    try:
        cli.main(argv)
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_verify_reruns_the_targets_and_finds_a_tampered_value(published, capsys, monkeypatch):
    work = published["work"]
    (work / "Snakefile").write_text(SNAKEFILE)
    (work / "origin").mkdir()
    for v in VALUES:
        shutil.copy(
            work / "results/runs/tiny/demo" / v / "lm_eval.json", work / "origin" / f"{v}.json"
        )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the test workflow's rule imports claimbench
    rc, out = _verify(work, capsys, "--runs", "2", "--dry-run")
    assert rc == 0 and out.count("results/runs/tiny/demo/") == 2 and "estimated time" in out
    before = {p: p.stat().st_mtime_ns for p in (work / "results" / "runs").rglob("*.json")}

    snakefile = ["--snakefile", str(work / "Snakefile")]
    rc, out = _verify(work, capsys, "--runs", "2", "--seed", "1", *snakefile)
    assert rc == 0, out
    assert "2 identical, 0 within the published stderr, 0 different" in out
    rerun = [p for p in before if "rerun" in p.read_text()]
    assert len(rerun) == 2  # the two chosen records were written again, the third was not

    run_a = (
        duckdb.connect()
        .execute(
            "SELECT run_id FROM read_parquet(?) WHERE variant = 'a'",
            [str(published["out"] / "tiny" / "runs.parquet")],
        )
        .fetchone()[0]
    )
    _tamper(published["out"] / "tiny", "a", 0.7)
    rc, out = _verify(work, capsys, "--run", run_a, *snakefile)
    assert rc == 1, out
    assert "sha256 differs" in out  # the edit is named, and the values are still compared
    line = next(x for x in out.splitlines() if x.startswith("results/runs/tiny/demo/a/"))
    assert "0.7" in line and "0.75" in line and line.rstrip().endswith("different")
    rc, out = _verify(work, capsys, "--run", "nope")
    assert rc == 2 and "--run: 'nope' is not a published run" in out


def test_verify_reduced_workflow_three_runs_identical(reduced_run, tmp_path, capsys):
    """The acceptance check on the real workflow: publish the reduced tiny run, then re-run
    three published runs through the workflow's own targets; every metric is identical
    (about 16 s on 2 idle cores beyond the shared reduced run)."""
    assert reduced_run["proc"].returncode == 0, tail(reduced_run["proc"])
    work = tmp_path / "work"
    shutil.copytree(reduced_run["work"], work, symlinks=True)  # leave the shared run as it is
    publish("tiny", work / "results" / "claimbench.duckdb", work / "results" / "published")
    args = ["--runs", "3", "--snakefile", str(ROOT / "Snakefile")]
    args += ["--scale-file", str(reduced_run["scale_file"])]
    rc, out = _verify(work, capsys, *args)
    assert rc == 0, out
    assert out.count("results/runs/tiny/") >= 3 and " 0 different" in out, out
    assert " 0 within" in out, out  # CPU runs of one config are bit-identical


def test_readme_verdict_table_is_current():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "verdict_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_notes_a_published_cpu_kind_other_than_this_one():
    """verify says when the published runs came from another CPU kind (or an unrecorded one):
    numbers are bit-identical only on the same kind, so 'different' rows are then expected."""
    from claimbench.published import cpu_note, published_cpu

    here = "x86_64 AVX512 This CPU"
    same = {"versions": json.dumps({"torch": "2.13.0+cpu", "cpu": here})}
    other = {"versions": {"cpu": "x86_64 AVX2 Other CPU"}}
    old = {"versions": json.dumps({"torch": "2.13.0+cpu"})}
    assert published_cpu(same) == here and published_cpu(old) is None
    assert published_cpu({"versions": "not json"}) is None
    assert cpu_note([same], here) is None
    note = cpu_note([same, other], here)
    assert note.startswith("note: published on CPU") and "AVX2 Other CPU" in note
    assert "'not recorded'" in cpu_note([old], here) and "Determinism" in cpu_note([old], here)
