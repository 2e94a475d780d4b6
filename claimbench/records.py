"""The run-record contract: one JSON file per (artifact, suite), written atomically.

This module is the single owner of the contract . The writer (suites and
method-specific measurements), ``claimbench.store`` (ingest) and the report all go through it.

Keys of a record::

    run_id           stable hash of scale/paper/variant/suite/config
    harness_version  claimbench.HARNESS_VERSION at write time (comparability)
    scale            "tiny" | "small" | "paper"
    paper            paper package name ("nsds", ...) or "base" for the harness's base models
    method           method that built the artifact ("nsds", "rtn", "base", ...)
    variant          artifact variant inside the paper ("avg3bit", "lm-s", ...)
    base_model       base model the artifact was derived from
    suite            evaluation suite ("lm_eval", "retrieval", "pde", "speed", ...)
    tasks            list of task names evaluated
    seed             integer seed of the evaluation
    config           the resolved evaluation config (JSON object)
    config_hash      stable hash of ``config``
    task_hashes      {task: content hash of the task's data}, empty where not applicable
    metrics          list of {task, metric, value, stderr, n, higher_is_better}
    provenance       {git_sha, git_dirty, started_at, wall_s, host, device, versions{...}}
    samples          per-sample outputs: file name of a .jsonl beside the record, or null
    series           optional curves for plots: [{name, x: [...], y: [...], x_label, y_label}]
                     (training loss, reward, acceptance per head, dose-response, ...)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claimbench import HARNESS_VERSION
from claimbench.errors import RecordError
from claimbench.io import atomic_write_json, stable_hash

SCALES = ("tiny", "small", "paper")

REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "run_id": str,
    "harness_version": str,
    "scale": str,
    "paper": str,
    "method": str,
    "variant": str,
    "base_model": str,
    "suite": str,
    "tasks": list,
    "seed": int,
    "config": dict,
    "config_hash": str,
    "task_hashes": dict,
    "metrics": list,
    "provenance": dict,
}
METRIC_KEYS: dict[str, type | tuple[type, ...]] = {
    "task": str,
    "metric": str,
    "value": (int, float),
    "stderr": (int, float, type(None)),
    "n": (int, type(None)),
    "higher_is_better": (bool, type(None)),
}
PROVENANCE_KEYS = ("git_sha", "git_dirty", "started_at", "wall_s", "host", "device", "versions")


def make_run_id(scale: str, paper: str, variant: str, suite: str, config: dict) -> str:
    return stable_hash(
        {"scale": scale, "paper": paper, "variant": variant, "suite": suite, "config": config}
    )


def metric(
    task: str,
    name: str,
    value: float,
    *,
    stderr: float | None = None,
    n: int | None = None,
    higher_is_better: bool | None = None,
) -> dict[str, Any]:
    """One metric row. Non-finite stderr (lm-eval prints N/A) is stored as null."""
    value = float(value)
    if stderr is not None:
        try:
            stderr = float(stderr)
        except (TypeError, ValueError):
            stderr = None
        if stderr is not None and not math.isfinite(stderr):
            stderr = None
    return {
        "task": task,
        "metric": name,
        "value": value,
        "stderr": stderr,
        "n": None if n is None else int(n),
        "higher_is_better": higher_is_better,
    }


def make_run_record(
    *,
    scale: str,
    paper: str,
    method: str,
    variant: str,
    base_model: str,
    suite: str,
    tasks: list[str],
    seed: int,
    config: dict,
    metrics: list[dict],
    provenance: dict,
    task_hashes: dict[str, str] | None = None,
    samples: str | None = None,
    series: list[dict] | None = None,
) -> dict[str, Any]:
    record = {
        "run_id": make_run_id(scale, paper, variant, suite, config),
        "harness_version": HARNESS_VERSION,
        "scale": scale,
        "paper": paper,
        "method": method,
        "variant": variant,
        "base_model": base_model,
        "suite": suite,
        "tasks": list(tasks),
        "seed": int(seed),
        "config": config,
        "config_hash": stable_hash(config),
        "task_hashes": dict(task_hashes or {}),
        "metrics": metrics,
        "provenance": provenance,
        "samples": samples,
        "series": list(series or []),
    }
    validate_record(record, "<new record>")
    return record


def validate_record(obj: Any, where: str | os.PathLike) -> dict[str, Any]:
    """Check a parsed record against the contract; raise RecordError naming file and key."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: run record must be a JSON object, got {type(obj).__name__}")
    for key, typ in REQUIRED_KEYS.items():
        if key not in obj:
            raise RecordError(f"{where}: run record is missing key '{key}'")
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            raise RecordError(
                f"{where}: key '{key}' has type {type(obj[key]).__name__}, expected {_tname(typ)}"
            )
    if obj["scale"] not in SCALES:
        raise RecordError(f"{where}: key 'scale' is {obj['scale']!r}, not one of {list(SCALES)}")
    for i, m in enumerate(obj["metrics"]):
        if not isinstance(m, dict):
            raise RecordError(f"{where}: metrics[{i}] must be an object")
        for key, typ in METRIC_KEYS.items():
            if key not in m:
                raise RecordError(f"{where}: metrics[{i}] is missing key '{key}'")
            if not isinstance(m[key], typ):
                raise RecordError(
                    f"{where}: metrics[{i}].{key} = {m[key]!r} has type "
                    f"{type(m[key]).__name__}, expected {_tname(typ)}"
                )
        if not math.isfinite(float(m["value"])):
            raise RecordError(f"{where}: metrics[{i}].value = {m['value']!r} is not finite")
    for key in PROVENANCE_KEYS:
        if key not in obj["provenance"]:
            raise RecordError(f"{where}: provenance is missing key '{key}'")
    for i, c in enumerate(obj.get("series") or []):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise RecordError(f"{where}: series[{i}] must be an object with a string 'name'")
        x, y = c.get("x"), c.get("y")
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
            raise RecordError(
                f"{where}: series[{i}] ({c['name']}) needs lists x and y of equal length"
            )
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in x + y):
            raise RecordError(f"{where}: series[{i}] ({c['name']}) x and y must be numbers")
    samples = obj.get("samples")
    if samples is not None and not isinstance(samples, str):
        raise RecordError(f"{where}: key 'samples' must be a file name or null")
    return obj


