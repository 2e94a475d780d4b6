"""Remove a stale Snakemake lock, but only when no Snakemake run is still going in that folder.

``kill -9`` of a running workflow (or a lost SSH session, a power cut) leaves
``.snakemake/locks/`` behind, and the next run stops with "Directory cannot be locked". This
tool looks for a live Snakemake process working in the same folder, and for a job that a killed
Snakemake left running (its ``bash -c 'set -euo pipefail; ...'`` shell, still in the folder);
if there is none, it runs the given Snakemake command with ``--unlock``.

    python tools/snakemake_unlock.py [--quiet] -- snakemake --cores 2 reproduce_all --config ...

``make reproduce`` runs it with ``--quiet`` before the workflow and ``make unlock`` without.
Exit 0: nothing to do or unlocked; 2: a run is still going (its pid is printed). Processes are
read from ``/proc`` (Linux); elsewhere the tool says it cannot check and, for ``make unlock``,
unlocks (the user asked), while ``make reproduce`` leaves the lock to Snakemake's own message.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

PROG = "snakemake_unlock"
JOB_SHELL = "set -euo pipefail;"  # Snakemake's prefix of every shell job


def workdir_of(cmd: list[str], cwd: Path) -> Path:
    """The folder a Snakemake command line works in (``--directory``/``-d``, else ``cwd``)."""
    for i, arg in enumerate(cmd):
        if arg in ("--directory", "-d") and i + 1 < len(cmd):
            return (cwd / cmd[i + 1]).resolve()
        if arg.startswith("--directory="):
            return (cwd / arg.split("=", 1)[1]).resolve()
    return cwd.resolve()


def locks(workdir: Path) -> list[Path]:
    folder = workdir / ".snakemake" / "locks"
    return sorted(p for p in folder.glob("*.lock")) if folder.is_dir() else []


def running_in(workdir: Path) -> list[tuple[int, str]] | None:
    """(pid, command) of Snakemake processes and left-over Snakemake jobs working in
    ``workdir``; None where processes cannot be listed (no ``/proc``)."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").exists():
        return None
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), os.getppid()):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            argv = [a for a in argv if a]
            if not argv:
                continue
            text = " ".join(argv)
            is_snakemake = any(Path(a).name == "snakemake" for a in argv[:3])
            is_job = JOB_SHELL in text
            if not (is_snakemake or is_job):
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
        except PermissionError:
            if "snakemake" in text:  # another user's Snakemake: cannot tell where, assume here
                found.append((int(entry.name), text[:120]))
            continue
        where = workdir_of(argv, cwd) if is_snakemake else cwd.resolve()
        if where == workdir:
            found.append((int(entry.name), text[:120]))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--quiet", action="store_true", help="say nothing when there is no lock")
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        ap.error("give the Snakemake command after --")
    args = ap.parse_args(argv[: argv.index("--")])
    cmd = argv[argv.index("--") + 1 :]
    workdir = workdir_of(cmd, Path.cwd())
    found = locks(workdir)
    if not found:
        if not args.quiet:
            print(f"{PROG}: {workdir}: no Snakemake lock, nothing to do")
        return 0
    alive = running_in(workdir)
    if alive:
        pid, what = alive[0]
        print(
            f"error: {PROG}: {workdir}: a Snakemake run is still going here (pid {pid}: {what}); "
            f"wait for it or stop it (kill {pid}) first",
            file=sys.stderr,
        )
        return 2
    if alive is None:
        if args.quiet:
            return 0  # cannot check: leave it to Snakemake's own lock message
        print(f"{PROG}: cannot list processes on this system; unlocking as asked", file=sys.stderr)
    proc = subprocess.run([*cmd, "--unlock"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        print(f"error: {PROG}: {workdir}: snakemake --unlock failed: {tail}", file=sys.stderr)
        return 2
    files = f"{len(found)} lock file" + ("s" if len(found) != 1 else "")
    print(
        f"{PROG}: {workdir}: removed a stale Snakemake lock ({files}) left by a killed run; "
        "no Snakemake is running here",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
