"""Compare every metric of two stores (refactor safety): ``python tools/compare_stores.py A B``.

Rows are matched by what a metric *is* (scale, paper, method, variant, suite, task, metric,
seed), not by run id, so a change of config keys (run ids hash the config) still compares.
Prints the metrics only one store has, and every value, stderr or n that differs (exactly: the
same seed and scale must give the same numbers on CPU). ``--skip-suite`` leaves out wall-clock
suites, whose timings differ from run to run. Then every claim whose verdict differs, and the
CPU kinds the two stores' runs recorded when they differ (numbers are bit-identical only on the
same CPU kind; README, "Determinism"). Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import sys

import duckdb

KEY = ("scale", "paper", "method", "variant", "suite", "task", "metric", "seed")


def _rows(db: str, sql: str) -> list[tuple]:
    """All rows of one query on a store opened read-only."""
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def metrics(db: str, skip: set[str]) -> dict[tuple, tuple]:
    rows = _rows(
        db,
        "SELECT r.scale, r.paper, r.method, r.variant, r.suite, m.task, m.metric, r.seed, "
        "m.value, m.stderr, m.n FROM metrics m JOIN runs r USING (run_id)",
    )
    return {row[:8]: row[8:] for row in rows if row[4] not in skip}


def cpu_kinds(db: str) -> list[str]:
    """The CPU kinds the store's runs recorded (``versions.cpu``; "not recorded" before it was)."""
    sql = (
        "SELECT DISTINCT coalesce(json_extract_string(versions, '$.cpu'), 'not recorded') "
        "FROM runs ORDER BY 1"
    )
    return [r[0] for r in _rows(db, sql)]


def verdicts(db: str) -> dict[tuple, str]:
    rows = _rows(db, "SELECT scale, paper, claim_id, kind, status FROM claim_checks")
    return {r[:4]: r[4] for r in rows}


def compare_verdicts(a: str, b: str) -> list[str]:
    va, vb = verdicts(a), verdicts(b)
    return [
        f"verdict: {'/'.join(key)}: {va.get(key, '(none)')} -> {vb.get(key, '(none)')}"
        for key in sorted(set(va) | set(vb))
        if va.get(key) != vb.get(key)
    ]


def compare(a: str, b: str, skip: set[str]) -> list[str]:
    ma, mb = metrics(a, skip), metrics(b, skip)
    lines = []
    for key in sorted(set(ma) - set(mb), key=str):
        lines.append(f"only in {a}: {'/'.join(map(str, key))} = {ma[key][0]!r}")
    for key in sorted(set(mb) - set(ma), key=str):
        lines.append(f"only in {b}: {'/'.join(map(str, key))} = {mb[key][0]!r}")
    for key in sorted(set(ma) & set(mb), key=str):
        if ma[key] != mb[key]:
            lines.append(
                f"differs: {'/'.join(map(str, key))}: (value, stderr, n) {ma[key]!r} -> {mb[key]!r}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--skip-suite", action="append", default=[], help="a wall-clock suite")
    args = ap.parse_args(argv)
    ka, kb = cpu_kinds(args.before), cpu_kinds(args.after)
    if ka != kb:
        print(f"note: CPU kinds differ: {args.before}: {ka}; {args.after}: {kb}")
    lines = compare(args.before, args.after, set(args.skip_suite))
    n = len(metrics(args.before, set(args.skip_suite)))
    changed = compare_verdicts(args.before, args.after)
    for line in [*lines, *changed]:
        print(line)
    print(
        f"{len(lines)} differences over {n} metrics of {args.before}; "
        f"{len(changed)} of {len(verdicts(args.before))} claim verdicts differ"
    )
    return 1 if lines or changed else 0


if __name__ == "__main__":
    sys.exit(main())
