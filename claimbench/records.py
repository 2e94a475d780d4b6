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
    samples          per-sample outputs: the bare name of a .jsonl file beside the record, or
                     null; one JSON object a line, {task, doc_id, metrics: {name: number or
                     [value, weight]}, prompt, target, response, doc_hash, filter, ...}
    series           optional curves for plots: [{name, x: [...], y: [...], x_label, y_label}]
                     (training loss, reward, acceptance per head, dose-response, ...)

What ingest enforces beyond the keys: every number finite (no NaN or infinity anywhere), seed,
n and doc_id within the store's BIGINT (|v| < 2**63), stderr and n not negative; the record at
``<runs>/<scale>/<paper>/<variant>/<suite>.json`` saying the same scale, paper, variant and suite
(``check_location``); a samples file that exists beside the record, with one row per document
and task, and for every metric with an ``n`` exactly ``n`` rows scoring it (``iter_samples``).
Every violation is one line: ``<file>: <key>: <value>: <what is wrong>``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
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


BIGINT_LIMIT = 2**63  # the store's BIGINT columns (seed, n, doc_id) hold |v| < 2**63
_MISSING = object()


def _show(value: Any) -> str:
    """A value as it appears in an error line: JSON-like, one line, at most 60 characters."""
    if value is _MISSING:
        return "(missing)"
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _fail(where: str | os.PathLike, key: str, value: Any, problem: str) -> RecordError:
    """``<file>: <key>: <value>: <what is wrong>``, one line."""
    return RecordError(f"{where}: {key}: {_show(value)}: {problem}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_finite(obj: Any, where: str | os.PathLike, key: str) -> None:
    """No NaN or infinity anywhere inside ``obj`` (JSON has none; Python's parser lets them in)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise _fail(where, key, obj, "not a finite number")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, where, f"{key}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_finite(v, where, f"{key}[{i}]")


def _check_name(obj: dict, key: str, where: str | os.PathLike) -> None:
    """Names that become folders and file names: non-empty, one path component."""
    v = obj[key]
    if not v.strip() or v in (".", "..") or any(c in v for c in "/\\\0"):
        raise _fail(where, key, v, "must be a non-empty name without '/', '\\' or NUL")


def _check_number(
    v: Any, where, key: str, *, null: bool = False, minimum: float | None = None
) -> None:
    if v is None and null:
        return
    if not _is_number(v):
        raise _fail(where, key, v, "must be a number" + (" or null" if null else ""))
    if not math.isfinite(v):
        raise _fail(where, key, v, "not a finite number")
    if minimum is not None and v < minimum:
        raise _fail(where, key, v, f"must be >= {minimum:g}")


def _check_int(v: Any, where, key: str, *, null: bool = False, minimum: int | None = None) -> None:
    if v is None and null:
        return
    if not _is_int(v):
        raise _fail(where, key, v, "must be an integer" + (" or null" if null else ""))
    if not -BIGINT_LIMIT < v < BIGINT_LIMIT:
        raise _fail(where, key, v, "out of range (the store holds |v| < 2**63)")
    if minimum is not None and v < minimum:
        raise _fail(where, key, v, f"must be >= {minimum}")


def check_samples_name(name: Any, where: str | os.PathLike) -> None:
    """A record's ``samples``: null, or the bare name of a ``.jsonl`` file beside the record."""
    if name is None:
        return
    if not isinstance(name, str):
        raise _fail(where, "samples", name, "must be a file name or null")
    if (
        not name.endswith(".jsonl")
        or name != os.path.basename(name)
        or "\\" in name
        or "\0" in name
        or name.startswith(".")
        or os.path.isabs(name)
    ):
        raise _fail(
            where,
            "samples",
            name,
            "must be the bare name of a .jsonl file beside the record (no folder, no '..', "
            "not absolute, not hidden)",
        )


def validate_record(obj: Any, where: str | os.PathLike) -> dict[str, Any]:
    """Check a parsed record against the contract: keys, types, ranges and finiteness.

    Raises RecordError with one line ``<file>: <key>: <value>: <what is wrong>``.
    """
    if not isinstance(obj, dict):
        raise _fail(where, "(record)", obj, "a run record must be a JSON object")
    for key, typ in REQUIRED_KEYS.items():
        if key not in obj:
            raise _fail(where, key, _MISSING, f"run record is missing key '{key}'")
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            raise _fail(
                where,
                key,
                obj[key],
                f"key '{key}' has type {type(obj[key]).__name__}, expected {_tname(typ)}",
            )
    if obj["scale"] not in SCALES:
        raise _fail(where, "scale", obj["scale"], f"not one of {list(SCALES)}")
    for key in ("run_id", "paper", "method", "variant", "suite"):
        _check_name(obj, key, where)
    for i, t in enumerate(obj["tasks"]):
        if not isinstance(t, str) or not t:
            raise _fail(where, f"tasks[{i}]", t, "must be a non-empty string")
    _check_int(obj["seed"], where, "seed")
    _check_finite(obj["config"], where, "config")
    for t, h in obj["task_hashes"].items():
        if not isinstance(h, str):
            raise _fail(where, f"task_hashes.{t}", h, "must be a string")
    for i, m in enumerate(obj["metrics"]):
        _check_metric(m, i, where)
    _check_provenance(obj["provenance"], where)
    _check_series(obj.get("series"), where)
    check_samples_name(obj.get("samples"), where)
    return obj


def _check_metric(m: Any, i: int, where: str | os.PathLike) -> None:
    key = f"metrics[{i}]"
    if not isinstance(m, dict):
        raise _fail(where, key, m, "must be an object")
    for k, typ in METRIC_KEYS.items():
        if k not in m:
            raise _fail(where, f"{key}.{k}", _MISSING, f"{key} is missing key '{k}'")
        if not isinstance(m[k], typ) or (k != "higher_is_better" and isinstance(m[k], bool)):
            raise _fail(
                where,
                f"{key}.{k}",
                m[k],
                f"has type {type(m[k]).__name__}, expected {_tname(typ)}",
            )
    for k in ("task", "metric"):
        if not m[k]:
            raise _fail(where, f"{key}.{k}", m[k], "must be a non-empty string")
    _check_number(m["value"], where, f"{key}.value")
    _check_number(m["stderr"], where, f"{key}.stderr", null=True, minimum=0)
    _check_int(m["n"], where, f"{key}.n", null=True, minimum=0)


PROVENANCE_TYPES: dict[str, type | tuple[type, ...]] = {
    "git_sha": str,
    "git_dirty": bool,
    "started_at": str,
    "wall_s": (int, float),
    "host": str,
    "device": str,
    "versions": dict,
}


def _check_provenance(p: dict, where: str | os.PathLike) -> None:
    for key in PROVENANCE_KEYS:
        if key not in p:
            raise _fail(where, f"provenance.{key}", _MISSING, f"provenance is missing key '{key}'")
        typ = PROVENANCE_TYPES[key]
        if not isinstance(p[key], typ) or (key == "wall_s" and isinstance(p[key], bool)):
            raise _fail(
                where,
                f"provenance.{key}",
                p[key],
                f"has type {type(p[key]).__name__}, expected {_tname(typ)}",
            )
    _check_number(p["wall_s"], where, "provenance.wall_s", minimum=0)
    _check_finite(p, where, "provenance")


def _check_series(curves: Any, where: str | os.PathLike) -> None:
    if curves is None:
        return
    if not isinstance(curves, list):
        raise _fail(where, "series", curves, "must be a list of curves or null")
    for i, c in enumerate(curves):
        key = f"series[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise _fail(where, key, c, "must be an object with a string 'name'")
        x, y = c.get("x"), c.get("y")
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
            raise _fail(where, key, c["name"], "needs lists x and y of equal length")
        for axis, values in (("x", x), ("y", y)):
            for j, v in enumerate(values):
                _check_number(v, where, f"{key}.{axis}[{j}]")
        for label in ("x_label", "y_label"):
            if label in c and not isinstance(c[label], str):
                raise _fail(where, f"{key}.{label}", c[label], "must be a string")


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
    file for the report's examples (a paper template may read them) and for re-scoring (the
    lm-eval suite's ``filter``, ``raw_response``, per-option ``loglikelihoods``).

    Pairing key: ``(task, doc_id)``, where ``task`` is the task the record's metric names
    (the one its ``task_hashes`` hold) and ``doc_id`` the document's identity in that task's
    data, the same in every run on it (a line of the data file, lm-eval's doc id), never a
    position in a filtered subset."""
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
        Column("filter", "VARCHAR", "string"),  # lm-eval's filter of ``response``, else null
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
        row["filter"] if isinstance(row.get("filter"), str) else None,
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
        raise RecordError(f"{path}: (file): {e}: cannot read run record") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(
            f"{path}: (line {e.lineno}, column {e.colno}): {e.msg}: corrupted or truncated run "
            "record (invalid JSON)"
        ) from e
    return validate_record(obj, path)


def samples_path(record_path: str | os.PathLike, record: dict[str, Any]) -> Path | None:
    if not record.get("samples"):
        return None
    check_samples_name(record["samples"], record_path)
    return Path(record_path).parent / record["samples"]


def check_location(path: str | os.PathLike, runs_dir: str | os.PathLike, record: dict) -> None:
    """A record lives at ``<runs>/<scale>/<paper>/<variant>/<suite>.json`` and says so itself.

    The variant folder is the variant, or the variant with the record's seed as a suffix and
    optionally a prefix: ``[<prefix>-]<variant>-s<seed>`` (PIG keeps one folder per benchmark, arm
    and seed: ``shapes-pig-s0`` holds variant ``pig`` at seed 0).
    """
    path = Path(path)
    try:
        parts = path.relative_to(runs_dir).parts
    except ValueError:
        parts = ()
    layout = "<runs>/<scale>/<paper>/<variant>/<suite>.json"
    if len(parts) != 4:
        raise _fail(path, "(location)", "/".join(parts), f"a run record must be at {layout}")
    scale, paper, folder, name = parts
    for key, where_it_is in (("scale", scale), ("paper", paper), ("suite", name[: -len(".json")])):
        if record[key] != where_it_is:
            raise _fail(
                path,
                key,
                record[key],
                f"does not match the record's path ({where_it_is!r} in {layout})",
            )
    variant, tail = record["variant"], f"{record['variant']}-s{record['seed']}"
    if folder not in (variant, tail) and not folder.endswith(f"-{tail}"):
        raise _fail(
            path,
            "variant",
            variant,
            f"does not match the record's folder {folder!r} (the variant, or "
            f"[<prefix>-]<variant>-s<seed> with the record's seed {record['seed']})",
        )


def iter_samples(record_path: str | os.PathLike, record: dict[str, Any]) -> Iterator[dict]:
    """Yield the rows of a record's per-sample file, each checked; raise RecordError naming the
    file, line, key and value of the first bad one.

    After the last row, every record metric with an ``n`` is checked against the rows that
    score it: a task's per-sample scores of a metric must number exactly its ``n`` (a file
    truncated at a line boundary, or padded, is refused rather than silently unpairing a
    comparison). A metric the rows do not score (an aggregate) is not counted. lm-eval logs
    one row per document and filter (gsm8k: strict-match and flexible-extract) and the record
    then holds one metric per filter under one name: their n add up, and a document may repeat
    that many times. The caller must consume the iterator to the end.
    """
    path = samples_path(record_path, record)
    if path is None:
        return
    if path.is_symlink() or not path.is_file():
        problem = "is a symbolic link" if path.is_symlink() else "file not found"
        raise _fail(record_path, "samples", record["samples"], f"{problem} beside the record")
    # lm-eval logs one row per document and filter, and the record then holds one metric per
    # filter under the same name: a document appears once per metric of one name and task.
    expected: dict[tuple[str, str], list[int]] = {}
    for j, m in enumerate(record["metrics"]):
        expected.setdefault((m["task"], m["metric"]), []).append(j)
    repeats: dict[str, int] = {}
    for (task, _), js in expected.items():
        repeats[task] = max(repeats.get(task, 1), len(js))
    counts: dict[tuple[str, str], int] = {}
    docs: dict[tuple[str, int], int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = _sample_line(line, path, i)
                task, doc_id = row["task"], row.get("doc_id")
                if doc_id is not None:
                    seen = docs[task, doc_id] = docs.get((task, doc_id), 0) + 1
                    if seen > repeats.get(task, 1):
                        raise _fail(
                            f"{path}: line {i}",
                            "doc_id",
                            doc_id,
                            f"repeats a document of task {task!r}",
                        )
                for name in row.get("metrics") or {}:
                    counts[task, name] = counts.get((task, name), 0) + 1
                yield row
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, "(file)", record["samples"], f"cannot read samples ({e})") from e
    for (task, name), js in expected.items():
        ns = [record["metrics"][j]["n"] for j in js]
        found = counts.get((task, name))
        if found is None or any(n is None for n in ns) or found == sum(ns):
            continue
        which = ", ".join(f"metrics[{j}].n" for j in js)
        raise RecordError(
            f"{path}: {task}.{name}: {found} rows: expected {sum(ns)} for task {task!r} "
            f"({which} of the record); a truncated or padded samples file"
        )


SAMPLE_TEXT_KEYS = ("prompt", "target", "response", "doc_hash")


def _sample_line(line: str, path: Path, i: int) -> dict[str, Any]:
    where = f"{path}: line {i}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise _fail(where, "(line)", line.strip(), f"not valid JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise _fail(where, "(line)", row, "a sample row must be a JSON object")
    task = row.get("task", _MISSING)
    if not isinstance(task, str) or not task:
        raise _fail(where, "task", task, "must be a non-empty string")
    _check_int(row.get("doc_id"), where, "doc_id", null=True)
    for key in SAMPLE_TEXT_KEYS:
        if row.get(key) is not None and not isinstance(row[key], str):
            raise _fail(where, key, row[key], "must be a string or null")
    scores = row.get("metrics")
    if scores is not None and not isinstance(scores, dict):
        raise _fail(where, "metrics", scores, "must be an object of per-sample scores")
    for name, v in (scores or {}).items():
        key = f"metrics.{name}"
        if isinstance(v, list):
            if len(v) != 2:
                raise _fail(where, key, v, "a weighted score must be a [value, weight] pair")
            _check_number(v[0], where, key + "[0]")
            _check_number(v[1], where, key + "[1]")
        else:
            _check_number(v, where, key)
    return row
