"""Hostile input through the ``claimbench`` command line, run as a real subprocess.

Table-driven: (command line, one-line message it must print, exit code). Every failing case
also asserts that the store, the run records and the report folder are byte-identical before
and after (a hash of the whole tree), and that no hidden temporary file or folder is left.
Classes: SQL injection and writes through the query surface; library errors (a store that is
not a DuckDB file, a full disk, a read-only file system, Ctrl-C) as one line; an unknown paper
or scale refused with the known ones; the report swapped in whole.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_claims, write_record

ROOT = Path(__file__).resolve().parent.parent
DB = "results/claimbench.duckdb"
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


def cli(root: Path, *argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m claimbench.cli ARGV`` in ``root``; ``code`` runs first in the same process
    (to inject a fault such as a full disk into a real run of the command line)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    if code is None:
        cmd = [sys.executable, "-m", "claimbench.cli", *argv]
    else:
        main = "import sys; from claimbench.cli import main; main(sys.argv[1:])"
        cmd = [sys.executable, "-c", f"{code}\n{main}", *argv]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too) with a hash of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A finished little tree: records, claims, the store and a report, all made by the CLI."""
    root = tmp_path_factory.mktemp("hostile")
    runs, methods = root / "results" / "runs", root / "methods"
    write_record(runs, "a", [("t", "acc", 0.9, 0.01)])
    write_record(runs, "b", [("t", "acc", 0.5, 0.01)])
    write_claims(methods, "demo", [CLAIM])
    for argv in (
        ["ingest", "--runs", "results/runs", "--db", DB, "--methods", "methods"],
        ["report", "--db", DB, "--out", "reports", "--methods", "methods"],
    ):
        proc = cli(root, *argv)
        assert proc.returncode == 0, proc.stderr
    # Pages unlike the ones the store renders, so that a half-written new report would show.
    for page in (root / "reports").glob("*.html"):
        page.write_text(f'<meta name="generator" content="claimbench report">old {page.name}')
    (root / "reports" / "README.md").write_text("not generated: kept\n")
    (root / "outside.csv").write_text("secret,value\nkey,42\n")
    (root / "not_a_db.duckdb").write_text("hello, I am text\n" * 50)
    (root / "empty.duckdb").write_bytes(b"")
    (root / "folder.duckdb").mkdir()
    data = bytearray((root / DB).read_bytes())
    data[4096:] = bytes(len(data) - 4096)  # blocks zeroed: checksums fail
    (root / "corrupt.duckdb").write_bytes(bytes(data))
    (root / "broken_methods" / "demo").mkdir(parents=True)
    (root / "broken_methods" / "demo" / "claims.yaml").write_text("paper: [demo\n")
    return root


Q = ["query", "--db", DB]
FULL_DISK = """
import errno, claimbench.report.publish as p
_write, _n = p.atomic_write_text, [0]
def write(path, text):
    _n[0] += 1
    if _n[0] == 2:  # the second page: the first is already written
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return _write(path, text)
p.atomic_write_text = write
"""
READ_ONLY = """
import errno, os
def replace(src, dst, *a, **k):
    raise OSError(errno.EROFS, "Read-only file system", str(dst))
os.replace = replace
"""
CTRL_C = """
import claimbench.store as s
def query(*a, **k):
    raise KeyboardInterrupt
s.query = query
"""

