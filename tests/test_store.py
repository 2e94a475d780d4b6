import duckdb
import pytest

from claimbench.errors import RecordError
from claimbench.store import ingest, query
from tests.helpers import beats_claim, write_claims, write_record

CLAIM = {
    "id": "a_beats_b",
    "statement": "a has higher acc than b",
    "scales": ["tiny"],
    "check": {
        "compare": {
            "lhs": {"variant": "a", "task": "t", "metric": "acc"},
            "op": ">",
            "rhs": {"variant": "b", "task": "t", "metric": "acc"},
        }
    },
}


@pytest.fixture
def store(tmp_path):
    runs, methods = tmp_path / "runs", tmp_path / "methods"
    samples = [
        {
            "task": "t",
            "doc_id": i,
            "prompt": f"q{i}",
            "target": "1",
            "response": "1",
            "metrics": {"acc": 1.0},
        }
        for i in range(100)  # as many rows as the metric's n (the helper writes n=100)
    ]
    write_record(runs, "a", [("t", "acc", 0.9, 0.01), ("u", "ppl", 3.0, None)], samples=samples)
    write_record(runs, "b", [("t", "acc", 0.5, 0.01)])
    write_claims(methods, "demo", [CLAIM])
    return runs, methods, tmp_path / "db" / "store.duckdb"


def snapshot(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            for t in ("metrics", "claims", "claim_checks", "samples")
        }
    finally:
        con.close()


def test_ingest_tables_and_verdicts(store):
    runs, methods, db = store
    counts = ingest(runs, db, methods)
    assert counts == {
        "runs": 2,
        "metrics": 3,
        "samples": 100,
        "series": 0,
        "claims": 1,
        "claim_checks": 1,
    }
    cols, rows = query(db, "SELECT status FROM claim_checks")
    assert rows == [("held",)]
    cols, rows = query(db, "SELECT variant, task, metric, value FROM leaderboard ORDER BY ALL")
    assert rows == [("a", "t", "acc", 0.9), ("a", "u", "ppl", 3.0), ("b", "t", "acc", 0.5)]


def test_ingest_is_idempotent(store):
    runs, methods, db = store
    ingest(runs, db, methods)
    first = snapshot(db)
    ingest(runs, db, methods)
    assert snapshot(db) == first


def test_corrupted_record_leaves_database_intact(store):
    runs, methods, db = store
    ingest(runs, db, methods)
    before_bytes = db.read_bytes()
    bad = runs / "tiny" / "demo" / "b" / "lm_eval.json"
    bad.write_text(bad.read_text()[:40])
    with pytest.raises(RecordError, match=str(bad)):
        ingest(runs, db, methods)
    assert db.read_bytes() == before_bytes
    assert not [p for p in db.parent.iterdir() if p.name != db.name], "temp files left behind"


def test_query_is_read_only(store):
    runs, methods, db = store
    ingest(runs, db, methods)
    with pytest.raises(Exception, match="read-only|read only"):
        query(db, "DELETE FROM metrics")


def test_cli_ingest_error_is_one_line(store):
    import subprocess
    import sys

    runs, methods, db = store
    ingest(runs, db, methods)
    before = db.read_bytes()
    bad = runs / "tiny" / "demo" / "a" / "lm_eval.json"
    bad.write_text("{not json")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "claimbench.cli",
            "ingest",
            "--runs",
            str(runs),
            "--db",
            str(db),
            "--methods",
            str(methods),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert db.read_bytes() == before


def test_compare_stores_finds_every_changed_added_and_dropped_metric(tmp_path):
    from tools.compare_stores import compare

    def store(name, rows):
        runs = tmp_path / name / "runs"
        for variant, metrics in rows.items():
            write_record(runs, variant, metrics)
        db = tmp_path / name / "x.duckdb"
        write_claims(tmp_path / "methods", "demo", [])
        ingest(runs, db, tmp_path / "methods")
        return str(db)

    a = store("a", {"v1": [("t", "acc", 0.5, 0.1)], "v2": [("t", "acc", 0.7, 0.1)]})
    same = store("same", {"v1": [("t", "acc", 0.5, 0.1)], "v2": [("t", "acc", 0.7, 0.1)]})
    b = store("b", {"v1": [("t", "acc", 0.5000001, 0.1)], "v3": [("t", "acc", 0.7, 0.1)]})
    assert compare(a, same, set()) == []
    out = compare(a, b, set())
    assert len(out) == 3
    assert any(line.startswith("differs:") and "v1" in line for line in out)
    assert any(line.startswith(f"only in {a}") and "v2" in line for line in out)
    assert any(line.startswith(f"only in {b}") and "v3" in line for line in out)
    assert compare(a, b, {"lm_eval"}) == []  # a skipped (wall-clock) suite is left out


def test_compare_stores_names_changed_verdicts_and_the_cpu_kinds(tmp_path, capsys, monkeypatch):
    """Two stores of the same runs on different CPU kinds: compare_stores names the kinds and
    every claim whose verdict moved (measured: a change of CPU kind alone moved 17 tiny
    verdicts; README, "Determinism")."""
    from claimbench import provenance as prov
    from tools import compare_stores

    claims = [beats_claim("v1", "v2")]
    write_claims(tmp_path / "methods", "demo", claims)

    def store(name, cpu, v1):
        monkeypatch.setattr(prov, "cpu_kind", lambda: cpu)
        runs = tmp_path / name / "runs"
        write_record(runs, "v1", [("t", "acc", v1, 0.01)])
        write_record(runs, "v2", [("t", "acc", 0.5, 0.01)])
        db = tmp_path / name / "x.duckdb"
        ingest(runs, db, tmp_path / "methods")
        return str(db)

    a = store("a", "x86_64 AVX2 Old CPU", 0.7)
    b = store("b", "x86_64 AVX512 New CPU", 0.3)
    same = store("same", "x86_64 AVX2 Old CPU", 0.7)
    assert compare_stores.cpu_kinds(a) == ["x86_64 AVX2 Old CPU"]
    assert compare_stores.compare_verdicts(a, same) == []
    assert compare_stores.compare_verdicts(a, b) == [
        "verdict: tiny/demo/v1_beats_v2/paper: held -> failed"
    ]
    assert compare_stores.main([a, b]) == 1
    out = capsys.readouterr().out
    assert "note: CPU kinds differ" in out and "AVX512 New CPU" in out
    assert out.rstrip().endswith("1 of 1 claim verdicts differ")
    assert compare_stores.main([a, same]) == 0
    assert "CPU kinds differ" not in capsys.readouterr().out


def test_every_record_names_the_cpu_kind():
    from claimbench import provenance as prov

    kind = prov.capture()["versions"]["cpu"]
    assert kind == prov.cpu_kind() and len(kind.split()) >= 2, kind
