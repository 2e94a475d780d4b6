"""Screenshots of a rendered report for the README: ``docs/index.png`` and ``docs/paper.png``.

    python tools/screenshots.py [--reports reports] [--paper realign] [--out docs]

Run it after `make reproduce` (the full tiny report). It uses the same headless system Chromium
as the browser test (``tests/system.py``; ``playwright install`` is never used). Tests never
write into ``docs/``: the browser test takes its screenshots into a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reports", default=str(ROOT / "reports"))
    ap.add_argument("--paper", default="realign", help="the paper page to show (file <paper>.html)")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args(argv)
    reports, out = Path(args.reports), Path(args.out)
    pages = {"index.png": reports / "index.html", "paper.png": reports / f"{args.paper}.html"}
    for page in pages.values():
        if not page.is_file():
            print(
                f"screenshots: {page}: no such page (run `make reproduce` first)", file=sys.stderr
            )
            return 2
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from tests.system import CHROMIUM_ARGS, ensure_browser

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_browser(), args=CHROMIUM_ARGS)
        try:
            for name, page_path in pages.items():
                page = browser.new_page(viewport={"width": args.width, "height": 900})
                page.goto(page_path.resolve().as_uri())
                tmp = out / f".{name}.tmp.png"
                page.screenshot(path=str(tmp), full_page=False)
                tmp.replace(out / name)
                page.close()
                print(f"screenshot: {out / name}")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
