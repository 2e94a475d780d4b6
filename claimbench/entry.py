"""The command-line plumbing every training/evaluation entry point shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from claimbench.errors import exit_on_user_error


def add_run_options(ap: argparse.ArgumentParser, scale: str | None = "tiny") -> None:
    """``--seed``, ``--threads``, ``--device`` and (unless ``scale`` is None) ``--scale``."""
    if scale is not None:
        ap.add_argument("--scale", default=scale)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")


def run_entry(
    ap: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], None],
    argv: list[str] | None,
    errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError),
) -> None:
    """Parse ``argv`` and call ``run``; a user error (``errors``) exits 2 with one line."""
    args = ap.parse_args(argv)
    with exit_on_user_error(*errors):
        run(args)
