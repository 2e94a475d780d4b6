"""The DuckDB store: rebuilt idempotently from run records and claims files by one writer.

``ingest`` reads every run record under ``results/runs/`` (validating each), every
``methods/*/claims.yaml``, checks the claims, and writes a new database to a temporary file
that replaces ``results/claimbench.duckdb`` only when everything succeeded. A corrupted record
therefore stops ingest with its file name and leaves the previous database untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import duckdb

from claimbench.claims import check_all, load_claim_files
from claimbench.errors import ClaimbenchError, RecordError
from claimbench.records import (
    TABLES,
    Column,
    ddl,
    load_run_record,
    metric_rows,
    run_row,
    sample_table_row,
    samples_path,
    series_rows,
)

CLAIM_TABLES: dict[str, tuple[Column, ...]] = {
    "claims": (
        Column("paper", "VARCHAR"),
        Column("claim_id", "VARCHAR"),
        Column("statement", "VARCHAR"),
        Column("source", "VARCHAR"),
        Column("scales", "VARCHAR[]"),
        Column("paper_model", "VARCHAR"),
        Column("paper_setting", "VARCHAR"),
        Column("paper_benchmark", "VARCHAR"),
        Column("paper_metric", "VARCHAR"),
        Column("paper_value", "DOUBLE"),
        Column("check_spec", "JSON"),
    ),
    "claim_checks": (
        Column("scale", "VARCHAR"),
        Column("paper", "VARCHAR"),
        Column("claim_id", "VARCHAR"),
        Column("status", "VARCHAR"),
        Column("observed", "JSON"),
        Column("detail", "VARCHAR"),
    ),
    "papers": (
        Column("paper", "VARCHAR PRIMARY KEY"),
        Column("title", "VARCHAR"),
        Column("url", "VARCHAR"),
        Column("package", "VARCHAR"),
        Column("summary", "VARCHAR"),
    ),
}

# Tables of run records come from the record contract (claimbench.records.TABLES), the claims'
# tables from CLAIM_TABLES above; the views join them.
VIEWS = """
CREATE VIEW leaderboard AS
    SELECT r.scale, r.paper, r.method, r.variant, r.base_model, r.suite, m.task, m.metric,
           m.value, m.stderr, m.n, m.higher_is_better, m.task_hash, r.harness_version,
           r.config_hash, r.git_sha, r.run_id
    FROM metrics m JOIN runs r USING (run_id);
CREATE VIEW claim_summary AS
    SELECT c.paper, c.claim_id, c.statement, c.source, c.paper_value, k.scale, k.status, k.detail,
           k.observed
    FROM claims c LEFT JOIN claim_checks k USING (paper, claim_id);
