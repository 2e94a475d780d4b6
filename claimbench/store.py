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
from claimbench.records import load_run_record, samples_path

SCHEMA = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY, harness_version VARCHAR, scale VARCHAR, paper VARCHAR,
    method VARCHAR, variant VARCHAR, base_model VARCHAR, suite VARCHAR, tasks VARCHAR[],
    seed INTEGER, config JSON, config_hash VARCHAR, task_hashes JSON, git_sha VARCHAR,
    git_dirty BOOLEAN, started_at VARCHAR, wall_s DOUBLE, host VARCHAR, device VARCHAR,
    versions JSON, record_path VARCHAR, samples_path VARCHAR
);
CREATE TABLE metrics (
    run_id VARCHAR, task VARCHAR, metric VARCHAR, value DOUBLE, stderr DOUBLE, n INTEGER,
    higher_is_better BOOLEAN, task_hash VARCHAR
);
CREATE TABLE samples (
    run_id VARCHAR, task VARCHAR, doc_id INTEGER, prompt VARCHAR, target VARCHAR,
    response VARCHAR, metrics JSON, doc_hash VARCHAR
);
CREATE TABLE sample_scores (
    run_id VARCHAR, task VARCHAR, doc_id INTEGER, metric VARCHAR, value DOUBLE, weight DOUBLE
);
CREATE TABLE series (
    run_id VARCHAR, name VARCHAR, x_label VARCHAR, y_label VARCHAR, x DOUBLE[], y DOUBLE[]
);
CREATE TABLE claims (
    paper VARCHAR, claim_id VARCHAR, statement VARCHAR, source VARCHAR, scales VARCHAR[],
    paper_model VARCHAR, paper_setting VARCHAR, paper_benchmark VARCHAR, paper_metric VARCHAR,
    paper_value DOUBLE, check_spec JSON
);
CREATE TABLE claim_checks (
    scale VARCHAR, paper VARCHAR, claim_id VARCHAR, status VARCHAR, observed JSON, detail VARCHAR
);
CREATE TABLE papers (
    paper VARCHAR PRIMARY KEY, title VARCHAR, url VARCHAR, package VARCHAR, summary VARCHAR
);
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
        p = r["provenance"]
        sp = samples_path(path, r)
        con.execute(
            "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                r["run_id"],
                r["harness_version"],
                r["scale"],
                r["paper"],
                r["method"],
                r["variant"],
                r["base_model"],
                r["suite"],
                r["tasks"],
                r["seed"],
                json.dumps(r["config"], sort_keys=True),
                r["config_hash"],
                json.dumps(r["task_hashes"], sort_keys=True),
                p["git_sha"],
                bool(p["git_dirty"]),
                p["started_at"],
                float(p["wall_s"]),
                p["host"],
                p["device"],
                json.dumps(p["versions"], sort_keys=True),
                str(path),
                str(sp) if sp else None,
            ],
        )
        if r["metrics"]:  # a valid record may hold curves only (an SFT run without --valid)
            con.executemany(
                "INSERT INTO metrics VALUES (?,?,?,?,?,?,?,?)",
                [
                    [
                        r["run_id"],
                        m["task"],
                        m["metric"],
                        m["value"],
                        m["stderr"],
                        m["n"],
                        m["higher_is_better"],
                        r["task_hashes"].get(m["task"]),
                    ]
                    for m in r["metrics"]
                ],
            )
        for c in r.get("series") or []:
            con.execute(
                "INSERT INTO series VALUES (?,?,?,?,?,?)",
                [
                    r["run_id"],
                    c["name"],
                    c.get("x_label", "x"),
                    c.get("y_label", "y"),
                    [float(v) for v in c["x"]],
                    [float(v) for v in c["y"]],
                ],
            )
        rows, scores = _read_samples(sp)
        all_scores += [[r["run_id"], *x] for x in scores]
        all_samples += [
            [
                r["run_id"],
                x.get("task"),
                x.get("doc_id"),
                x.get("prompt"),
                x.get("target"),
                x.get("response"),
                json.dumps(x.get("metrics", {}), sort_keys=True),
                x.get("doc_hash"),
            ]
            for x in rows
        ]
    _bulk_insert(con, "sample_scores", SCORE_COLUMNS, all_scores)
    _bulk_insert(con, "samples", SAMPLE_COLUMNS, all_samples)
    for paper in papers:
        con.execute(
            "INSERT INTO papers VALUES (?,?,?,?,?)",
            [
                paper["paper"],
                paper.get("title"),
                paper.get("url"),
                paper.get("package"),
                paper.get("summary"),
            ],
        )
    for c in claims:
        pv = c.get("paper_value") or {}
        con.execute(
            "INSERT INTO claims VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
            ],
        )
    lookup = _metric_lookup(con)
    scales = [
        row[0] for row in con.execute("SELECT DISTINCT scale FROM runs ORDER BY scale").fetchall()
    ]
    for row in check_all(claims, lookup, scales, z=z, scores=_score_reader(con)):
        con.execute(
            "INSERT INTO claim_checks VALUES (?,?,?,?,?,?)",
            [
                row["scale"],
                row["paper"],
                row["claim_id"],
                row["status"],
                json.dumps(row["observed"], sort_keys=True),
                row["detail"],
            ],
        )


SCORE_COLUMNS = {
    "run_id": "string",
    "task": "string",
    "doc_id": "Int64",
    "metric": "string",
    "value": "Float64",
    "weight": "Float64",
}
SAMPLE_COLUMNS = {
    "run_id": "string",
    "task": "string",
    "doc_id": "Int64",
    "prompt": "string",
    "target": "string",
    "response": "string",
    "metrics": "string",
    "doc_hash": "string",
}


def _bulk_insert(con, table: str, columns: dict[str, str], rows: list[list]) -> None:
    """Insert many rows at once through a typed DataFrame (executemany is row by row)."""
    if not rows:
        return
    import pandas as pd

    cols = list(zip(*rows, strict=True))
    frame = pd.DataFrame(
        {
            name: pd.array(list(vals), dtype=dtype)
            for (name, dtype), vals in zip(columns.items(), cols, strict=True)
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
