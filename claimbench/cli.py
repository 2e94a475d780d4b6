"""The ``claimbench`` command line: ingest, query, claims, report, ls, fetch, prefetch, publish,
verify.

Every user error (bad file, bad key, bad value, an unknown paper or scale, a store that is not
a DuckDB file, a read-only folder, a full disk) prints one line ``error: claimbench <command>:
<file>: <what>`` and exits 2; Ctrl-C exits 130. Values reach SQL as parameters, never as text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from claimbench.errors import ClaimbenchError, exit_on_error

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

    counts = ingest(args.runs, args.db, args.methods, z=args.z, published_dir=args.published)
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


def known_scales() -> list[str]:
    """The scales a user can name: one file per scale in ``config/scales/``."""
    from claimbench.config import CONFIG_DIR

    return sorted(p.stem for p in (CONFIG_DIR / "scales").glob("*.yaml"))


def known_papers(db: str, methods: str | None) -> list[str]:
    """Papers in the store (ingested claims files and run records) and ``methods/*/claims.yaml``."""
    from claimbench.config import read_yaml
    from claimbench.store import query

    names = {
        row[0]
        for row in query(
            db,
            "SELECT paper FROM papers UNION SELECT paper FROM runs UNION SELECT paper FROM claims",
        )[1]
    }
    if methods and Path(methods).is_dir():
        for path in Path(methods).glob("*/claims.yaml"):
            try:
                data = read_yaml(path)
            except Exception:  # a broken claims file is ingest's to report, not a filter's
                continue
            if isinstance(data, dict) and isinstance(data.get("paper"), str):
                names.add(data["paper"])
    return sorted(names)


def _filters(args) -> tuple[list[str], list[str]]:
    """WHERE clauses and their parameters for --paper / --scale, refusing unknown values."""
    where, params = [], []
    if args.scale is not None:
        scales = known_scales()
        if args.scale not in scales:
            raise ClaimbenchError(
                f"--scale: {args.scale!r} is not a known scale (config/scales/: "
                f"{', '.join(scales)})"
            )
        where.append("scale = ?")
        params.append(args.scale)
    if args.paper is not None:
        papers = known_papers(args.db, args.methods)
        if args.paper not in papers:
            raise ClaimbenchError(
                f"--paper: {args.paper!r} is not a known paper (known: {', '.join(papers)})"
            )
        where.append("paper = ?")
        params.append(args.paper)
    return where, params


def cmd_claims(args) -> None:
    from claimbench.store import query

    where, params = _filters(args)
    sql = "SELECT scale, paper, claim_id, status, detail FROM claim_summary"
    sql += " WHERE " + " AND ".join(["scale IS NOT NULL", *where])
    sql += " ORDER BY paper, claim_id, scale"
    cols, rows = query(args.db, sql, params)
    print(_table(cols, rows, max_width=90))
    held = sum(1 for r in rows if r[3] == "held")
    failed = sum(1 for r in rows if r[3] == "failed")
    missing = sum(1 for r in rows if r[3] == "missing")
    print(f"\n{held} held, {failed} failed, {missing} missing")


def cmd_report(args) -> None:
    from claimbench.report import render_report

    if not Path(args.methods).is_dir():
        raise ClaimbenchError(
            f"--methods: {args.methods!r} is not a folder (the paper packages, default: methods)"
        )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ClaimbenchError(f"--out: {args.out!r} is a file, not the report folder")
    pages = render_report(args.db, args.out, args.methods)
    print(f"wrote {len(pages)} pages: {Path(args.out) / 'index.html'}")


def cmd_ls(args) -> None:
    from claimbench.store import connect_read_only, query

    if args.what == "papers":
        from claimbench.config import known_papers as papers_in_methods

        for name, folder in papers_in_methods().items():
            print(f"{name}\t{folder}")
        return
    connect_read_only(args.db).close()  # a missing or broken store before the filters
    where, params = _filters(args)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    if args.what == "runs":
        sql = (
            "SELECT scale, paper, variant, suite, seed, wall_s, git_sha[:10] AS git "
            f"FROM runs {clause}ORDER BY scale, paper, variant, suite"
        )
    else:
        sql = (
            "SELECT scale, paper, variant, task, metric, value, stderr, n FROM leaderboard "
            f"{clause}ORDER BY scale, paper, variant, task, metric"
        )
    cols, rows = query(args.db, sql, params)
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


def cmd_publish(args) -> None:
    from claimbench.published import publish

    m = publish(args.scale, args.db, args.out)
    print(
        f"{Path(args.out) / args.scale}: "
        + ", ".join(f"{t} {i['rows']}" for t, i in m["tables"].items())
        + f"; {m['bytes_total'] / 1e6:.2f} MB; content {m['content_hash'][:16]}"
    )
    for item in m["left_out"]:
        print(f"left out: {item['what']}: {item['why']}")


def cmd_verify(args) -> None:
    from claimbench.published import verify

    config = (f"scale_file={args.scale_file}",) if args.scale_file else ()
    rc = verify(
        args.scale,
        args.published,
        k=args.runs,
        run_id=args.run,
        seed=args.seed,
        dry_run=args.dry_run,
        cores=args.cores,
        workdir=args.directory,
        snakefile=args.snakefile,
        config=config,
    )
    if rc:
        raise SystemExit(rc)


class _Parser(argparse.ArgumentParser):
    """Bad usage is one line too (argparse prints the usage block and the error)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paper", help="one paper (a name from methods/*/claims.yaml or the store)")
    p.add_argument("--scale", help="one scale (a file in config/scales/)")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--methods", default="methods", help="folder of the paper packages")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="claimbench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("ingest", help="rebuild the DuckDB store from run records and claims")
    p.add_argument("--runs", default="results/runs")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--methods", default="methods")
    p.add_argument(
        "--z", type=float, default=1.96, help="standard errors a strict claim must clear"
    )
    p.add_argument(
        "--published",
        default="results/published",
        help="published exports; a scale without local records is loaded from there",
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("query", help="run a read-only SQL query on the store")
    p.add_argument("sql")
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("claims", help="claim verdicts (held / failed / missing) per scale")
    _add_filters(p)
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
    _add_filters(p)
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

    p = sub.add_parser(
        "publish", help="export one scale of the store to results/published/<scale>/ (Parquet)"
    )
    p.add_argument("--scale", required=True)
    p.add_argument("--db", default=DEFAULT_DB)
    p.add_argument("--out", default="results/published")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "verify",
        help="re-run published runs through the workflow and compare every metric (exit 1 when "
        "one differs)",
    )
    p.add_argument("--scale", required=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--runs", type=int, default=3, help="how many random published runs")
    which.add_argument("--run", help="one published run id")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice")
    p.add_argument("--dry-run", action="store_true", help="list targets and time, run nothing")
    p.add_argument("--published", default="results/published")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--directory", default=".", help="the workflow's working folder")
    p.add_argument("--snakefile", help="default: the Snakefile of the working folder")
    p.add_argument(
        "--scale-file", help="the scale file the published runs used, if not the default"
    )
    p.set_defaults(func=cmd_verify)
    return ap


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    with exit_on_error(f"claimbench {args.cmd}", getattr(args, "db", None)):
        args.func(args)


if __name__ == "__main__":
    main()
