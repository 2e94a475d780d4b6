"""The leaderboards in a real browser: headless Debian Chromium driven by the pip ``playwright``
package (launched as the system binary; ``playwright install`` is never used).

Pages are opened from disk (``file://``): the report of the shared reduced workflow run
(``reports/index.html`` and every paper page), a report of a store with held, failed, not
attempted and pipeline claims, and one whose model output holds ``<script>`` and an ``onerror``
image. Each page: no console error, no request other than ``file://``, sortable headers sort,
shown numbers equal the store (the index's verdict counts per paper and scale, each paper's
verdict tables with paper value and verdict, its filterable table of every metric), every SVG
plot has a non-zero box; the hostile output shows as text and never runs. Screenshots of the
index and of a paper page are taken into the test's temporary folder (the README's images come
from ``tools/screenshots.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from claimbench.report import render_report
from claimbench.report.render import page_name, value_text
from claimbench.report.svg import fmt_num
from claimbench.store import ingest
from tests.helpers import tail, write_claims, write_record
from tests.system import CHROMIUM_ARGS, Unavailable, ensure_browser

pytestmark = pytest.mark.e2e

PAYLOAD = (
    "<script>window.__xss = 1; console.error('xss-ran')</script>"
    '<img src=x onerror="window.__xss = 2"><b>bold?</b>'
)
# A tag that would fetch something from outside the page (what the report must never hold).
EXTERNAL = re.compile(
    r"<(script|link|img|iframe|source|video|audio)\b[^>]*\b(src|href)=[\"']?(https?:)?//", re.I
)


@pytest.fixture(scope="module")
def browser():
    try:
        chromium = ensure_browser()
    except Unavailable as e:
        pytest.skip(str(e))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A page opened from disk, with everything it logged or tried to load."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.blocked: list[str] = []

        def route(r):
            url = r.request.url
            self.requests.append(url)
            if url.startswith("file://"):
                r.continue_()
            else:
                self.blocked.append(url)
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

        def dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()

        self.page.on("dialog", dialog)
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def check_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs
        assert self.blocked == [], f"external resources requested: {self.blocked}"
        assert self.requests and all(u.startswith("file://") for u in self.requests)

    def close(self) -> None:
        self.context.close()


def column(page, table: str, idx: int) -> list[str]:
    return page.eval_on_selector_all(
        f"{table} tbody tr", f"rows => rows.map(r => r.children[{idx}].getAttribute('data-sort'))"
    )


def check_sorting(page, table: str, header: str) -> None:
    """Click a numeric header twice: ascending by data-sort, then descending (empties last)."""
    ths = page.locator(f"{table} thead th")
    names = [t.strip() for t in ths.all_inner_texts()]
    idx = next(i for i, n in enumerate(names) if n.startswith(header))
    before = column(page, table, idx)
    nums = [float(v) for v in before if v not in (None, "")]
    assert len(nums) >= 2, f"{table}: too few rows to test sorting"
    ths.nth(idx).click()
    assert ths.nth(idx).get_attribute("aria-sort") == "ascending"
    after = [float(v) for v in column(page, table, idx) if v not in (None, "")]
    assert after == sorted(nums)
    ths.nth(idx).click()
    assert ths.nth(idx).get_attribute("aria-sort") == "descending"
    after = [float(v) for v in column(page, table, idx) if v not in (None, "")]
    assert after == sorted(nums, reverse=True)
    # A text column sorts too (by text, localeCompare).
    ths.nth(0).click()
    first = page.eval_on_selector_all(
        f"{table} tbody tr", "rows => rows.map(r => r.children[0].textContent.trim())"
    )
    assert first == sorted(first, key=lambda s: s.lower()) or len(set(first)) == 1


def check_plots(page, expected: int) -> None:
    boxes = page.eval_on_selector_all(
        "svg.chart",
        """svgs => svgs.map(s => {
            const b = s.getBoundingClientRect();
            const marks = s.querySelectorAll('rect, path, line, polyline, circle').length;
            return [b.width, b.height, marks];
        })""",
    )
    assert len(boxes) == expected
    for w, h, marks in boxes:
        assert w > 0 and h > 0 and marks > 0, boxes


def screenshot(page, root: Path, tmp: Path, name: str) -> Path:
    """A full-page screenshot into the test's temporary folder (never into the repository: the
    README's images ``docs/*.png`` come from `python tools/screenshots.py` on the full report)."""
    shot = tmp / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty canvas
    return shot