"""
ALL_TABLES: dict[str, tuple[Column, ...]] = {**TABLES, **CLAIM_TABLES}
SCHEMA = ddl(ALL_TABLES) + "\n" + VIEWS


SAMPLES_PER_TASK = 200  # per run and task; the full per-sample file stays beside the record


def find_records(runs_dir: str | Path) -> list[Path]:
    runs_dir = Path(runs_dir)
    return sorted(p for p in runs_dir.rglob("*.json") if not p.name.startswith("."))


def _read_samples(path: Path | None) -> tuple[list[dict], list[list]]:
    """(first SAMPLES_PER_TASK rows per task, per-document scores of every row)."""
    if path is None or not path.is_file():
        return [], []
    rows, scores = [], []
    counts: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}: line {i} is not valid JSON ({e.msg})") from e
            task = str(row.get("task", ""))
            doc_id = row.get("doc_id")
            if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, int)):
                raise RecordError(f"{path}: line {i}: doc_id {doc_id!r} must be an integer or null")
            counts[task] = counts.get(task, 0) + 1
            if counts[task] <= SAMPLES_PER_TASK:
                rows.append(row)
            for name, v in (row.get("metrics") or {}).items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    scores.append([task, row.get("doc_id"), name, float(v), None])
                elif isinstance(v, list) and len(v) == 2:
                    scores.append([task, row.get("doc_id"), name, float(v[0]), float(v[1])])
    return rows, scores


def ingest(
    runs_dir: str | Path, db_path: str | Path, methods_dir: str | Path, z: float = 1.96
) -> dict[str, int]:
    """Rebuild ``db_path`` from all records under ``runs_dir``; returns row counts."""
    records = []
    seen: dict[str, Path] = {}
    for path in find_records(runs_dir):
        rec = load_run_record(path)
        if rec["run_id"] in seen:
            raise RecordError(f"{path}: run_id {rec['run_id']} duplicates {seen[rec['run_id']]}")
        seen[rec["run_id"]] = path
        records.append((path, rec))
    papers, claims = load_claim_files(methods_dir)

    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{db_path.name}.", suffix=".tmp", dir=db_path.parent)
    os.close(fd)
    os.unlink(tmp)  # DuckDB must create the file itself
    try:
        con = duckdb.connect(tmp)
        try:
            con.execute(SCHEMA)
            _insert(con, records, papers, claims, z)
            counts = {
                t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("runs", "metrics", "samples", "series", "claims", "claim_checks")
            }
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, db_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".wal").unlink(missing_ok=True)
        raise
    return counts


def _insert(con, records, papers, claims, z: float) -> None:
    all_scores: list[list] = []
    all_samples: list[list] = []
    for path, r in records:
        sp = samples_path(path, r)
        _insert_rows(con, "runs", [run_row(r, str(path), str(sp) if sp else None)])
        # a valid record may hold curves only (an SFT run without --valid)
        _insert_rows(con, "metrics", metric_rows(r))
        _insert_rows(con, "series", series_rows(r))
        rows, scores = _read_samples(sp)
        all_scores += [[r["run_id"], *x] for x in scores]
        all_samples += [sample_table_row(r["run_id"], x) for x in rows]
    _bulk_insert(con, "sample_scores", all_scores)
    _bulk_insert(con, "samples", all_samples)
    _insert_rows(
        con,
        "papers",
        [
            [p["paper"], p.get("title"), p.get("url"), p.get("package"), p.get("summary")]
            for p in papers
        ],
    )
    claim_rows = []
    for c in claims:
        pv = c.get("paper_value") or {}
        claim_rows.append(
            [
                c["paper"],
                c["id"],
                c["statement"],
                c.get("source"),
                c.get("scales", []),
                pv.get("model"),
                pv.get("setting"),
                pv.get("benchmark"),
                pv.get("metric"),
                pv.get("value"),
                json.dumps(c.get("check"), sort_keys=True),
            ]
        )
    _insert_rows(con, "claims", claim_rows)
    lookup = _metric_lookup(con)
    scales = [
        row[0] for row in con.execute("SELECT DISTINCT scale FROM runs ORDER BY scale").fetchall()
    ]
    checks = check_all(claims, lookup, scales, z=z, scores=_score_reader(con))
    _insert_rows(
        con,
        "claim_checks",
        [
            [
                row["scale"],
                row["paper"],
                row["claim_id"],
                row["status"],
                json.dumps(row["observed"], sort_keys=True),
                row["detail"],
            ]
            for row in checks
        ],
    )


def _insert_rows(con, table: str, rows: list[list]) -> None:
    """Insert rows in the column order of the table's contract."""
    if not rows:
        return
    cols = ALL_TABLES[table]
    names = ", ".join(c.name for c in cols)
    marks = ", ".join("?" for _ in cols)
    con.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)


def _bulk_insert(con, table: str, rows: list[list]) -> None:
    """Insert many rows at once through a typed DataFrame (executemany is row by row)."""
    if not rows:
        return
    import pandas as pd

    columns = ALL_TABLES[table]
    cols = list(zip(*rows, strict=True))
    frame = pd.DataFrame(
        {
            c.name: pd.array(list(vals), dtype=c.pandas)
            for c, vals in zip(columns, cols, strict=True)
        }
    )
    con.register("_bulk_rows", frame)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _bulk_rows")
    finally:
        con.unregister("_bulk_rows")


def _score_reader(con):
    def scores(run_id: str, task: str, metric: str) -> dict:
        rows = con.execute(
            "SELECT doc_id, value, weight FROM sample_scores WHERE run_id = ? AND task = ? "
            "AND metric = ? ORDER BY doc_id",
            [run_id, task, metric],
        ).fetchall()
        return {d: (v, w) for d, v, w in rows}

    return scores


def _metric_lookup(con) -> list[dict]:
    cols = [
        "scale",
        "paper",
        "method",
        "variant",
        "base_model",
        "suite",
        "task",
        "metric",
        "value",
        "stderr",
        "n",
        "higher_is_better",
        "task_hash",
        "run_id",
    ]
    rows = con.execute(
        f"SELECT {', '.join('l.' + c for c in cols)}, r.seed FROM leaderboard l "
        "JOIN runs r USING (run_id)"
    ).fetchall()
    return [dict(zip([*cols, "seed"], r, strict=True)) for r in rows]


def connect_read_only(db_path: str | Path):
    db_path = Path(db_path)
    if not db_path.is_file():
        raise ClaimbenchError(
            f"{db_path}: no database yet; run `claimbench ingest` (or the workflow) first"
        )
    return duckdb.connect(str(db_path), read_only=True)


def query(db_path: str | Path, sql: str):
    con = connect_read_only(db_path)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    except duckdb.Error as e:
        raise ClaimbenchError(f"query failed: {e}") from e
    finally:
        con.close()