# (id, argv, fault injected, one-line stderr (regex, searched), exit code)
CASES = [
    # 1. injection through --paper / --scale: refused as unknown values, never run as SQL
    ("paper-or-true", ["claims", "--db", DB, "--paper", "x' OR '1'='1"],
     None, r"--paper: \"x' OR '1'='1\" is not a known paper \(known: demo\)", 2),
    ("paper-quote", ["claims", "--db", DB, "--paper", "O'Brien"],
     None, r"--paper: \"O'Brien\" is not a known paper", 2),
    ("paper-union", ["claims", "--db", DB, "--paper",
                     "demo' UNION SELECT table_name, 1, 1, 1, 1 FROM information_schema.tables --"],
     None, r"is not a known paper \(known: demo\)", 2),
    ("scale-stacked", ["claims", "--db", DB, "--scale", "tiny'; COPY runs TO 'leak.csv'; --"],
     None, r"--scale: .* is not a known scale \(config/scales/: [^)]*\btiny\b", 2),
    ("ls-paper", ["ls", "runs", "--db", DB, "--paper", "dmeo"],
     None, r"claimbench ls: --paper: 'dmeo' is not a known paper \(known: demo\)", 2),
    ("ls-scale", ["ls", "metrics", "--db", DB, "--scale", "huge"],
     None, r"claimbench ls: --scale: 'huge' is not a known scale", 2),
    # 1. the query surface reads the store and nothing else
    ("copy-to", [*Q, "COPY runs TO 'leak.csv'"],
     None, r"a COPY statement is refused; claimbench query runs one read-only SELECT", 2),
    ("attach", [*Q, "ATTACH 'other.duckdb' AS o"], None, r"an? ATTACH statement is refused", 2),
    ("install", [*Q, "INSTALL httpfs"], None, r"a LOAD statement is refused", 2),
    ("load", [*Q, "LOAD httpfs"], None, r"a LOAD statement is refused", 2),
    ("stacked", [*Q, "SELECT 1; COPY runs TO 'leak.csv'"],
     None, r"2 statements given; claimbench query runs exactly one read-only SELECT", 2),
    ("read-csv", [*Q, "SELECT * FROM read_csv('outside.csv')"],
     None, r"query failed: Permission Error: Cannot access file \"outside.csv\"", 2),
    ("replacement-scan", [*Q, "SELECT * FROM 'outside.csv'"],
     None, r"query failed: Permission Error: Cannot access file \"outside.csv\"", 2),
    ("copy-from-subquery", [*Q, "SELECT * FROM query('COPY runs TO ''leak.csv''')"],
     None, r"query failed: Parser Error", 2),
    ("set-config", [*Q, "SET enable_external_access = true"],
     None, r"a SET statement is refused", 2),
    ("delete", [*Q, "DELETE FROM runs"], None, r"a DELETE statement is refused.*read-only", 2),
    ("export", [*Q, "EXPORT DATABASE 'dump'"], None, r"an? EXPORT statement is refused", 2),
    ("syntax", [*Q, "SELEC 1"], None, r"results/claimbench.duckdb: Parser Error: syntax error", 2),
    # 5. a store that is not a DuckDB file, missing, a folder; bad options; faults
    ("text-db", ["query", "--db", "not_a_db.duckdb", "SELECT 1"],
     None, r"claimbench query: not_a_db.duckdb: cannot be opened as a DuckDB store", 2),
    ("empty-db", ["claims", "--db", "empty.duckdb"],
     None, r"claimbench claims: empty.duckdb: cannot be opened as a DuckDB store", 2),
    ("corrupt-db-report", ["report", "--db", "corrupt.duckdb", "--methods", "methods"],
     None, r"claimbench report: corrupt.duckdb: .*(checksum|Corrupt|IO Error)", 2),
    ("folder-db", ["ls", "runs", "--db", "folder.duckdb"],
     None, r"claimbench ls: folder.duckdb: not a file", 2),
    ("missing-db", ["claims", "--db", "nowhere.duckdb"],
     None, r"nowhere.duckdb: no database yet; run `claimbench ingest`", 2),
    ("report-methods", ["report", "--db", DB, "--methods", "methdos"],
     None, r"--methods: 'methdos' is not a folder", 2),
    ("report-out-file", ["report", "--db", DB, "--out", "outside.csv", "--methods", "methods"],
     None, r"--out: 'outside.csv' is a file, not the report folder", 2),
    ("ingest-db-under-file", ["ingest", "--runs", "results/runs", "--db", "outside.csv/x.duckdb",
                              "--methods", "methods"],
     None, r"claimbench ingest: outside.csv.*: (Not a directory|File exists)", 2),
    ("ingest-bad-yaml", ["ingest", "--runs", "results/runs", "--db", DB,
                         "--methods", "broken_methods"],
     None, r"claimbench ingest: broken_methods/demo/claims.yaml: .*YAML", 2),
    ("report-full-disk", ["report", "--db", DB, "--out", "reports", "--methods", "methods"],
     FULL_DISK, r"claimbench report: reports/demo.html: No space left on device \(the disk", 2),
    ("ingest-read-only", ["ingest", "--runs", "results/runs", "--db", DB, "--methods", "methods"],
     READ_ONLY, r"claimbench ingest: \S*claimbench.duckdb: .*Read-only file system", 2),
    ("ctrl-c", ["claims", "--db", DB], CTRL_C, r"^claimbench claims: interrupted$", 130),
    # 8. usage errors are one line too
    ("unknown-command", ["claimz"], None, r"invalid choice: 'claimz'", 2),
    ("ls-what", ["ls", "verdicts", "--db", DB], None, r"invalid choice: 'verdicts'", 2),
]  # fmt: skip