def rows_of(page, selector: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"{selector} tbody tr",
        "rows => rows.map(r => Array.from(r.children).map(c => c.textContent.trim()))",
    )


SOURCE_LABEL = re.compile(r"(computed here|published at \S+, \S+)$")


def check_index_summary(page, db: Path) -> None:
    """The index's verdict counts per paper and scale equal the store's, over the papers' own
    claims only (pipeline checks apart), and every row links to its paper's scale table."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        want: dict[tuple[str, str], dict[str, int]] = {}
        for paper, scale, kind, status, k in con.execute(
            "SELECT paper, scale, kind, status, count(*) FROM claim_checks GROUP BY ALL"
        ).fetchall():
            if kind == "paper":
                want.setdefault((paper, scale), {})[status] = k
    finally:
        con.close()
    heads = [t.strip(" \u2195") for t in page.locator("#claim-summary thead th").all_inner_texts()]
    shown = {}
    for r in rows_of(page, "#claim-summary"):
        counts = {h: int(v) for h, v in zip(heads[4:9], r[4:9], strict=True) if int(v)}
        # the scale cell: the scale, then where its numbers come from (a scale with runs)
        scale = SOURCE_LABEL.sub("", r[2])
        shown[(r[0], scale)] = counts
    for key, counts in want.items():
        assert shown.get(key) == counts, (key, shown.get(key), counts)
    hrefs = page.eval_on_selector_all(
        "#claim-summary tbody tr td:first-child a", "as => as.map(a => a.getAttribute('href'))"
    )
    assert hrefs and all(re.fullmatch(r"[\w.-]+\.html#verdicts-\w+", h) for h in hrefs), hrefs


def verdict_rows(page, selector: str) -> list[dict]:
    """Rows of a verdict table: claim id, paper value, ours, verdict badge, MDE, n (needed)."""
    return page.eval_on_selector_all(
        f"{selector} tbody tr",
        """rows => rows.map(r => ({
            claim: r.getAttribute('data-claim'),
            paper: r.children[2].firstChild.textContent.trim(),
            ours: r.children[3].textContent.trim(),
            verdict: r.children[4].querySelector('.badge').textContent.trim(),
            mde: r.children[5].textContent.trim(),
            n: r.children[6].textContent.trim(),
        }))""",
    )


def check_verdict_tables(page, db: Path, paper: str) -> int:
    """Each scale's table of the paper's claims: the paper value and the verdict as stored.
    Returns the number of rows checked."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        values = dict(
            con.execute(
                "SELECT claim_id, paper_value FROM claims WHERE paper = ?", [paper]
            ).fetchall()
        )
        status = {
            (c, s): st
            for c, s, st in con.execute(
                "SELECT claim_id, scale, status FROM claim_checks WHERE paper = ?", [paper]
            ).fetchall()
        }
    finally:
        con.close()
    tables = page.eval_on_selector_all("table.verdicts", "ts => ts.map(t => t.id)")
    n = 0
    for table in tables:
        scale = table.removeprefix("verdicts-").removesuffix("-table")
        for r in verdict_rows(page, f"#{table}"):
            pv = values[r["claim"]]
            assert r["paper"] == (fmt_num(pv) if pv is not None else "–"), r
            assert r["verdict"] == status.get((r["claim"], scale), "n/a"), (scale, r)
            n += 1
    return n


def check_all_results(page, store: dict) -> None:
    """The paper's flat table of every metric: each value as stored, and the filter box."""
    rows = page.eval_on_selector_all(
        "#all-results-table tbody tr",
        """rows => rows.map(r => [r.children[6].getAttribute('title'),
            ...Array.from(r.children).map(c => c.textContent.trim())])""",
    )
    assert rows
    for r in rows:  # run id, scale, variant, method, base, suite, seed, run, task, metric, value
        assert r[10] == store[(r[0], r[8].split("⚠")[0].strip(), r[9].rstrip(" ↑↓"))], r
    terms = [rows[0][7], rows[0][9].rstrip(" ↑↓")]  # the run shown and the metric
    box = page.locator("input.filter[data-table='all-results-table']")
    box.fill(" ".join(terms))
    visible = page.eval_on_selector_all(
        "#all-results-table tbody tr", "rows => rows.filter(r => !r.hidden).length"
    )
    want = sum(all(t.lower() in " ".join(r[1:]).lower() for t in terms) for r in rows)
    assert 1 <= visible == want <= len(rows)
    assert page.locator("#all-results-count").inner_text() == str(visible)
    box.fill("")
    assert page.eval_on_selector_all(
        "#all-results-table tbody tr", "rows => rows.filter(r => !r.hidden).length"
    ) == len(rows)


