"""Queries on the DuckDB store and the view models the templates render.

Everything here reads the store only (read-only connection), sorts every query, and formats
numbers with :func:`claimbench.report.svg.fmt_num`, so the same database gives the same bytes.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import jinja2
from markupsafe import Markup

from claimbench.errors import ClaimbenchError
from claimbench.io import stable_hash
from claimbench.records import SCALES
from claimbench.report.publish import publish
from claimbench.report.svg import bar_chart, fmt_num, heatmap, line_chart

GENERATOR = "claimbench report"
EXAMPLES_PER_TASK = 5
MAX_TEXT = 2000  # characters of a prompt / target / response shown per sample
VERSION_KEYS = ("torch", "transformers", "lm_eval", "cpu")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------- helpers


def scale_key(scale: str | None) -> tuple[int, str]:
    """Sort key: tiny, small, paper first (in that order), then any other scale by name."""
    s = scale or ""
    return (SCALES.index(s) if s in SCALES else len(SCALES), s)


def page_name(paper: str) -> str:
    """File name of a paper's page (a hash-based name where the id is not a safe file name)."""
    if _SAFE_NAME.fullmatch(paper) and paper.lower() != "index":
        return f"{paper}.html"
    return f"paper-{stable_hash(paper, 10)}.html"


def arrow(higher_is_better: bool | None) -> str:
    """'↑' / '↓' / '' for higher_is_better True / False / unknown."""
    if higher_is_better is None:
        return ""
    return "↑" if higher_is_better else "↓"


def value_text(value: float | None, stderr: float | None) -> str:
    """'value ± stderr' (stderr left out when null)."""
    if value is None:
        return "–"
    return fmt_num(value) if stderr is None else f"{fmt_num(value)} ± {fmt_num(stderr)}"


def sort_attr(x: float | int | None) -> str:
    """Raw number for the ``data-sort`` attribute ('' for null)."""
    return "" if x is None else repr(float(x))


def _clip(text: Any) -> str:
    if text is None:
        return ""
    text = str(text)
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n… ({len(text) - MAX_TEXT} more characters)"