@pytest.mark.parametrize(
    "argv, fault, message, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_input_is_one_line_and_changes_nothing(site, argv, fault, message, code):
    before = tree(site)
    proc = cli(site, *argv, code=fault)
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(message, lines[0]), lines[0]
    if code == 2:
        assert lines[0].startswith("error: claimbench")
    assert proc.stdout == ""
    assert tree(site) == before  # store, records, report, no leftover temporary file


def test_values_reach_sql_as_parameters_and_real_filters_still_work(site):
    proc = cli(site, "claims", "--db", DB, "--paper", "demo", "--scale", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert "a_beats_b" in proc.stdout and "1 held, 0 failed, 0 missing" in proc.stdout
    proc = cli(site, "ls", "metrics", "--db", DB, "--paper", "demo", "--scale", "tiny")
    assert proc.returncode == 0 and proc.stdout.count("demo") == 2, proc.stderr
    proc = cli(site, *Q, "SELECT 'O''Brien' AS name, count(*) AS n FROM runs", "--csv")
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["name,n", "O'Brien,2"]
    proc = cli(site, *Q, "DESCRIBE runs")
    assert proc.returncode == 0 and "run_id" in proc.stdout


def test_report_failing_mid_way_leaves_the_old_report_byte_identical(site, tmp_path, monkeypatch):
    import shutil

    import claimbench.report.publish as publish
    from claimbench.report import render_report

    out = tmp_path / "reports"
    shutil.copytree(site / "reports", out)
    (out / "shots").mkdir()
    (out / "shots" / "index.png").write_bytes(b"png")
    before = tree(tmp_path)
    written = []

    def write(path, text):
        if written:  # the second page
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        return real(path, text)

    real = publish.atomic_write_text
    monkeypatch.setattr(publish, "atomic_write_text", write)
    with pytest.raises(OSError, match="No space left"):
        render_report(site / DB, out, site / "methods")
    assert written and tree(tmp_path) == before  # no new page, no staging folder left

    # A killed run leaves its staging folder; the next run removes it (its process is gone)
    # and swaps the new report in whole, keeping what the renderer does not own.
    monkeypatch.setattr(publish, "atomic_write_text", real)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".reports.new-{dead.pid}-abc"
    stale.mkdir()
    (stale / "index.html").write_text("half")
    live = tmp_path / f".reports.new-{os.getppid()}-abc"  # a live process's: left alone
    live.mkdir()
    inode = out.stat().st_ino
    (out / "gone.html").write_bytes((out / "demo.html").read_bytes())  # a paper no longer there
    render_report(site / DB, out, site / "methods")
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "demo.html",
        "index.html",
        "shots",
    ]
    assert (out / "shots" / "index.png").read_bytes() == b"png"
    assert "old index.html" not in (out / "index.html").read_text() and "a_beats_b" in (
        out / "demo.html"
    ).read_text(encoding="utf-8")
    assert out.stat().st_ino != inode  # a new folder, swapped in
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "reports"]


def test_a_swap_killed_half_way_gets_the_old_report_back(site, tmp_path):
    from claimbench.report.publish import remove_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".reports.old-{dead.pid}-xyz"  # renamed aside, new one not in yet
    aside.mkdir()
    (aside / "index.html").write_text("old report")
    remove_stale(tmp_path / "reports")
    assert (tmp_path / "reports" / "index.html").read_text() == "old report"
    assert not aside.exists()


def test_the_swap_without_renameat2_keeps_the_same_contract(site, tmp_path, monkeypatch):
    """Where the system cannot exchange two folders atomically: two renames, same result."""
    import shutil

    import claimbench.report.publish as publish
    from claimbench.report import render_report

    out = tmp_path / "reports"
    shutil.copytree(site / "reports", out)
    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    render_report(site / DB, out, site / "methods")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "demo.html", "index.html"]
    assert "a_beats_b" in (out / "demo.html").read_text(encoding="utf-8")