def check_report(browser, reports: Path, db: Path, root: Path, tmp_path: Path) -> None:
    """Every page of a report in the browser: clean, offline, numbers equal the store; the
    index summary and each paper's verdict tables and flat results table; screenshots of the
    index and of the first paper's page (into ``tmp_path``)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        papers = [
            r[0] for r in con.execute("SELECT DISTINCT paper FROM runs ORDER BY 1").fetchall()
        ]
        store = {
            (p, v, t, m): value_text(val, se)
            for p, v, t, m, val, se in con.execute(
                "SELECT paper, variant, task, metric, value, stderr FROM leaderboard"
            ).fetchall()
        }
        by_run = {
            (run, t, m): value_text(val, se)
            for run, t, m, val, se in con.execute(
                "SELECT run_id, task, metric, value, stderr FROM leaderboard"
            ).fetchall()
        }
        n_series = dict(
            con.execute(
                "SELECT r.paper, count(DISTINCT s.name) FROM series s JOIN runs r USING (run_id) "
                "GROUP BY 1"
            ).fetchall()
        )
    finally:
        con.close()
    assert papers and store

    for html in [reports / "index.html", *(reports / page_name(p) for p in papers)]:
        assert not EXTERNAL.search(html.read_text(encoding="utf-8")), html

    index = Page(browser, reports / "index.html")
    try:
        assert index.page.locator("#leaderboard-table").count() == 0  # moved to paper pages
        check_index_summary(index.page, db)
        screenshot(index.page, root, tmp_path, "index.png")
        if index.page.locator("#claim-summary tbody tr").count() >= 2:
            check_sorting(index.page, "#claim-summary", "runs")
        index.check_clean()
    finally:
        index.close()

    for paper in papers:
        page = Page(browser, reports / page_name(paper))
        try:
            check_verdict_tables(page.page, db, paper)
            cells = page.page.eval_on_selector_all(
                "table.results tbody tr",
                """rows => rows.flatMap(r => {
                    const heads = Array.from(r.closest('table').tHead.rows[0].cells);
                    return Array.from(r.children).slice(3).map((c, i) =>
                        [r.children[0].firstChild.textContent.trim(),
                         heads[i + 3].getAttribute('title'), c.textContent.trim()]);
                })""",
            )
            cells = [c for c in cells if c[1]]  # a paper's own tables carry no column keys
            assert cells
            for variant, key, text in cells:
                task, metric = key.split(".", 1)
                assert text == store.get((paper, variant, task, metric), "–"), (variant, key)
            n_bars = len({c[1] for c in cells})
            check_plots(page.page, n_bars + n_series.get(paper, 0))
            if paper == papers[0]:
                screenshot(page.page, root, tmp_path, "paper.png")
            check_all_results(page.page, by_run)
            check_sorting(page.page, "table.results", cells[0][1])
            page.check_clean()
        finally:
            page.close()


def test_workflow_report_in_browser(browser, reduced_run, root, tmp_path):
    assert reduced_run["proc"].returncode == 0, tail(reduced_run["proc"])
    work = reduced_run["work"]
    check_report(browser, work / "reports", work / "results" / "claimbench.duckdb", root, tmp_path)


def test_verdict_tables_and_summary_in_browser(browser, tmp_path):
    """A store with a held, a failed, a not-attempted and a pipeline claim: the index counts the
    paper's claims alone, the paper page shows paper value, ours ± z·se, verdict and power."""
    from tests.test_report import build_store

    db = build_store(tmp_path)
    render_report(db, tmp_path / "reports")
    index = Page(browser, tmp_path / "reports" / "index.html")
    try:
        check_index_summary(index.page, db)
        rows = {(r[0], r[2]): r for r in rows_of(index.page, "#claim-summary")}
        # a scale with runs says where its numbers come from
        assert rows[("toy", "tinycomputed here")][4:10] == ["1", "1", "0", "0", "0", "1/1"]
        assert rows[("toy", "paper")][4:9] == ["0", "0", "0", "0", "1"]
        index.page.click("a[href='toy.html#verdicts-paper']")
        index.page.wait_for_load_state("load")
        assert index.page.url.endswith("toy.html#verdicts-paper")
        index.check_clean()
    finally:
        index.close()
    page = Page(browser, tmp_path / "reports" / "toy.html")
    try:
        assert check_verdict_tables(page.page, db, "toy") == 4
        tiny = {r["claim"]: r for r in verdict_rows(page.page, "#verdicts-tiny-table")}
        big = tiny["big_beats_small"]
        assert big["paper"] == "0.8123" and big["ours"] == "Δ +0.25 ± 0.1386", big
        assert (big["verdict"], big["mde"], big["n"]) == ("held", "0.1981", "7"), big
        assert tiny["big_near_perfect"]["verdict"] == "failed"
        na = verdict_rows(page.page, "#verdicts-paper-table")
        assert [r["verdict"] for r in na] == ["n/a", "not attempted"], na
        assert page.page.locator("#pipeline-tiny li").count() == 1
        check_all_results(
            page.page,
            {
                (run, t, m): value_text(v, se)
                for run, t, m, v, se in duckdb.connect(str(db), read_only=True)
                .execute("SELECT run_id, task, metric, value, stderr FROM leaderboard")
                .fetchall()
            },
        )
        page.check_clean()
    finally:
        page.close()


