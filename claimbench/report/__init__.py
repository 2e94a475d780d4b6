"""The HTML leaderboard: self-contained, deterministic pages rendered from the DuckDB store.

``render_report(db_path, out_dir, methods_dir)`` writes ``index.html`` and one
``<paper>.html`` per paper with runs or claim checks. A paper shapes its own page without
touching this package: ``methods/<package>/report.html.j2`` (found by convention) extends
``paper.html.j2`` and overrides ``{% block extra %}``; it receives the same view model as the
generic page. The core names no paper.
"""

from __future__ import annotations

from claimbench.report.render import page_name, render_report

__all__ = ["page_name", "render_report"]
