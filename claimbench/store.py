"""The DuckDB store: rebuilt idempotently from run records and claims files by one writer.

``ingest`` reads every run record under ``results/runs/`` (validating each), every
``methods/*/claims.yaml``, checks the claims, and writes a new database to a temporary file
that replaces ``results/claimbench.duckdb`` only when everything succeeded. A corrupted record
(contract in ``claimbench.records``), a record of a paper without a claims file, a truncated
samples file, a full disk or a read-only folder therefore stops ingest with one line naming the
file, key and value, and leaves the previous database untouched. Temporary and WAL files of a
killed ingest are removed by the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import duckdb

from claimbench.claims import check_all, load_claim_files
from claimbench.errors import ClaimbenchError, RecordError
from claimbench.published import COMPUTED_HERE, load_published
from claimbench.records import (
    TABLES,
    Column,
    check_location,
    ddl,
    iter_samples,
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
        Column("kind", "VARCHAR"),
        Column("source", "VARCHAR"),
        Column("not_attempted", "VARCHAR"),
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
        Column("kind", "VARCHAR"),
        Column("source", "VARCHAR"),
        Column("test", "VARCHAR"),
        Column("estimate", "DOUBLE"),
        Column("stderr", "DOUBLE"),
        Column("n", "BIGINT"),
        Column("mde", "DOUBLE"),
        Column("n_needed", "BIGINT"),
        Column("noninferiority_margin", "DOUBLE"),
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
    SELECT c.paper, c.claim_id, c.kind, c.statement, c.source, c.paper_value, k.scale, k.status,
           k.detail, k.observed, k.test, k.mde, k.n, k.n_needed
    FROM claims c LEFT JOIN claim_checks k USING (paper, claim_id);
"""
ALL_TABLES: dict[str, tuple[Column, ...]] = {**TABLES, **CLAIM_TABLES}
# Where a run's numbers come from: "computed here" (a local record) or "published at <sha>,
# <date>" (an export under results/published/, loaded by claimbench.published).
RUN_SOURCE = f"ALTER TABLE runs ADD COLUMN source VARCHAR DEFAULT '{COMPUTED_HERE}';"
SCHEMA = ddl(ALL_TABLES) + "\n" + RUN_SOURCE + "\n" + VIEWS


SAMPLES_PER_TASK = 200  # per run and task; the full per-sample file stays beside the record


def find_records(runs_dir: str | Path) -> list[Path]:
    runs_dir = Path(runs_dir)
    return sorted(p for p in runs_dir.rglob("*.json") if not p.name.startswith("."))


def _read_samples(record_path: Path, record: dict) -> tuple[list[dict], list[list]]:
    """(first SAMPLES_PER_TASK rows per task, per-document scores of every row), every row
    checked against the record contract (``claimbench.records.iter_samples``)."""
    rows, scores = [], []
    counts: dict[str, int] = {}
    for row in iter_samples(record_path, record):
        task = row["task"]
        counts[task] = counts.get(task, 0) + 1
        if counts[task] <= SAMPLES_PER_TASK:
            rows.append(row)
        for name, v in (row.get("metrics") or {}).items():
            if isinstance(v, list):
                scores.append([task, row.get("doc_id"), name, float(v[0]), float(v[1])])
            else:
                scores.append([task, row.get("doc_id"), name, float(v), None])
    return rows, scores


def load_records(runs_dir: str | Path, known_papers: set[str]) -> list[tuple[Path, dict]]:
    """Every record under ``runs_dir``, validated, at its own path, of a known paper."""
    records = []
    seen: dict[str, Path] = {}
    for path in find_records(runs_dir):
        rec = load_run_record(path)
        check_location(path, runs_dir, rec)
        if rec["paper"] not in known_papers:
            raise RecordError(
                f"{path}: paper: {json.dumps(rec['paper'])}: unknown paper (known: "
                f"{', '.join(sorted(known_papers)) or 'none'}; a paper is known by its "
                "methods/<package>/claims.yaml)"
            )
        if rec["run_id"] in seen:
            raise RecordError(
                f"{path}: run_id: {json.dumps(rec['run_id'])}: duplicates {seen[rec['run_id']]}"
            )
        seen[rec["run_id"]] = path
        records.append((path, rec))
    return records


def _stale_files(db_path: Path) -> list[Path]:
    """What a killed ingest leaves beside the store: its temporary database and WAL files."""
    folder = db_path.parent
    return [*folder.glob(f".{db_path.name}.*.tmp"), *folder.glob(f".{db_path.name}.*.tmp.wal")]


