"""The README's table of verdict counts per paper and scale, from the published exports.

    python tools/verdict_table.py            # rewrite the table in README.md
    python tools/verdict_table.py --check    # exit 1 when README.md's table is stale

Each export under ``results/published/<scale>/`` is ingested, as a fresh clone's
``claimbench ingest`` would, into a temporary store with the claims of ``methods/``; the
verdicts are therefore those of the current checker, the ones the report shows. The table goes
between ``<!-- verdicts:begin -->`` and ``<!-- verdicts:end -->``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- verdicts:begin -->", "<!-- verdicts:end -->"
STATES = ("held", "failed", "inconclusive", "missing", "not attempted")


def table(published: Path, methods: Path) -> str:
    """The markdown between the markers (without them)."""
    import duckdb

    from claimbench.published import published_scales
    from claimbench.report.render import scale_key
    from claimbench.store import ingest

    scales = published_scales(published)
    if not scales:
        return (
            "No scale is published yet (`claimbench publish --scale S` writes "
            "`results/published/S/`); `make reproduce` computes the tiny scale here."
        )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "runs").mkdir()
        db = Path(tmp) / "store.duckdb"
        ingest(Path(tmp) / "runs", db, methods, published_dir=published)
        con = duckdb.connect(str(db), read_only=True)
        try:
            runs = dict(
                ((p, s), (k, src))
                for p, s, k, src in con.execute(
                    "SELECT paper, scale, count(*), any_value(source) FROM runs GROUP BY ALL"
                ).fetchall()
            )
            counts: dict[tuple[str, str], dict[str, int]] = {}
            for paper, scale, kind, status, k in con.execute(
                "SELECT paper, scale, coalesce(kind, 'paper'), status, count(*) "
                "FROM claim_checks GROUP BY ALL"
            ).fetchall():
                if scale not in scales:  # claims of other scales (e.g. not attempted rows)
                    continue
                c = counts.setdefault((paper, scale), {"pipeline": 0, "pipeline held": 0})
                if kind == "paper":
                    c[status] = c.get(status, 0) + k
                else:
                    c["pipeline"] += k
                    c["pipeline held"] += k if status == "held" else 0
        finally:
            con.close()
    head = ["paper", "scale", "source", "runs", *STATES, "pipeline checks held"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for paper, scale in sorted(counts, key=lambda k: (k[0], scale_key(k[1]))):
        c = counts[(paper, scale)]
        n, src = runs.get((paper, scale), (0, ""))
        cells = [paper, scale, src, str(n), *(str(c.get(s, 0)) for s in STATES)]
        cells.append(f"{c['pipeline held']}/{c['pipeline']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def splice(readme: str, body: str) -> str:
    """``readme`` with the text between the markers replaced by ``body``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise SystemExit(f"README.md: {BEGIN} and {END}: each must appear exactly once")
    before, rest = readme.split(BEGIN)
    _, after = rest.split(END)
    return f"{before}{BEGIN}\n{body}\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--published", type=Path, default=ROOT / "results" / "published")
    ap.add_argument("--methods", type=Path, default=ROOT / "methods")
    ap.add_argument("--check", action="store_true", help="exit 1 when the table is stale")
    args = ap.parse_args(argv)
    old = args.readme.read_text()
    new = splice(old, table(args.published, args.methods))
    if args.check:
        if new != old:
            print(f"{args.readme}: the verdict table is stale; run python tools/verdict_table.py")
            return 1
        return 0
    if new != old:
        from claimbench.io import atomic_write_text

        atomic_write_text(args.readme, new)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
