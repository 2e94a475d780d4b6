"""Published results: export one scale of the store, merge published scales back in, audit them.

``publish`` writes ``results/published/<scale>/``: one zstd Parquet file per table (runs with
their provenance, metrics, series, per-document scores, the stored sample rows and the claim
checks of that scale), written by DuckDB's own ``COPY ... TO ... (FORMAT parquet)``, and a
``manifest.json`` with the scale, the git sha the runs were computed at, the date, package and
harness versions, every table's row count and sha256, a content hash of the whole export and
what was left out and why. An export stays under ``CAP_BYTES``: the sample rows go first, then
the per-document scores. The folder is built beside the old one and swapped in at the end.

``load_published`` (called by ingest) loads every published scale that has no local run
records into the store, each run row labelled ``published at <sha>, <date>``; a locally
computed scale is never overwritten. Claims are then checked by the current checker on the
merged metrics.

``verify`` re-runs published runs through the workflow's own targets (the record path of a run,
``results/runs/<scale>/<paper>/<variant>/<suite>.json``) and compares every metric with the
published value: identical, within the published stderr, or different.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from claimbench import __version__
from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_json, sha256_file, stable_hash
from claimbench.records import TABLES, load_run_record

PUBLISHED_DIR = "results/published"
MANIFEST = "manifest.json"
FORMAT = 1
CAP_BYTES = 25 * 1024 * 1024
COMPUTED_HERE = "computed here"
# Tables of a scale, in the order they are loaded back (runs first: the others join on run_id).
RUN_TABLES = ("runs", "metrics", "series", "sample_scores", "samples")
REFERENCE_TABLES = ("claim_checks",)  # verdicts at publish time; ingest recomputes them
# Left out, in this order, when an export is over the cap (they are the large ones).
DROP_ORDER = (
    ("samples", "the stored sample rows (prompts and responses) put the export over the cap"),
    (
        "sample_scores",
        "the per-document scores put the export over the cap; claims of this scale are "
        "checked unpaired (their detail says so)",
    ),
)
_SCALE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_scale(scale: str) -> str:
    if not _SCALE.fullmatch(scale or ""):
        raise ClaimbenchError(f"--scale: {scale!r} is not a scale name (letters, digits, _ . -)")
    return scale


def source_label(manifest: dict) -> str:
    """``published at <sha>, <date>``: how the store and the report label a published scale."""
    return f"published at {str(manifest.get('git_sha') or 'unknown')[:10]}, {manifest.get('date')}"


def _select(table: str) -> str:
    """The export query of one table for the scale ``$1``, in a stable row order."""
    if table == "runs":
        cols = ", ".join(c.name for c in TABLES["runs"])
        return f"SELECT {cols} FROM runs WHERE scale = $1 ORDER BY run_id"
    if table in TABLES:
        cols = ", ".join(f"t.{c.name}" for c in TABLES[table])
        return (
            f"SELECT {cols} FROM {table} t JOIN runs r USING (run_id) WHERE r.scale = $1 "
            "ORDER BY ALL"
        )
    return f"SELECT * FROM {table} WHERE scale = $1 ORDER BY ALL"


def _swap_in(new: Path, final: Path) -> None:
    """Replace ``final`` by the finished folder ``new`` (both in the same folder)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rmdir(old)
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish(scale: str, db_path: str | Path, out_dir: str | Path = PUBLISHED_DIR) -> dict:
    """Export ``scale`` of the store into ``<out_dir>/<scale>/``; returns the manifest."""
    import duckdb

    from claimbench.provenance import package_versions

    scale, db_path, out_dir = _check_scale(scale), Path(db_path), Path(out_dir)
    if not db_path.is_file():
        raise ClaimbenchError(f"{db_path}: no database yet; run `claimbench ingest` first")
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        cols = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE runs)").fetchall()}
        where = "scale = $1" + (
            " AND source <> 'computed here'" if "source" in cols else " AND false"
        )
        if con.execute(f"SELECT count(*) FROM runs WHERE {where}", [scale]).fetchone()[0]:
            raise ClaimbenchError(
                f"{db_path}: scale: {scale!r} is published in this store, not computed here; "
                "only a locally computed scale can be published"
            )
        runs = con.execute(
            "SELECT git_sha, versions, harness_version, wall_s FROM runs WHERE scale = $1",
            [scale],
        ).fetchall()
        if not runs:
            have = [
                r[0] for r in con.execute("SELECT DISTINCT scale FROM runs ORDER BY 1").fetchall()
            ]
            raise ClaimbenchError(
                f"{db_path}: scale: {scale!r} has no runs in the store (scales there: "
                f"{', '.join(have) or 'none'})"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{scale}.new-", dir=out_dir))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is for everyone
        try:
            tables = {}
            for table in (*RUN_TABLES, *REFERENCE_TABLES):
                path = tmp / f"{table}.parquet"
                sql = _select(table)
                quoted = str(path).replace("'", "''")
                con.execute(
                    f"COPY ({sql}) TO '{quoted}' (FORMAT parquet, COMPRESSION zstd)", [scale]
                )
                rows = con.execute(f"SELECT count(*) FROM ({sql})", [scale]).fetchone()[0]
                tables[table] = {"file": path.name, "rows": rows}
            left_out = [
                {
                    "what": "the run records' per-sample files (*.samples.jsonl)",
                    "why": "the samples table keeps the first rows per run and task (as the "
                    "store does); the full files stay where the runs were computed",
                }
            ]
            for table, why in DROP_ORDER:
                if sum(p.stat().st_size for p in tmp.iterdir()) <= CAP_BYTES:
                    break
                (tmp / tables.pop(table)["file"]).unlink()
                left_out.append({"what": f"table {table}", "why": why})
            for info in tables.values():
                info["bytes"] = (tmp / info["file"]).stat().st_size
                info["sha256"] = sha256_file(tmp / info["file"])
            shas = Counter(r[0] for r in runs)
            versions = Counter(r[1] for r in runs).most_common(1)[0][0]
            now = _dt.datetime.now(_dt.UTC)
            manifest = {
                "format": FORMAT,
                "scale": scale,
                "git_sha": shas.most_common(1)[0][0],
                "git_shas": dict(sorted(shas.items())),
                "date": now.date().isoformat(),
                "published_at": now.isoformat(timespec="seconds"),
                "harness_version": sorted({r[2] for r in runs}),
                "claimbench_version": __version__,
                "package_versions": json.loads(versions) if versions else {},
                "publisher_versions": package_versions(),
                "wall_s_total": round(sum(r[3] or 0.0 for r in runs), 1),
                "tables": tables,
                "content_hash": stable_hash({t: i["sha256"] for t, i in tables.items()}, n=64),
                "bytes_total": sum(i["bytes"] for i in tables.values()),
                "cap_bytes": CAP_BYTES,
                "left_out": left_out,
            }
            atomic_write_json(tmp / MANIFEST, manifest)
            _swap_in(tmp, out_dir / scale)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        con.close()
    return manifest


def read_manifest(folder: str | Path, check_files: bool = True) -> tuple[dict, list[str]]:
    """(manifest, problems) of one export; problems name files whose sha256 differs."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ClaimbenchError(f"{path}: no published export here (`claimbench publish` writes it)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClaimbenchError(f"{path}: not a valid manifest ({e}); publish again") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ClaimbenchError(f"{path}: format: not a format-{FORMAT} export manifest")
    problems = []
    for table, info in manifest.get("tables", {}).items():
        f = folder / info["file"]
        if not f.is_file():
            problems.append(f"{f}: missing (manifest.json lists table {table})")
        elif check_files and sha256_file(f) != info["sha256"]:
            problems.append(
                f"{f}: sha256 differs from manifest.json ({info['sha256'][:12]}...): the "
                "export was edited after it was published"
            )
    return manifest, problems


def published_scales(published_dir: str | Path | None) -> dict[str, Path]:
    """{scale: export folder} under ``published_dir`` (folders holding a manifest.json)."""
    if published_dir is None or not Path(published_dir).is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(Path(published_dir).iterdir())
        if not p.name.startswith(".") and (p / MANIFEST).is_file()
    }


def load_published(con, published_dir: str | Path | None, local_scales: set[str]) -> list[str]:
    """Load every published scale without local run records into the store's run tables.

    Each file must match its manifest's sha256 and hold only its own scale; the runs get
    ``source = 'published at <sha>, <date>'``. Returns the scales loaded.
    """
    loaded = []
    for scale, folder in published_scales(published_dir).items():
        if scale in local_scales:
            continue  # a locally computed scale is never overwritten by a published one
        manifest, problems = read_manifest(folder)
        if problems:
            raise ClaimbenchError(problems[0] + f"; publish scale {scale!r} again or remove it")
        if manifest.get("scale") != scale:
            raise ClaimbenchError(
                f"{folder / MANIFEST}: scale: {manifest.get('scale')!r} is not the folder's "
                f"scale {scale!r}"
            )
        tables = manifest["tables"]
        runs = str(folder / tables["runs"]["file"])
        other = con.execute(
            "SELECT DISTINCT scale FROM read_parquet($1) WHERE scale <> $2", [runs, scale]
        ).fetchall()
        if other:
            raise ClaimbenchError(f"{runs}: scale: {other[0][0]!r} in an export of scale {scale!r}")
        con.execute(
            "INSERT INTO runs BY NAME SELECT *, $2 AS source FROM read_parquet($1)",
            [runs, source_label(manifest)],
        )
        for table in RUN_TABLES[1:]:
            if table in tables:
                path = str(folder / tables[table]["file"])
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet($1)", [path])
        loaded.append(scale)
    return loaded


# ------------------------------------------------------------------------------------- verify


def target_of(scale: str, run: dict) -> str:
    """The Snakemake target that (re)computes a run: its record path in the workdir."""
    return f"results/runs/{scale}/{run['paper']}/{run['variant']}/{run['suite']}.json"


def _published_runs(folder: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    import duckdb

    manifest, _ = read_manifest(folder, check_files=False)
    con = duckdb.connect()
    try:
        runs_file = str(folder / manifest["tables"]["runs"]["file"])
        metrics_file = str(folder / manifest["tables"]["metrics"]["file"])
        cur = con.execute(
            "SELECT run_id, paper, variant, suite, wall_s, versions FROM read_parquet($1) "
            "ORDER BY run_id",
            [runs_file],
        )
        names = [d[0] for d in cur.description]
        runs = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        metrics: dict[str, list[dict]] = {}
        for run_id, task, metric, value, stderr in con.execute(
            "SELECT run_id, task, metric, value, stderr FROM read_parquet($1) ORDER BY ALL",
            [metrics_file],
        ).fetchall():
            metrics.setdefault(run_id, []).append(
                {"task": task, "metric": metric, "value": value, "stderr": stderr}
            )
    finally:
        con.close()
    return runs, metrics


def compare(published: dict | None, here: dict | None) -> str:
    """identical, within (the published stderr), or different."""
    if published is None or here is None:
        return "different"
    a, b = published["value"], here["value"]
    if a == b:
        return "identical"
    se = published.get("stderr")
    if a is not None and b is not None and se is not None and abs(a - b) <= se:
        return "within"
    return "different"


def choose(
    runs: list[dict], metrics: dict, k: int | None, run_id: str | None, seed: int, where: Path
) -> list[dict]:
    """The runs to re-run: ``run_id`` alone, or ``k`` drawn with ``seed`` from runs with metrics."""
    if run_id is None and (k is None or k < 1):
        raise ClaimbenchError(f"{where}: --runs: {k} (at least 1 run to verify)")
    if run_id is not None:
        match = [r for r in runs if r["run_id"] == run_id]
        if not match:
            raise ClaimbenchError(f"{where}: --run: {run_id!r} is not a published run")
        return match
    pool = [r for r in runs if metrics.get(r["run_id"])]
    return sorted(
        random.Random(seed).sample(pool, min(k or 0, len(pool))), key=lambda r: r["run_id"]
    )


def published_cpu(run: dict) -> str | None:
    """The CPU kind a published run recorded (``versions.cpu``); None for older exports."""
    versions = run.get("versions")
    if isinstance(versions, str):
        try:
            versions = json.loads(versions)
        except json.JSONDecodeError:
            return None
    return versions.get("cpu") if isinstance(versions, dict) else None


def cpu_note(runs: list[dict], here: str | None = None) -> str | None:
    """A note when the runs were computed on another CPU kind than this machine's (or on an
    unrecorded one): numbers are bit-identical only on the same kind (README, "Determinism")."""
    from claimbench.provenance import cpu_kind

    here = here or cpu_kind()
    kinds = sorted({published_cpu(r) or "not recorded" for r in runs})
    if kinds == [here]:
        return None
    return (
        f"note: published on CPU {', '.join(repr(k) for k in kinds)}, here {here!r}: the same "
        "seed gives identical numbers only on the same CPU kind; on another kind training "
        "differs as with a new seed, so expect 'different' rows (README, \"Determinism\")"
    )


def _fmt(v) -> str:
    return "–" if v is None else repr(float(v))


def verify(
    scale: str,
    published_dir: str | Path = PUBLISHED_DIR,
    *,
    k: int | None = 3,
    run_id: str | None = None,
    seed: int = 0,
    dry_run: bool = False,
    cores: int = 2,
    workdir: str | Path = ".",
    snakefile: str | Path | None = None,
    config: tuple[str, ...] = (),
    out=None,
) -> int:
    """Re-run published runs and compare; 0 when every metric is identical or within."""
    out = out or sys.stdout
    folder = Path(published_dir) / _check_scale(scale)
    manifest, problems = read_manifest(folder)
    for p in problems:
        print(f"note: {p}", file=out)
    runs, metrics = _published_runs(folder)
    chosen = choose(runs, metrics, k, run_id, seed, folder)
    if not chosen:
        raise ClaimbenchError(f"{folder}: no published run with metrics to verify")
    targets = [target_of(scale, r) for r in chosen]
    wall = sum(r["wall_s"] or 0.0 for r in chosen)
    print(f"scale {scale}, {source_label(manifest)}: {len(chosen)} of {len(runs)} runs", file=out)
    for r, t in zip(chosen, targets, strict=True):
        print(f"  {t}  (run {r['run_id']}, published wall {r['wall_s'] or 0:.1f} s)", file=out)
    print(
        f"estimated time: {wall:.0f} s (the published wall times of these jobs; artifacts "
        "missing here are built first and are not counted)",
        file=out,
    )
    note = cpu_note(chosen)
    if note:
        print(note, file=out)
    if dry_run:
        return 0
    workdir = Path(workdir)
    snakemake = Path(sys.executable).parent / "snakemake"
    cmd = [str(snakemake) if snakemake.exists() else "snakemake"]
    if snakefile is not None:
        cmd += ["-s", str(snakefile)]
    cmd += ["--directory", str(workdir), "--cores", str(cores), *targets, "--forcerun", *targets]
    cmd += ["--config", f"scale={scale}", *config]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ClaimbenchError(
            f"{workdir}: snakemake exited {proc.returncode} re-running {len(targets)} targets: "
            f"{tail}"
        )
    rows, worst = [], "identical"
    for r, t in zip(chosen, targets, strict=True):
        record = load_run_record(workdir / t)
        if record["run_id"] != r["run_id"]:
            print(
                f"note: {t}: run_id {record['run_id']} differs from the published "
                f"{r['run_id']} (another config)",
                file=out,
            )
        here = {(m["task"], m["metric"]): m for m in record["metrics"]}
        pub = {(m["task"], m["metric"]): m for m in metrics.get(r["run_id"], [])}
        for key in sorted(set(here) | set(pub)):
            status = compare(pub.get(key), here.get(key))
            if status == "different" or (status == "within" and worst == "identical"):
                worst = status
            p, h = pub.get(key) or {}, here.get(key) or {}
            rows.append((t, *key, _fmt(p.get("value")), _fmt(h.get("value")), status))
    rows.insert(0, ("record", "task", "metric", "published", "here", "verdict"))
    widths = [max(len(str(x[i])) for x in rows) for i in range(6)]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)), file=out)
    counts = Counter(r[-1] for r in rows[1:])
    print(
        f"{counts['identical']} identical, {counts['within']} within the published stderr, "
        f"{counts['different']} different",
        file=out,
    )
    return 1 if worst == "different" else 0