@contextmanager
def _exclusive(folder: Path):
    """Hold an exclusive lock on the store's folder (one ingest at a time; then any temporary
    file found there is a dead ingest's). File systems without ``flock`` go unlocked."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def ingest(
    runs_dir: str | Path,
    db_path: str | Path,
    methods_dir: str | Path,
    z: float = 1.96,
    published_dir: str | Path | None = None,
) -> dict[str, int]:
    """Rebuild ``db_path`` from all records under ``runs_dir``; returns row counts.

    The new database is built in a temporary file beside the store and replaces it only when
    every record, samples file and claim was read and inserted; on any error (a bad record, a
    full disk, a read-only folder) the previous store is left as it was. Temporary and WAL
    files left by a killed ingest are removed first. Every scale published under
    ``published_dir`` that has no record here is loaded too (``claimbench.published``).
    """
    papers, claims = load_claim_files(methods_dir)
    records = load_records(runs_dir, {p["paper"] for p in papers})
    db_path = Path(db_path)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(db_path.parent):
            for stale in _stale_files(db_path):
                stale.unlink(missing_ok=True)
            return _build(db_path, records, papers, claims, z, published_dir)
    except (OSError, duckdb.Error) as e:
        detail = f"{e.strerror} (errno {e.errno})" if isinstance(e, OSError) else str(e)
        detail = " ".join(detail.split())
        raise ClaimbenchError(
            f"{db_path}: (write): {detail}: cannot write the store; the previous store, if any, "
            "is unchanged"
        ) from e


def _build(db_path: Path, records, papers, claims, z: float, published=None) -> dict[str, int]:
    fd, tmp = tempfile.mkstemp(prefix=f".{db_path.name}.", suffix=".tmp", dir=db_path.parent)
    os.close(fd)
    os.unlink(tmp)  # DuckDB must create the file itself
    try:
        con = duckdb.connect(tmp)
        try:
            con.execute(SCHEMA)
            _insert(con, records, papers, claims, z, published)
            counts = {
                t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("runs", "metrics", "samples", "series", "claims", "claim_checks")
            }
            con.execute("CHECKPOINT")
        finally:
            con.close()
        Path(tmp + ".wal").unlink(missing_ok=True)  # checkpointed: nothing left in it
        # A WAL of the old store would be replayed onto the new file: it goes with the old file.
        Path(f"{db_path}.wal").unlink(missing_ok=True)
        os.replace(tmp, db_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".wal").unlink(missing_ok=True)
        raise
    return counts


def _insert(con, records, papers, claims, z: float, published=None) -> None:
    all_scores: list[list] = []
    all_samples: list[list] = []
    for path, r in records:
        sp = samples_path(path, r)
        _insert_rows(con, "runs", [run_row(r, str(path), str(sp) if sp else None)])
        # a valid record may hold curves only (an SFT run without --valid)
        _insert_rows(con, "metrics", metric_rows(r))
        _insert_rows(con, "series", series_rows(r))
        rows, scores = _read_samples(path, r)
        all_scores += [[r["run_id"], *x] for x in scores]
        all_samples += [sample_table_row(r["run_id"], x) for x in rows]
    _bulk_insert(con, "sample_scores", all_scores)
    _bulk_insert(con, "samples", all_samples)
    # published scales without local records join before the claims are checked
    load_published(con, published, {r["scale"] for _, r in records})
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
                c.get("kind", "paper"),
                c.get("source"),
                c.get("not_attempted"),
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
                row["kind"],
                row["source"],
                row["test"],
                row["estimate"],
                row["stderr"],
                row["n"],
                row["mde"],
                row["n_needed"],
                row["noninferiority_margin"],
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


# `claimbench query` runs SQL typed by a user: the connection can read the store and nothing else
# (no file or network access, no extensions, configuration locked; DuckDB's "Securing DuckDB").
READ_ONLY_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}
QUERY_KINDS = ("SELECT", "EXPLAIN")  # SHOW, DESCRIBE, SUMMARIZE and FROM-first parse as SELECT


def connect_read_only(db_path: str | Path):
    """A read-only connection to the store that cannot touch any other file."""
    db_path = Path(db_path)
    if not db_path.exists():
        raise ClaimbenchError(
            f"{db_path}: no database yet; run `claimbench ingest` (or the workflow) first"
        )
    if not db_path.is_file():
        raise ClaimbenchError(f"{db_path}: not a file (--db names the DuckDB store)")
    try:
        return duckdb.connect(str(db_path), read_only=True, config=READ_ONLY_CONFIG)
    except duckdb.Error as e:
        what = " ".join(str(e).split())
        raise ClaimbenchError(
            f"{db_path}: cannot be opened as a DuckDB store ({what}); "
            "rebuild it with `claimbench ingest`"
        ) from e


def query(db_path: str | Path, sql: str, params: list | None = None):
    """(column names, rows) of one read-only SELECT (or EXPLAIN) on the store.

    Values go in ``params`` (``?`` placeholders), never into ``sql``. Stacked statements and any
    other kind of statement (COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA, CREATE...) are refused.
    """
    con = connect_read_only(db_path)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as e:
            raise ClaimbenchError(f"{db_path}: {' '.join(str(e).split())}") from e
        if len(statements) != 1:
            raise ClaimbenchError(
                f"{db_path}: {len(statements)} statements given; claimbench query runs "
                "exactly one read-only SELECT"
            )
        kind = statements[0].type.name
        if kind not in QUERY_KINDS:
            raise ClaimbenchError(
                f"{db_path}: a {kind} statement is refused; claimbench query runs one "
                "read-only SELECT (or EXPLAIN) on the store"
            )
        try:
            cur = con.execute(statements[0], params or [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        except duckdb.Error as e:
            raise ClaimbenchError(f"{db_path}: query failed: {' '.join(str(e).split())}") from e
    finally:
        con.close()
