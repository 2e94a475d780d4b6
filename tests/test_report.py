"""The HTML report: numbers match the store, text is escaped, pages are offline and deterministic."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_jsonl
from claimbench.records import make_run_record, metric, series, write_run_record
from claimbench.report import render_report
from claimbench.report.render import _grouped_warnings, incomparable, value_text
from claimbench.report.svg import bar_chart, fmt_num, line_chart
from claimbench.store import ingest

XSS = "<script>alert(1)</script>"

PROVENANCE = {
    "git_sha": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": True,
    "started_at": "2025-01-01T00:00:00+00:00",
    "wall_s": 1.5,
    "host": "test",
    "device": "cpu",
    "versions": {
        "python": "3.11",
        "torch": "2.13.0",
        "transformers": "5.24.0",
        "lm_eval": "0.4.13",
    },
}

TOY_CLAIMS = """\
paper: toy
title: "Toy paper"
url: https://example.org/toy
summary: A toy paper <b>for tests</b>.
claims:
  - id: big_beats_small
    statement: The big model is more accurate than the small one.
    source: Table 1
    scales: [tiny]
    paper_value: {model: big, benchmark: arith, metric: acc, value: 0.8123456}
    check:
      compare:
        lhs: {variant: big, task: arith, metric: acc}
        op: ">"
        rhs: {variant: small, task: arith, metric: acc}
  - id: big_near_perfect
    statement: The big model is nearly perfect on arithmetic.
    source: Section 4
    scales: [tiny]
    check:
      threshold:
        ref: {variant: big, task: arith, metric: acc}
        op: ">"
        value: 0.9
  - id: paper_table_row
    statement: The paper reports 0.91 for the big model.
    source: Table 2
    scales: [paper]
    paper_value: {model: big, benchmark: arith, metric: acc, value: 0.91}
    check:
      within:
        ref: {variant: big, task: arith, metric: acc}
        value: 0.91
        tol_abs: 0.02
  - id: paper_row_not_attempted
    statement: The paper reports 0.97 with its 70B model.
    source: Table 2
    scales: [paper]
    paper_value: {model: 70b, benchmark: arith, metric: acc, value: 0.97}
    not_attempted: no 70B model at any scale of ours
  - id: small_only
    statement: At small scale the big model beats the small one.
    source: Table 3
    scales: [small]
  - id: small_model_trains
    kind: pipeline
    statement: The small model learns anything at all.
    scales: [tiny]
    check:
      threshold:
        ref: {variant: small, task: arith, metric: acc}
        op: ">"
        value: 0.1
"""

OTHER_CLAIMS = """\
paper: other
title: "A paper with claims but no runs"
claims:
  - id: something
    statement: Something holds.
    scales: [tiny]
    check:
      threshold:
        ref: {variant: x, task: arith, metric: acc}
        op: ">"
        value: 0.5
