"""The leaderboards in a real browser: headless Debian Chromium driven by the pip ``playwright``
package (launched as the system binary; ``playwright install`` is never used).

Pages are opened from disk (``file://``): the report of the shared reduced workflow run
(``reports/index.html`` and every paper page) and a report built from a store whose model output
holds ``<script>`` and an ``onerror`` image. Each page: no console error, no request other than
``file://``, sortable headers sort, shown numbers equal the store, every SVG plot has a
non-zero box; the hostile output shows as text and never runs. Screenshots of the index and of
a paper page are saved under ``reports/screenshots/`` (their paths are printed).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import pytest

from claimbench.report import render_report
from claimbench.report.render import page_name, value_text
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
    shot = tmp / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a rendered page, not an empty canvas
    out = root / "reports" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, out / name)
    print(f"\nscreenshot: {out / name}")
    return out / name


def test_workflow_report_in_browser(browser, reduced_run, root, tmp_path):
    assert reduced_run["proc"].returncode == 0, tail(reduced_run["proc"])
    reports = reduced_run["work"] / "reports"
    db = reduced_run["work"] / "results" / "claimbench.duckdb"
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
        rows = index.page.eval_on_selector_all(
            "#leaderboard-table tbody tr",
            "rows => rows.map(r => Array.from(r.children).map(c => c.textContent.trim()))",
        )
        assert len(rows) == len(store)
        for r in rows:  # every row: scale, paper, variant, method, base, task, metric, value, n
            metric = r[6].rstrip(" ↑↓")
            assert r[7] == store[(r[1], r[2], r[5], metric)], r
        screenshot(index.page, root, tmp_path, "index.png")
        check_sorting(index.page, "#leaderboard-table", "value")
        index.check_clean()
    finally:
        index.close()

    for paper in papers:
        page = Page(browser, reports / page_name(paper))
        try:
            cells = page.page.eval_on_selector_all(
                "table.results tbody tr",
                """rows => rows.flatMap(r => {
                    const heads = Array.from(r.closest('table').tHead.rows[0].cells);
                    return Array.from(r.children).slice(3).map((c, i) =>
                        [r.children[0].firstChild.textContent.trim(),
                         heads[i + 3].getAttribute('title'), c.textContent.trim()]);
                })""",
            )
            assert cells
            for variant, key, text in cells:
                task, metric = key.split(".", 1)
                assert text == store.get((paper, variant, task, metric), "–"), (variant, key)
            n_bars = len({c[1] for c in cells})
            check_plots(page.page, n_bars + n_series.get(paper, 0))
            if paper == papers[0]:
                screenshot(page.page, root, tmp_path, f"{paper}.png")
            check_sorting(page.page, "table.results", cells[0][1])
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
        for i in range(3)
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
