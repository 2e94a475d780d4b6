"""The ``claimbench`` command line: ingest, query, claims, report, ls, fetch, prefetch.

Every user error (bad file, bad key, bad value) prints one line ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from claimbench.errors import exit_on_user_error

DEFAULT_DB = "results/claimbench.duckdb"


def _table(cols: list[str], rows: list[tuple], max_width: int = 60) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            s = f"{v:.6g}"
        else:
            s = "" if v is None else str(v)
        s = s.replace("\n", " ")
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    body = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def cmd_ingest(args) -> None:
    from claimbench.store import ingest

    counts = ingest(args.runs, args.db, args.methods, z=args.z)
    print(f"{args.db}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def cmd_query(args) -> None:
    from claimbench.store import query

    cols, rows = query(args.db, args.sql)
    if args.csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    else:
        print(_table(cols, rows))


def cmd_claims(args) -> None:
    from claimbench.store import query

    where = ["scale IS NOT NULL"]
    if args.paper:
        where.append(f"paper = '{args.paper}'")
    if args.scale:
        where.append(f"scale = '{args.scale}'")
    sql = "SELECT scale, paper, claim_id, status, detail FROM claim_summary"
    sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY paper, claim_id, scale"
    cols, rows = query(args.db, sql)
    print(_table(cols, rows, max_width=90))
    held = sum(1 for r in rows if r[3] == "held")
    failed = sum(1 for r in rows if r[3] == "failed")
    missing = sum(1 for r in rows if r[3] == "missing")
    print(f"\n{held} held, {failed} failed, {missing} missing")


def cmd_report(args) -> None:
    from claimbench.report import render_report

    pages = render_report(args.db, args.out, args.methods)
    print(f"wrote {len(pages)} pages: {Path(args.out) / 'index.html'}")


def cmd_ls(args) -> None:
    from claimbench.store import query

    if args.what == "papers":
        from claimbench.config import known_papers

        for name, folder in known_papers().items():
            print(f"{name}\t{folder}")
        return
    if args.what == "runs":
        sql = (
            "SELECT scale, paper, variant, suite, seed, wall_s, git_sha[:10] AS git "
            "FROM runs ORDER BY scale, paper, variant, suite"
        )
    else:
        sql = (
            "SELECT scale, paper, variant, task, metric, value, stderr, n FROM leaderboard "
            "ORDER BY scale, paper, variant, task, metric"
        )
    cols, rows = query(args.db, sql)
    print(_table(cols, rows))


def cmd_fetch(args) -> None:
    from claimbench.assets import fetch_pypi

    path = fetch_pypi(args.package, args.version, args.cache, args.sha256 or None)
    print(path)


def cmd_prefetch(args) -> None:
    from claimbench import prefetch

    if not args.dry_run:
        prefetch.go_online()  # before planning imports huggingface_hub / datasets
    assets = prefetch.plan(args.scale, args.papers, args.scale_file)
    rows = [(a.kind, a.id, a.detail_text(), ", ".join(sorted(a.needed_by))) for a in assets]
    print(_table(["kind", "id", "detail", "needed by"], rows, max_width=100))
    counts = {k: sum(1 for a in assets if a.kind == k) for k in prefetch.KINDS}
    print(
        f"\nscale {args.scale}: {counts['model']} models, {counts['dataset']} data sets, "
        f"{counts['task']} lm-eval tasks, {counts['pypi']} PyPI files"
    )
    if args.dry_run:
        return
    prefetch.download(assets)
    print("done: compute nodes can now run with HF_HUB_OFFLINE=1 (same HF_HOME and resources/)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="claimbench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("ingest", help="rebuild the DuckDB store from run records and claims")
    p.add_argument("--runs", default="results/runs")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--methods", default="methods")
    p.add_argument(
        "--z", type=float, default=1.96, help="standard errors a strict claim must clear"
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("query", help="run a read-only SQL query on the store")
    p.add_argument("sql")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("claims", help="claim verdicts (held / failed / missing) per scale")
    p.add_argument("--paper")
    p.add_argument("--scale", choices=["tiny", "small", "paper"])
    p.add_argument("--db", default=DEFAULT_DB)
    p.set_defaults(func=cmd_claims)

    p = sub.add_parser("report", help="regenerate the HTML leaderboards from the store")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument(
        "--methods", default="methods", help="folder of the paper packages (their report.html.j2)"
    )
    p.add_argument("--out", default="reports")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ls", help="list papers, runs or metrics")
    p.add_argument("what", choices=["papers", "runs", "metrics"])
    p.add_argument("--db", default=DEFAULT_DB)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("fetch", help="download a PyPI distribution file (no deps) into a cache")
    p.add_argument("--package", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--sha256", default="")
    p.add_argument("--cache", default="resources/pypi")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser(
        "prefetch",
        help="list (--dry-run) or download every model, data set, lm-eval task and PyPI file "
        "a scale needs, for air-gapped compute nodes",
    )
    p.add_argument("--scale", required=True, help="tiny, small or paper")
    p.add_argument("--papers", default="all", help="'all' or comma-separated paper names")
    p.add_argument("--scale-file", help="a scale file other than config/scales/<scale>.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the list, download nothing")
    p.set_defaults(func=cmd_prefetch)
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        args.func(args)


if __name__ == "__main__":
    main()
