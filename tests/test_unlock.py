"""Recovery after ``kill -9`` of a running workflow: the stale lock is removed only when no
Snakemake run or job is still going in the folder (``make unlock``; ``make reproduce`` first)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.snakemake_unlock import locks, running_in

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = """
rule all:
    output:
        "out.txt",
    params:
        wait=config.get("wait", 0),
    shell:
        "sleep {params.wait}; echo done > {output}"
"""


def unlock(*snakemake: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools" / "snakemake_unlock.py"), "--", *snakemake]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc (Linux)")
def test_kill_9_then_unlock_only_when_nothing_runs_then_the_workflow_runs(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    snakemake = str(Path(sys.executable).parent / "snakemake")
    run = [
        snakemake,
        "--cores",
        "1",
        "--directory",
        str(tmp_path),
        "-s",
        str(tmp_path / "Snakefile"),
    ]
    assert "nothing to do" in unlock(*run).stdout  # no lock yet

    sm = subprocess.Popen(
        [*run, "--config", "wait=60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the test can end it and its job
    )
    try:
        deadline = time.monotonic() + 60
        while not (locks(tmp_path) and len(running_in(tmp_path.resolve()) or []) >= 2):
            assert time.monotonic() < deadline and sm.poll() is None, "the run did not start"
            time.sleep(0.2)
        proc = unlock(*run)  # the run is going: refused
        assert proc.returncode == 2 and "a Snakemake run is still going" in proc.stderr
        os.kill(sm.pid, signal.SIGKILL)  # kill -9: the lock stays, its job goes on
        sm.wait()
        assert locks(tmp_path)
        proc = subprocess.run([*run, "--config", "wait=0"], capture_output=True, text=True)
        assert proc.returncode != 0 and "cannot be locked" in proc.stderr
        proc = unlock(*run)  # the orphaned job still writes here: refused
        assert proc.returncode == 2 and "set -euo pipefail" in proc.stderr, proc.stderr
        os.killpg(sm.pid, signal.SIGKILL)  # end the job the killed run left
        deadline = time.monotonic() + 30
        while running_in(tmp_path.resolve()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        try:
            os.killpg(sm.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc = unlock(*run)
    assert proc.returncode == 0 and "removed a stale Snakemake lock" in proc.stderr, proc.stderr
    assert not locks(tmp_path)
    proc = subprocess.run([*run, "--config", "wait=0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.txt").read_text() == "done\n"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_unlock_and_make_reproduce_use_it():
    proc = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "unlock", "reproduce"], capture_output=True, text=True
    )
    lines = [line for line in proc.stdout.splitlines() if "snakemake" in line]
    tool = "tools/snakemake_unlock.py"
    assert lines[0].startswith(".venv/bin/python " + tool + " -- ") and "reproduce_all" in lines[0]
    assert lines[1].startswith(f".venv/bin/python {tool} --quiet -- ")
    assert lines[2] == lines[1].split(" -- ", 1)[1]  # then the workflow, the same command