def _json(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def _sample_metrics(text: str | None) -> str:
    obj = _json(text, {})
    if not isinstance(obj, dict):
        return str(obj)
    parts = []
    for k in sorted(obj):
        v = obj[k]
        shown = fmt_num(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
        parts.append(f"{k}={shown}")
    return ", ".join(parts)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] = ()) -> list[dict]:
    cur = con.execute(sql, list(params))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def incomparable(rows: Iterable[dict]) -> dict[tuple[str, str, str], list[str]]:
    """{(scale, task, metric): reasons} where rows of one metric of one task at one scale differ
    in hash, n or harness version. The key is the metric, not just the task: a column compares
    one metric across runs, and two metrics of one task may rightly count different things
    (accuracy over 200 problems beside a response length with no sample size)."""
    seen: dict[tuple[str, str, str], dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in rows:
        key = (r["scale"], r["task"], r["metric"])
        seen[key]["task hash"].add(r["task_hash"])
        seen[key]["n"].add(r["n"])
        seen[key]["harness version"].add(r["harness_version"])
    out = {}
    for key in sorted(seen, key=lambda k: (scale_key(k[0]), k[1], k[2])):
        reasons = [what for what, vals in seen[key].items() if len(vals) > 1]
        if reasons:
            out[key] = reasons
    return out


def warning_text(reasons: list[str]) -> str:
    return "not comparable: differing " + " / ".join(reasons)


def _grouped_warnings(bad: dict[tuple[str, str, str], list[str]]) -> list[tuple[str, str]]:
    """One banner line per (task, reasons), naming its metrics: ``[("valid · acc, loss", text)]``."""
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for (_, task, metric), reasons in bad.items():
        grouped[(task, tuple(reasons))].append(metric)
    return [
        (f"{task} · {', '.join(metrics)}", warning_text(list(reasons)))
        for (task, reasons), metrics in grouped.items()
    ]


# --------------------------------------------------------------------------- store-wide


def store_scales(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT scale FROM runs UNION SELECT scale FROM claim_checks ORDER BY scale"
    ).fetchall()
    return sorted((r[0] for r in rows if r[0] is not None), key=scale_key)


def scale_sources(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """{scale: "computed here" or "published at <sha>, <date>"}: where each scale's numbers
    come from (a published scale is loaded only when no run of it was computed here)."""
    cols = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE runs)").fetchall()}
    if "source" not in cols:  # a store written before runs had a source
        return {r[0]: "computed here" for r in con.execute("SELECT DISTINCT scale FROM runs")}
    rows = con.execute("SELECT scale, string_agg(DISTINCT source, '; ') FROM runs GROUP BY 1")
    return dict(rows.fetchall())


def present_papers(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Papers with at least one run or claim check, with title/url/summary where known."""
    return _rows(
        con,
        """
        WITH present AS (SELECT paper FROM runs UNION SELECT paper FROM claim_checks)
        SELECT pr.paper, p.title, p.url, p.summary, p.package
        FROM present pr LEFT JOIN papers p USING (paper)
        WHERE pr.paper IS NOT NULL
        ORDER BY pr.paper
        """,
    )


def _nav(papers: list[dict]) -> list[dict]:
    return [
        {"paper": p["paper"], "href": page_name(p["paper"]), "title": p["title"] or p["paper"]}
        for p in papers
    ]


STATES = ("held", "failed", "inconclusive", "missing", "not attempted")


def index_view(con: duckdb.DuckDBPyConnection, papers: list[dict]) -> dict[str, Any]:
    """View model of index.html: per paper and scale the counts of each verdict over the
    paper's own claims (``kind = 'paper'``); pipeline checks are counted apart."""
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {**dict.fromkeys(STATES, 0), "runs": 0, "pipeline": 0, "pipeline_held": 0}
    )
    for paper, scale, kind, status, k in con.execute(
        "SELECT paper, scale, coalesce(kind, 'paper'), status, count(*) FROM claim_checks "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        if kind == "paper":
            counts[(paper, scale)][status] = counts[(paper, scale)].get(status, 0) + k
        else:
            counts[(paper, scale)]["pipeline"] += k
            counts[(paper, scale)]["pipeline_held"] += k if status == "held" else 0
    for paper, scale, k in con.execute(
        "SELECT paper, scale, count(*) FROM runs GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        counts[(paper, scale)]["runs"] = k
    summary = []
    for p in papers:
        keys = sorted((k for k in counts if k[0] == p["paper"]), key=lambda k: scale_key(k[1]))
        for key in keys:
            summary.append(
                {
                    "paper": p["paper"],
                    "href": page_name(p["paper"]) + f"#verdicts-{key[1]}",
                    "title": p["title"] or "",
                    "scale": key[1],
                    "counts": [(st, counts[key][st]) for st in STATES],
                    **counts[key],
                }
            )
    n_metrics = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    shas = con.execute(
        "SELECT git_sha, bool_or(git_dirty), count(*) FROM runs GROUP BY git_sha ORDER BY git_sha"
    ).fetchall()
    versions = con.execute(
        "SELECT harness_version, count(*) FROM runs GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    return {
        "summary": summary,
        "states": STATES,
        "n_metrics": n_metrics,
        "gen": {
            "shas": [{"sha": s or "unknown", "dirty": bool(d), "runs": k} for s, d, k in shas],
            "harness_versions": [{"version": v, "runs": k} for v, k in versions],
            "n_runs": n_runs,
            "scales": store_scales(con),
        },
    }


# --------------------------------------------------------------------------- paper page


Z_POWER80 = 0.8416  # as claimbench.stats: mde = (z + 0.8416)·se, so z·se = mde - 0.8416·se


def _ours(k: dict, spec: Any) -> tuple[str, str]:
    """(our value ± z·se as text, its sort key) of one check row; a compare shows Δ."""
    est, se, mde = k.get("estimate"), k.get("stderr"), k.get("mde")
    if est is None:
        return "–", ""
    kind = next(iter(spec)) if isinstance(spec, dict) and spec else ""
    seeds_cmp = (
        kind == "seeds" and isinstance(spec.get("seeds"), dict) and ("compare" in spec["seeds"])
    )
    prefix = "Δ " if kind == "compare" or seeds_cmp else ""
    text = prefix + (fmt_num(est) if kind != "compare" and not seeds_cmp else f"{est:+.4g}")
    if se and mde is not None:
        text += f" ± {fmt_num(mde - Z_POWER80 * se)}"
    return text, sort_attr(est)


def _claims(con: duckdb.DuckDBPyConnection, paper: str, scales: list[str]) -> list[dict]:
    claims = _rows(
        con,
        """
        SELECT claim_id, statement, coalesce(kind, 'paper') AS kind, source, not_attempted,
               scales, paper_model, paper_setting, paper_benchmark, paper_metric, paper_value,
               check_spec
        FROM claims WHERE paper = ? ORDER BY rowid
        """,
        [paper],
    )
    checks = {
        (r["claim_id"], r["scale"]): r
        for r in _rows(
            con,
            "SELECT scale, claim_id, status, detail, test, estimate, stderr, n, mde, n_needed, "
            "noninferiority_margin FROM claim_checks WHERE paper = ? "
            "ORDER BY scale, claim_id, status, detail",
            [paper],
        )
    }
    out = []
    for c in claims:
        context = [
            f"{label}: {c[key]}"
            for label, key in (
                ("model", "paper_model"),
                ("setting", "paper_setting"),
                ("benchmark", "paper_benchmark"),
                ("metric", "paper_metric"),
            )
            if c[key]
        ]
        spec = _json(c["check_spec"], None)
        verdicts = []
        for scale in scales:
            k = checks.get((c["claim_id"], scale))
            if k is not None:
                ours, ours_sort = _ours(k, spec)
                verdicts.append(
                    {
                        "scale": scale,
                        "status": k["status"],
                        "detail": k["detail"] or "",
                        "test": k["test"] or "",
                        "ours": ours,
                        "ours_sort": ours_sort,
                        "mde": fmt_num(k["mde"]) if k["mde"] is not None else "–",
                        "mde_sort": sort_attr(k["mde"]),
                        "n": k["n"],
                        "n_needed": k["n_needed"],
                        "margin": k["noninferiority_margin"],
                    }
                )
                continue
            if scale not in (c["scales"] or []):
                status, detail = "n/a", "not claimed at this scale"
            elif spec is None:
                status, detail = "n/a", "no automatic check"
            else:
                status, detail = "n/a", "not run at this scale"
            verdicts.append(
                {
                    "scale": scale,
                    "status": status,
                    "detail": detail,
                    "test": "",
                    "ours": "–",
                    "ours_sort": "",
                    "mde": "–",
                    "mde_sort": "",
                    "n": None,
                    "n_needed": None,
                    "margin": None,
                }
            )
        out.append(
            {
                **c,
                "paper_value_text": fmt_num(c["paper_value"])
                if c["paper_value"] is not None
                else "",
                "context": context,
                "verdicts": verdicts,
                # claimed at none of the page's scales (e.g. a paper-table row in a tiny store):
                # listed apart, folded, so the verdicts of this store come first
                "unchecked": not set(c["scales"] or []) & set(scales),
            }
        )
    return out


def _verdict_tables(claims: list[dict], scales: list[str]) -> tuple[list[dict], list[dict]]:
    """Per scale: the paper's claims made at that scale (claim, paper value, ours, verdict,
    power) with their verdict counts; and per scale the pipeline checks, listed apart."""
    tables, pipeline = [], []
    for i, scale in enumerate(scales):
        rows = [
            {**c, "v": c["verdicts"][i]}
            for c in claims
            if c["kind"] == "paper" and scale in (c["scales"] or [])
        ]
        if rows:
            counts = [(st, sum(r["v"]["status"] == st for r in rows)) for st in STATES]
            unchecked = sum(r["v"]["status"] == "n/a" for r in rows)
            tables.append({"scale": scale, "rows": rows, "counts": counts, "unchecked": unchecked})
        pipe = [
            {**c, "v": c["verdicts"][i]}
            for c in claims
            if c["kind"] != "paper" and c["verdicts"][i]["status"] != "n/a"
        ]
        if pipe:
            pipeline.append({"scale": scale, "rows": pipe})
    return tables, pipeline


def _all_results(con: duckdb.DuckDBPyConnection, paper: str) -> list[dict]:
    """Every stored metric of the paper, one row per run, task and metric (with seed and run)."""
    rows = _rows(
        con,
        """
        SELECT l.scale, l.variant, l.method, l.base_model, l.suite, r.seed, l.task, l.metric,
               l.value, l.stderr, l.n, l.higher_is_better, l.task_hash, l.harness_version,
               l.run_id
        FROM leaderboard l JOIN runs r USING (run_id) WHERE l.paper = ?
        ORDER BY l.task, l.metric, l.variant, l.method, l.base_model, l.suite, r.seed, l.run_id
        """,
        [paper],
    )
    rows.sort(key=lambda r: scale_key(r["scale"]))  # stable: keeps SQL order
    bad = incomparable(rows)
    out = []
    for r in rows:
        reasons = bad.get((r["scale"], r["task"], r["metric"]))
        out.append(
            {
                **r,
                "run": r["run_id"][:8],
                "arrow": arrow(r["higher_is_better"]),
                "text": value_text(r["value"], r["stderr"]),
                "sort": sort_attr(r["value"]),
                "n_sort": sort_attr(r["n"]),
                "warning": warning_text(reasons) if reasons else "",
            }
        )
    return out


def _row_labels(runs: list[dict], metrics: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Result rows of one scale: one per (variant, method, base_model), split by run if needed.

    A (variant, method, base_model) whose runs report the same task.metric twice (several seeds
    or suites) gets one row per run, labelled with seed, suite and run id.
    """
    cells_by_run: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for m in metrics:
        cells_by_run[m["run_id"]].add((m["task"], m["metric"]))
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["variant"], r["method"], r["base_model"]), []).append(r)
    rows: list[dict] = []
    row_of: dict[str, int] = {}
    for key, group in groups.items():
        cells = [c for r in group for c in cells_by_run[r["run_id"]]]
        split = len(cells) != len(set(cells))
        members = [[r] for r in group] if split else [group]
        for member in members:
            note = ""
            if split:
                r = member[0]
                note = f"seed {r['seed']}, {r['suite']}, run {r['run_id'][:8]}"
            label = key[0] + (f" ({note})" if note else "")
            rows.append(
                {
                    "variant": key[0],
                    "method": key[1],
                    "base_model": key[2],
                    "note": note,
                    "label": label,
                    "cells": {},
                }
            )
            for r in member:
                row_of[r["run_id"]] = len(rows) - 1
    return rows, row_of


def _results(con: duckdb.DuckDBPyConnection, paper: str) -> tuple[list[dict], dict[str, str]]:
    """Per scale: results table, bar charts and line charts; and {run_id: row label}."""
    runs = _rows(
        con,
        "SELECT run_id, scale, variant, method, base_model, suite, seed FROM runs "
        "WHERE paper = ? ORDER BY variant, method, base_model, suite, seed, run_id",
        [paper],
    )
    metrics = _rows(
        con,
        """
        SELECT scale, task, metric, value, stderr, n, higher_is_better, task_hash,
               harness_version, run_id
        FROM leaderboard WHERE paper = ?
        ORDER BY task, metric, variant, method, base_model, suite, run_id
        """,
        [paper],
    )
    series = _rows(
        con,
        """
        SELECT r.scale, s.name, s.x_label, s.y_label, s.x, s.y, s.run_id
        FROM series s JOIN runs r USING (run_id) WHERE r.paper = ?
        ORDER BY s.name, r.variant, r.method, r.base_model, r.suite, r.seed, s.run_id
        """,
        [paper],
    )
    labels: dict[str, str] = {}
    sections = []
    for scale in sorted({r["scale"] for r in runs}, key=scale_key):
        s_runs = [r for r in runs if r["scale"] == scale]
        s_metrics = [m for m in metrics if m["scale"] == scale]
        rows, row_of = _row_labels(s_runs, s_metrics)
        for run_id, i in row_of.items():
            labels[run_id] = rows[i]["label"]
        bad = incomparable(s_metrics)
        columns: dict[tuple[str, str], dict] = {}
        for m in s_metrics:
            col = columns.setdefault(
                (m["task"], m["metric"]),
                {"task": m["task"], "metric": m["metric"], "hib": set(), "warning": ""},
            )
            col["hib"].add(m["higher_is_better"])
            reasons = bad.get((scale, m["task"], m["metric"]))
            col["warning"] = warning_text(reasons) if reasons else ""
            rows[row_of[m["run_id"]]]["cells"][(m["task"], m["metric"])] = {
                "text": value_text(m["value"], m["stderr"]),
                "sort": sort_attr(m["value"]),
                "value": m["value"],
                "stderr": m["stderr"],
                "n": m["n"],
                "task_hash": m["task_hash"],
            }
        cols = []
        for key in sorted(columns):
            col = columns.pop(key)
            hib = col.pop("hib")
            col["arrow"] = arrow(hib.pop()) if len(hib) == 1 else ""
            col["key"] = key
            cols.append(col)
        charts = []
        for col in cols:
            hits = [
                (r["label"], r["cells"][col["key"]])
                for r in rows
                if col["key"] in r["cells"] and r["cells"][col["key"]]["value"] is not None
            ]
            charts.append(
                Markup(
                    bar_chart(
                        f"{col['task']} · {col['metric']}"
                        + (" ⚠ not comparable" if col["warning"] else ""),
                        [h[0] for h in hits],
                        [h[1]["value"] for h in hits],
                        [h[1]["stderr"] for h in hits],
                        y_label=f"{col['metric']} {col['arrow']}".strip(),
                        x_label="variant",
                    )
                )
            )
        lines = []
        s_series = [s for s in series if s["scale"] == scale and not s["name"].startswith(HEATMAP)]
        for name in sorted({s["name"] for s in s_series}):
            group = [s for s in s_series if s["name"] == name]
            lines.append(
                Markup(
                    line_chart(
                        name,
                        [(_line_label(s, group, labels), s["x"], s["y"]) for s in group],
                        x_label=group[0]["x_label"] or "x",
                        y_label=(group[0]["y_label"] or "y").split(" | ", 1)[0],
                    )
                )
            )
        sections.append(
            {
                "scale": scale,
                "columns": cols,
                "rows": rows,
                "bars": charts,
                "lines": lines,
                "warnings": _grouped_warnings(bad),
            }
        )
    return sections, labels


def _line_label(s: dict, group: list[dict], labels: dict[str, str]) -> str:
    """Legend label: the run's label, plus the series' y label (the part after ``" | "``, the
    part before is the axis label) when one run has several lines in the chart."""
    label = labels.get(s["run_id"], s["run_id"])
    if sum(g["run_id"] == s["run_id"] for g in group) > 1:
        return f"{label} · {(s['y_label'] or '').split(' | ', 1)[-1]}"
    return label


HEATMAP = "heatmap:"  # series named heatmap:<map>:<row> are drawn as heatmaps, not line charts


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _heatmaps(con: duckdb.DuckDBPyConnection, paper: str, labels: dict[str, str]) -> list[dict]:
    """Per scale, run and map: the heatmap SVG built from its ``heatmap:<map>:<row>`` series."""
    rows = _rows(
        con,
        """
        SELECT r.scale, s.name, s.x_label, s.y, s.run_id
        FROM series s JOIN runs r USING (run_id) WHERE r.paper = ? AND starts_with(s.name, ?)
        ORDER BY r.scale, s.run_id, s.name
        """,
        [paper, HEATMAP],
    )
    maps: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        _, name, row = r["name"].split(":", 2)
        maps.setdefault((r["scale"], r["run_id"], name), []).append({**r, "row": row})
    out = []
    for (scale, run_id, name), group in sorted(
        maps.items(), key=lambda kv: (scale_key(kv[0][0]), kv[0][1], kv[0][2])
    ):
        group.sort(key=lambda g: _natural(g["row"]))
        label = labels.get(run_id, run_id)
        svg = heatmap(
            f"{label}: {name}",
            [g["row"] for g in group],
            [g["y"] for g in group],
            x_label=group[0]["x_label"] or "x",
        )
        out.append({"scale": scale, "run": label, "name": name, "svg": Markup(svg)})
    return out


def _examples(con: duckdb.DuckDBPyConnection, paper: str, labels: dict[str, str]) -> list[dict]:
    rows = _rows(
        con,
        f"""
        SELECT r.scale, r.variant, s.task, s.doc_id, s.prompt, s.target, s.response, s.metrics,
               s.run_id
        FROM samples s JOIN runs r USING (run_id)
        WHERE r.paper = ?
        QUALIFY row_number() OVER (
            PARTITION BY r.scale, r.variant, s.task
            ORDER BY s.doc_id NULLS LAST, s.run_id, s.prompt, s.target, s.response
        ) <= {EXAMPLES_PER_TASK}
        ORDER BY r.scale, r.variant, s.task, s.doc_id NULLS LAST, s.run_id, s.prompt, s.target,
                 s.response
        """,
        [paper],
    )
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scale"], r["variant"], r["task"]), []).append(
            {
                "doc_id": "" if r["doc_id"] is None else r["doc_id"],
                "prompt": _clip(r["prompt"]),
                "target": _clip(r["target"]),
                "response": _clip(r["response"]),
                "metrics": _sample_metrics(r["metrics"]),
                "run": labels.get(r["run_id"], ""),
            }
        )
    keys = sorted(groups, key=lambda k: (scale_key(k[0]), k[1], k[2]))
    return [{"scale": k[0], "variant": k[1], "task": k[2], "samples": groups[k]} for k in keys]


def _provenance(con: duckdb.DuckDBPyConnection, paper: str) -> list[dict]:
    rows = _rows(
        con,
        """
        SELECT run_id, scale, variant, method, base_model, suite, seed, git_sha, git_dirty,
               device, host, started_at, wall_s, config_hash, harness_version, versions
        FROM runs WHERE paper = ?
        ORDER BY variant, method, base_model, suite, seed, run_id
        """,
        [paper],
    )
    rows.sort(key=lambda r: scale_key(r["scale"]))
    out = []
    for r in rows:
        versions = _json(r.pop("versions"), {})
        versions = versions if isinstance(versions, dict) else {}
        out.append(
            {
                **r,
                "sha": (r["git_sha"] or "unknown")[:10],
                "wall": fmt_num(r["wall_s"]),
                "wall_sort": sort_attr(r["wall_s"]),
                "versions": [str(versions.get(k, "–")) for k in VERSION_KEYS],
            }
        )
    return out


def paper_view(con: duckdb.DuckDBPyConnection, paper: dict, scales: list[str]) -> dict[str, Any]:
    """View model of <paper>.html."""
    name = paper["paper"]
    url = paper.get("url") or ""
    results, labels = _results(con, name)
    claims = _claims(con, name, scales)
    tables, pipeline = _verdict_tables(claims, scales)
    return {
        "paper": name,
        "title": paper.get("title") or name,
        "summary": paper.get("summary") or "",
        "url": url,
        "url_is_link": url.startswith(("https://", "http://")),
        "scales": scales,
        "claims": claims,
        "verdict_tables": tables,
        "pipeline": pipeline,
        "all_results": _all_results(con, name),
        "results": results,
        "examples": _examples(con, name, labels),
        "heatmaps": _heatmaps(con, name, labels),
        "provenance": _provenance(con, name),
        "version_keys": VERSION_KEYS,
    }


# --------------------------------------------------------------------------- rendering


PAPER_TEMPLATE = "report.html.j2"  # methods/<package>/report.html.j2, found by convention


def environment(methods_dir: str | Path | None = None) -> jinja2.Environment:
    """The core templates; with ``methods_dir``, also each paper's own page template
    ``<package>/report.html.j2`` (it extends the core's ``paper.html.j2``)."""
    loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("claimbench.report", "templates")]
    if methods_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(methods_dir)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = fmt_num
    env.filters["fromjson"] = lambda text: _json(text, None)  # paper templates read sample JSON
    return env


def _generated(path: Path) -> bool:
    """A page this renderer wrote (its generator meta tag): not carried into a new report."""
    if path.suffix != ".html" or not path.is_file() or path.is_symlink():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(2048)
    return f'<meta name="generator" content="{GENERATOR}">' in head


def render_report(
    db_path: str | Path, out_dir: str | Path, methods_dir: str | Path | None = "methods"
) -> list[Path]:
    """Regenerate reports/index.html and reports/<paper>.html from the DuckDB store alone.

    A paper may shape its own page: ``<methods_dir>/<package>/report.html.j2`` (found by
    convention, the core names no paper) extends ``paper.html.j2``; otherwise the generic page.
    """
    db_path, out_dir = Path(db_path), Path(out_dir)
    if not db_path.is_file():
        raise ClaimbenchError(
            f"{db_path}: no database yet; run the workflow or `claimbench ingest` first"
        )
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        papers = present_papers(con)
        scales = store_scales(con)
        nav = _nav(papers)
        methods = Path(methods_dir) if methods_dir is not None else None
        env = environment(methods if methods is not None and methods.is_dir() else None)
        env.globals["sources"] = scale_sources(con)  # every scale's label in every template
        pages: list[tuple[str, str]] = [
            (
                "index.html",
                env.get_template("index.html.j2").render(
                    nav=nav,
                    current="index.html",
                    generator=GENERATOR,
                    **index_view(con, papers),
                ),
            )
        ]
        for p in papers:
            href = page_name(p["paper"])
            names = ["paper.html.j2"]
            package = p.get("package") or ""
            if _SAFE_NAME.fullmatch(package):
                names.insert(0, f"{package}/{PAPER_TEMPLATE}")  # the paper's own page, if any
            template = env.select_template(names)
            pages.append(
                (
                    href,
                    template.render(
                        nav=nav, current=href, generator=GENERATOR, **paper_view(con, p, scales)
                    ),
                )
            )
    finally:
        con.close()
    # The whole folder is swapped in at once: a failure leaves the previous report intact, pages
    # of papers no longer in the store disappear, the folder's other files are kept.
    return publish(pages, out_dir, owned=_generated)