"""


def _run(runs: Path, variant: str, acc: float, bpb: float, arith_hash: str, response: str) -> None:
    samples = "lm_eval.samples.jsonl"
    folder = runs / "tiny" / "toy" / variant
    atomic_write_jsonl(
        folder / samples,
        [
            {
                "task": "arith",
                "doc_id": i,
                "prompt": f"Question: {i} + 1?\nAnswer:",
                "target": str(i + 1),
                "response": response if i == 0 else str(i + 1),
                "metrics": {"acc": float(i > 0)},
                "doc_hash": f"d{i}",
            }
            for i in range(7)
        ],
    )
    rec = make_run_record(
        scale="tiny",
        paper="toy",
        method="toy",
        variant=variant,
        base_model="lm-s",
        suite="lm_eval",
        tasks=["arith", "text"],
        seed=0,
        config={"variant": variant},
        metrics=[
            metric("arith", "acc", acc, stderr=0.05, n=7, higher_is_better=True),
            metric("text", "bits_per_byte", bpb, n=40, higher_is_better=False),
        ],
        provenance=PROVENANCE,
        task_hashes={"arith": arith_hash, "text": "t1"},
        samples=samples,
        series=[series("train_loss", [0, 10, 20], [3.0, 2.0, acc], "step", "loss")],
    )
    write_run_record(folder / "lm_eval.json", rec)


def build_store(tmp_path: Path, small_hash: str = "h1") -> Path:
    runs = tmp_path / "runs"
    _run(runs, "big", 0.75, 2.5, "h1", XSS)
    _run(runs, "small", 0.5, 3.125, small_hash, "7")
    for pkg, text in (("toy", TOY_CLAIMS), ("other", OTHER_CLAIMS)):
        (tmp_path / "methods" / pkg).mkdir(parents=True)
        (tmp_path / "methods" / pkg / "claims.yaml").write_text(text, encoding="utf-8")
    db = tmp_path / "store.duckdb"
    ingest(runs, db, tmp_path / "methods")
    return db


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[Path, list[Path]]:
    db = build_store(tmp_path)
    return db, render_report(db, tmp_path / "reports")


def _pages(paths: list[Path]) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in paths}


def test_pages_exist(rendered):
    _, paths = rendered
    assert [p.name for p in paths] == ["index.html", "other.html", "toy.html"]
    assert all(p.is_file() for p in paths)
    pages = _pages(paths)
    assert "<title>claimbench leaderboard</title>" in pages["index.html"]
    for page in pages.values():  # nav bar on every page
        assert 'href="index.html"' in page and 'href="toy.html"' in page
    assert 'href="other.html"' in pages["index.html"]
    assert "A paper with claims but no runs" in pages["other.html"]
    assert "No runs stored for this paper yet." in pages["other.html"]


def test_numbers_match_store(rendered):
    db, paths = rendered
    pages = _pages(paths)
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT value, stderr, n FROM leaderboard ORDER BY ALL").fetchall()
    con.close()
    assert len(rows) == 4
    for value, stderr, _ in rows:
        text = value_text(value, stderr)
        assert f">{text}</td>" in pages["toy.html"]
        assert f'data-sort="{float(value)!r}"' in pages["toy.html"]
    # the flat table of every metric lives on the paper pages, with seed and run columns
    assert (
        "all-results-table" in pages["toy.html"] and "all-results-table" not in pages["index.html"]
    )
    table = re.search(r'id="all-results-table">.*?</table>', pages["toy.html"], re.S).group(0)
    assert "<th>seed</th><th>run</th>" in table and table.count("<tr>") == 1 + 4
    assert 'class="filter" data-table="all-results-table"' in pages["toy.html"]
    assert ">0.75 ± 0.05</td>" in pages["toy.html"]
    assert ">3.125</td>" in pages["toy.html"]  # no stderr: value alone
    assert "text.bits_per_byte ↓" in pages["toy.html"]
    assert "arith.acc ↑" in pages["toy.html"]
    assert "0.8123" in pages["toy.html"] and "benchmark: arith" in pages["toy.html"]


def test_claim_verdicts(rendered):
    _, paths = rendered
    pages = _pages(paths)
    assert '<span class="badge held">held</span>' in pages["toy.html"]
    assert '<span class="badge failed">failed</span>' in pages["toy.html"]
    assert '<span class="badge missing">missing</span>' in pages["other.html"]
    assert '<span class="badge not-attempted">not attempted</span>' in pages["toy.html"]
    rows = re.findall(
        r'<a href="toy.html#verdicts-(\w+)">toy</a>(.*?)</tr>', pages["index.html"], re.S
    )
    counts = {scale: re.findall(r'data-sort="(\d+)"', row) for scale, row in rows}
    # runs, held, failed, inconclusive, missing, not attempted, pipeline checks: the pipeline
    # claim (held) is counted apart, never among the paper's held
    assert counts == {
        "tiny": ["2", "1", "1", "0", "0", "0", "1"],
        "paper": ["0", "0", "0", "0", "0", "1", "0"],
    }, counts
    assert ">1/1</td>" in rows[0][1]
    assert "0123456789" in pages["index.html"] and "(dirty)" in pages["index.html"]


def test_one_verdict_table_per_scale_and_pipeline_apart(rendered):
    """Each scale's table lists the paper's claims made there with paper value, ours ± z·se,
    verdict and power; pipeline checks are listed apart; a claim of a scale the store lacks
    is folded below."""
    _, paths = rendered
    page = _pages(paths)["toy.html"]
    tiny = re.search(r'id="verdicts-tiny-table">.*?</table>', page, re.S).group(0)
    paper = re.search(r'id="verdicts-paper-table">.*?</table>', page, re.S).group(0)
    assert "big_beats_small" in tiny and "small_model_trains" not in tiny
    assert "paper_table_row" not in tiny and "paper_table_row" in paper
    # ours for a compare: Δ 0.75 - 0.5 ± 1.96 · sqrt(2) · 0.05; MDE (1.96 + 0.8416) · 0.0707
    assert "Δ +0.25 ± 0.1386" in tiny and ">0.1981</td>" in tiny, tiny
    assert ">7</td>" in tiny  # n: the documents of the stored metric
    assert "no 70B model" in paper and "not run at this scale" in paper
    pipe = re.search(r'<ul class="pipeline" id="pipeline-tiny">.*?</ul>', page, re.S).group(0)
    assert "small_model_trains" in pipe and "big_beats_small" not in pipe
    folded = re.search(r'<details id="claims-unchecked">(.*?)</details>', page, re.S)
    assert folded and "small_only" in folded.group(1) and "big_beats_small" not in folded.group(1)
    assert page.index("verdicts-tiny-table") < page.index("claims-unchecked")


def test_text_is_escaped(rendered):
    _, paths = rendered
    pages = _pages(paths)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["toy.html"]
    assert "A toy paper &lt;b&gt;for tests&lt;/b&gt;." in pages["toy.html"]
    for page in pages.values():
        assert "<script>alert" not in page
        assert page.count("<script") == 1  # only the inline sort script
    assert '<div class="text">Question: 0 + 1?\nAnswer:</div>' in pages["toy.html"]


def test_offline(rendered):
    _, paths = rendered
    external = re.compile(
        r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", re.I
    )
    for page in _pages(paths).values():
        assert not external.search(page)
        assert "<link" not in page and "@import" not in page and "url(" not in page
        assert "<style>" in page


def test_svg_charts(rendered):
    _, paths = rendered
    page = _pages(paths)["toy.html"]
    assert page.count('<svg class="chart"') == 3  # two bar charts, one line chart
    assert "<polyline" in page and ">step</text>" in page and ">loss</text>" in page
    assert ">0.75</text>" in page  # bar values printed


def test_deterministic(tmp_path, rendered):
    db, paths = rendered
    first = {p.name: p.read_bytes() for p in paths}
    again = render_report(db, tmp_path / "again")
    assert {p.name: p.read_bytes() for p in again} == first
    render_report(db, paths[0].parent)
    assert {p.name: p.read_bytes() for p in paths} == first


def test_missing_db(tmp_path):
    missing = tmp_path / "nowhere" / "store.duckdb"
    with pytest.raises(ClaimbenchError, match=re.escape(str(missing))):
        render_report(missing, tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_not_comparable(tmp_path, rendered):
    assert "not comparable:" not in _pages(rendered[1])["toy.html"]
    db = build_store(tmp_path / "bad", small_hash="h2")
    pages = _pages(render_report(db, tmp_path / "bad" / "reports"))
    assert "not comparable: differing task hash" in pages["toy.html"]
    assert "not comparable" not in pages["index.html"]  # the flat table is on the paper pages


def test_stale_pages_removed(tmp_path, rendered):
    db, paths = rendered
    out = paths[0].parent
    (out / "gone.html").write_text(paths[1].read_text(encoding="utf-8"), encoding="utf-8")
    (out / "mine.html").write_text("<p>not generated</p>", encoding="utf-8")
    render_report(db, out)
    assert not (out / "gone.html").exists() and (out / "mine.html").exists()


def test_svg_helpers():
    assert fmt_num(0.123456) == "0.1235" and fmt_num(39198.17) == "39198" and fmt_num(None) == "–"
    svg = bar_chart("t<1>", ["a&b", "c"], [1.0, -0.5], [0.1, None], y_label="y<", x_label="x>")
    assert "a&amp;b" in svg and "t&lt;1&gt;" in svg and "y&lt;" in svg and "x&gt;" in svg
    assert bar_chart("empty", [], []) == ""
    assert "<circle" in line_chart("one point", [("r", [1.0], [2.0])])
    assert line_chart("none", [("r", [], [])]) == ""


def test_empty_store(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "methods").mkdir()
    db = tmp_path / "empty.duckdb"
    ingest(tmp_path / "runs", db, tmp_path / "methods")
    paths = render_report(db, tmp_path / "reports")
    assert [p.name for p in paths] == ["index.html"]
    page = paths[0].read_text(encoding="utf-8")
    assert "No runs or claim checks in the store yet." in page
    assert "<dt>runs</dt><dd>0</dd>" in page


def test_comparability_is_judged_per_metric():
    def row(variant, metric, n, task_hash="h"):
        return {
            "scale": "small",
            "task": "valid",
            "metric": metric,
            "n": n,
            "task_hash": task_hash,
            "harness_version": "1",
            "variant": variant,
        }

    # one task, two metrics counting different things: nothing to warn about
    ok = [
        row("a", "peak_accuracy", 200),
        row("b", "peak_accuracy", 200),
        row("a", "final_length", None),
        row("b", "final_length", None),
    ]
    assert incomparable(ok) == {}
    # the same metric measured on 800 problems in one run and 200 in another: flagged
    bad = ok + [row("start", "peak_accuracy", 800, task_hash=None)]
    assert incomparable(bad) == {("small", "valid", "peak_accuracy"): ["task hash", "n"]}


def test_warnings_grouped_per_task():
    bad = {
        ("small", "all", "mae"): ["n"],
        ("small", "all", "rounds"): ["n"],
        ("small", "valid", "acc"): ["task hash", "n"],
    }
    assert _grouped_warnings(bad) == [
        ("all · mae, rounds", "not comparable: differing n"),
        ("valid · acc", "not comparable: differing task hash / n"),
    ]