def test_model_output_is_shown_as_text_and_never_runs(browser, tmp_path):
    runs, methods = tmp_path / "runs", tmp_path / "methods"
    samples = [
        {
            "task": "arith",
            "doc_id": i,
            "prompt": f"Question: {i}<br>?",
            "target": str(i),
            "response": PAYLOAD if i == 0 else str(i),
            "metrics": {"acc": float(i > 0)},
        }
        for i in range(100)
    ]
    for variant, acc in (("big", 0.75), ("small", 0.5)):
        write_record(runs, variant, [("arith", "acc", acc, 0.05)], paper="hostile", samples=samples)
    write_claims(methods, "hostile", [])
    db = tmp_path / "store.duckdb"
    ingest(runs, db, methods)
    render_report(db, tmp_path / "reports")

    page = Page(browser, tmp_path / "reports" / "hostile.html")
    try:
        responses = page.page.locator("table.samples tbody tr td:nth-child(4) .text")
        texts = responses.all_inner_texts()
        assert PAYLOAD in texts  # the literal markup, as text
        assert page.page.locator("table.samples tbody script").count() == 0
        assert page.page.locator("table.samples tbody img").count() == 0
        assert page.page.locator("table.samples tbody b").count() == 0
        assert page.page.evaluate("typeof window.__xss") == "undefined"
        assert "Question: 0<br>?" in page.page.locator("table.samples").first.inner_text()
        page.check_clean()  # no 'xss-ran' console error, no dialog, no request for 'x'
    finally:
        page.close()

    # Control: the same payload as live markup does run here, so the checks above can fail.
    ctl = Page(browser, tmp_path / "reports" / "hostile.html")
    try:
        ctl.page.set_content(f"<div>{PAYLOAD}</div>")
        ctl.page.wait_for_function("window.__xss !== undefined")
        assert any("xss-ran" in e for e in ctl.errors)
    finally:
        ctl.close()


def test_published_scale_in_browser(browser, tmp_path):
    """A fresh clone that holds only a published export (`claimbench publish`): the report shows
    that scale, labelled "published at <sha>, <date>" on the index and the paper page, with the
    same verdict counts as the store it was published from."""
    from claimbench.published import publish, source_label
    from tests.test_report import build_store

    db = build_store(tmp_path / "origin")
    manifest = publish("tiny", db, tmp_path / "published")
    clone = tmp_path / "clone"
    (clone / "runs").mkdir(parents=True)
    fresh = clone / "store.duckdb"
    ingest(
        clone / "runs", fresh, tmp_path / "origin" / "methods", published_dir=tmp_path / "published"
    )
    render_report(fresh, clone / "reports")
    label = source_label(manifest)
    index = Page(browser, clone / "reports" / "index.html")
    try:
        check_index_summary(index.page, fresh)
        scales = [r[2] for r in rows_of(index.page, "#claim-summary") if r[0] == "toy"]
        assert f"tiny{label}" in scales and not any("computed here" in s for s in scales)
        index.check_clean()
    finally:
        index.close()
    page = Page(browser, clone / "reports" / "toy.html")
    try:
        heading = page.page.locator("#verdicts-tiny").inner_text()
        assert heading.startswith("Scale tiny") and label in heading
        check_verdict_tables(page.page, fresh, "toy")
        page.check_clean()
    finally:
        page.close()