def _tname(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join("null" if t is type(None) else t.__name__ for t in typ)
    return typ.__name__


def series(name: str, x: list, y: list, x_label: str = "x", y_label: str = "y") -> dict[str, Any]:
    """One curve for the report (finite numbers only; non-finite points are dropped)."""
    pts = [
        (float(a), float(b))
        for a, b in zip(x, y, strict=True)
        if math.isfinite(a) and math.isfinite(b)
    ]
    return {
        "name": name,
        "x": [p[0] for p in pts],
        "y": [p[1] for p in pts],
        "x_label": x_label,
        "y_label": y_label,
    }


def sample_row(
    task: str,
    doc_id: int | None,
    *,
    metrics: dict[str, Any] | None = None,
    prompt: str | None = None,
    target: str | None = None,
    response: str | None = None,
    doc_hash: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One line of a record's per-sample ``.jsonl`` file (what the store's ``samples`` and
    ``sample_scores`` tables read). ``metrics`` maps a metric name to a number, or to a
    ``[value, weight]`` pair for a weighted per-document score; ``extra`` keys are kept in the
    file for the report's examples (a paper template may read them)."""
    if doc_id is not None and (isinstance(doc_id, bool) or not isinstance(doc_id, int)):
        raise RecordError(f"sample row of task {task!r}: doc_id {doc_id!r} must be an int or None")
    row: dict[str, Any] = {"task": task, "doc_id": doc_id, "metrics": dict(metrics or {})}
    for key, value in (
        ("prompt", prompt),
        ("target", target),
        ("response", response),
        ("doc_hash", doc_hash),
    ):
        if value is not None:
            row[key] = value
    row.update(extra)
    return row


# --------------------------------------------------------------------------- the store's tables
# The DuckDB tables that hold run records are derived from this contract: one column list per
# table (name, DuckDB type, pandas dtype for bulk inserts) and one function per table that turns
# a record into its rows in that column order. ``claimbench.store`` builds its DDL and inserts
# from these; a new record key is added here once.


@dataclass(frozen=True)
class Column:
    name: str
    sql: str
    pandas: str = "object"


TABLES: dict[str, tuple[Column, ...]] = {
    "runs": (
        Column("run_id", "VARCHAR PRIMARY KEY"),
        Column("harness_version", "VARCHAR"),
        Column("scale", "VARCHAR"),
        Column("paper", "VARCHAR"),
        Column("method", "VARCHAR"),
        Column("variant", "VARCHAR"),
        Column("base_model", "VARCHAR"),
        Column("suite", "VARCHAR"),
        Column("tasks", "VARCHAR[]"),
        Column("seed", "BIGINT"),
        Column("config", "JSON"),
        Column("config_hash", "VARCHAR"),
        Column("task_hashes", "JSON"),
        Column("git_sha", "VARCHAR"),
        Column("git_dirty", "BOOLEAN"),
        Column("started_at", "VARCHAR"),
        Column("wall_s", "DOUBLE"),
        Column("host", "VARCHAR"),
        Column("device", "VARCHAR"),
        Column("versions", "JSON"),
        Column("record_path", "VARCHAR"),
        Column("samples_path", "VARCHAR"),
    ),
    "metrics": (
        Column("run_id", "VARCHAR"),
        Column("task", "VARCHAR"),
        Column("metric", "VARCHAR"),
        Column("value", "DOUBLE"),
        Column("stderr", "DOUBLE"),
        Column("n", "BIGINT"),
        Column("higher_is_better", "BOOLEAN"),
        Column("task_hash", "VARCHAR"),
    ),
    "samples": (
        Column("run_id", "VARCHAR", "string"),
        Column("task", "VARCHAR", "string"),
        Column("doc_id", "BIGINT", "Int64"),
        Column("prompt", "VARCHAR", "string"),
        Column("target", "VARCHAR", "string"),
        Column("response", "VARCHAR", "string"),
        Column("metrics", "JSON", "string"),
        Column("doc_hash", "VARCHAR", "string"),
    ),
    "sample_scores": (
        Column("run_id", "VARCHAR", "string"),
        Column("task", "VARCHAR", "string"),
        Column("doc_id", "BIGINT", "Int64"),
        Column("metric", "VARCHAR", "string"),
        Column("value", "DOUBLE", "Float64"),
        Column("weight", "DOUBLE", "Float64"),
    ),
    "series": (
        Column("run_id", "VARCHAR"),
        Column("name", "VARCHAR"),
        Column("x_label", "VARCHAR"),
        Column("y_label", "VARCHAR"),
        Column("x", "DOUBLE[]"),
        Column("y", "DOUBLE[]"),
    ),
}


def ddl(tables: dict[str, tuple[Column, ...]]) -> str:
    """``CREATE TABLE`` statements for the given column lists."""
    return "\n".join(
        f"CREATE TABLE {name} ({', '.join(f'{c.name} {c.sql}' for c in cols)});"
        for name, cols in tables.items()
    )


def _json_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def run_row(record: dict[str, Any], record_path: str, samples: str | None) -> list:
    """The record's row of ``runs`` (column order of ``TABLES["runs"]``)."""
    p = record["provenance"]
    return [
        record["run_id"],
        record["harness_version"],
        record["scale"],
        record["paper"],
        record["method"],
        record["variant"],
        record["base_model"],
        record["suite"],
        record["tasks"],
        record["seed"],
        _json_text(record["config"]),
        record["config_hash"],
        _json_text(record["task_hashes"]),
        p["git_sha"],
        bool(p["git_dirty"]),
        p["started_at"],
        float(p["wall_s"]),
        p["host"],
        p["device"],
        _json_text(p["versions"]),
        record_path,
        samples,
    ]


def metric_rows(record: dict[str, Any]) -> list[list]:
    """The record's rows of ``metrics``."""
    return [
        [
            record["run_id"],
            m["task"],
            m["metric"],
            m["value"],
            m["stderr"],
            m["n"],
            m["higher_is_better"],
            record["task_hashes"].get(m["task"]),
        ]
        for m in record["metrics"]
    ]


def series_rows(record: dict[str, Any]) -> list[list]:
    """The record's rows of ``series``."""
    return [
        [
            record["run_id"],
            c["name"],
            c.get("x_label", "x"),
            c.get("y_label", "y"),
            [float(v) for v in c["x"]],
            [float(v) for v in c["y"]],
        ]
        for c in record.get("series") or []
    ]


def sample_table_row(run_id: str, row: dict[str, Any]) -> list:
    """One per-sample line's row of ``samples``."""
    return [
        run_id,
        row.get("task"),
        row.get("doc_id"),
        row.get("prompt"),
        row.get("target"),
        row.get("response"),
        _json_text(row.get("metrics", {})),
        row.get("doc_hash"),
    ]


def write_run_record(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    validate_record(record, path)
    return atomic_write_json(path, record)


def load_run_record(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate one record; a truncated or corrupted file raises RecordError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: cannot read run record ({e})") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(
            f"{path}: corrupted or truncated run record (invalid JSON at line {e.lineno}, "
            f"column {e.colno}: {e.msg})"
        ) from e
    return validate_record(obj, path)


def samples_path(record_path: str | os.PathLike, record: dict[str, Any]) -> Path | None:
    if not record.get("samples"):
        return None
    return Path(record_path).parent / record["samples"]
