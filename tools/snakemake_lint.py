"""Run `snakemake --lint` and fail on any lint except the one this project waives.

Waived: "Specify a conda environment or container for each rule". claimbench runs every rule
in one pinned virtual environment (no software-deployment-method in any profile),
so a per-rule conda file would document an environment nobody uses.

The text report is parsed because snakemake 9.27's CLI ignores `--lint json` (it calls
``lint()`` without the format).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

WAIVED = ("Specify a conda environment or container for each rule.",)


def main() -> int:
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(
        [os.path.join(bindir, "snakemake"), "--lint", "--cores", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    text = proc.stdout + proc.stderr
    if "Lints for" not in text and "Congratulations" not in text:
        print(text[-3000:], file=sys.stderr)
        print("snakemake --lint failed before linting", file=sys.stderr)
        return 1
    problems, where = [], "?"
    for line in text.splitlines():
        header = re.match(r"^Lints for (.+):$", line)
        if header:
            where = header.group(1)
            continue
        item = re.match(r"^\s+\* (.+?):$", line)
        if item and item.group(1) not in WAIVED:
            problems.append(f"{where}: {item.group(1)}")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"snakemake --lint: {len(problems)} lint(s) ({len(WAIVED)} kind waived, see {__file__})")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
