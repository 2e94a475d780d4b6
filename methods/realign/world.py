"""The realignment world's training traces with the check sentence after the answer
(README.md, "The check sentence"):

    python -m methods.realign.world --src data/<scale>/arith/train.jsonl --dest OUT.jsonl

The arithmetic world's long trace ends "... Check: 62 - 1 = 61. So the answer is 61." for add
and sub: the check's first number *is* the answer, so under teacher forcing "So the answer is N"
is learnt as a copy from the check, not as the sum of the column steps. Here every long trace
states the answer first and checks it afterwards ("... So the answer is 61. Check: 61 + 1 =
62."): the answer token is predicted from the column steps alone. Other fields, and rows
without a check sentence, are kept as they are. The output is written atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from claimbench.io import atomic_write_jsonl

_CHECK = re.compile(r" ?Check: [^.]*\.")
_ANSWER = re.compile(r" ?So the answer is -?\d+\.")


def check_after(long: str) -> str:
    """The trace with its check sentence moved behind the answer sentence (unchanged when it
    has no check sentence or no answer sentence)."""
    check, answer = _CHECK.search(long), _ANSWER.search(long)
    if check is None or answer is None or check.start() > answer.start():
        return long
    body = (long[: check.start()] + long[check.end() :]).rstrip()
    return f"{body} {check.group(0).strip()}"


def convert(rows: list[dict]) -> list[dict]:
    return [{**r, "long": check_after(r["long"])} if "long" in r else dict(r) for r in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="the arithmetic world's training problems")
    ap.add_argument("--dest", required=True, help="the converted problems (JSONL)")
    a = ap.parse_args(argv)
    src = Path(a.src)
    try:
        rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: --src {src}: cannot read problems ({e})", file=sys.stderr)
        raise SystemExit(2) from None
    atomic_write_jsonl(Path(a.dest), convert(rows))


if __name__ == "__main__":
    main()
