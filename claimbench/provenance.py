"""Provenance captured with every run record and artifact: git sha, versions, host, device, time."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "lm_eval",
    "datasets",
    "tokenizers",
    "duckdb",
    "snakemake",
    "numpy",
    "claimbench",
)


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def git_state(cwd: str | os.PathLike | None = None) -> tuple[str, bool]:
    """(sha, dirty) of the repository holding claimbench; ("unknown", False) outside git."""
    cwd = str(cwd or _repo_root())
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        dist = name.replace("_", "-")
        try:
            versions[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def cpu_kind() -> str:
    """The CPU kind a run's numbers depend on: architecture, the vector ISA torch dispatches to,
    and the processor's model name (``x86_64 AVX512 Intel(R) Xeon(R) Processor``).

    On one CPU kind the same seed gives bit-identical numbers; another kind runs other kernels
    (MKL, oneDNN, ATen's vectorised loops), which changes training the way a new seed does
    (README, "Determinism"). Stored in every record's ``versions`` so stores can be compared
    knowingly (``tools/compare_stores.py``, ``claimbench verify``).
    """
    parts = [platform.machine() or "unknown"]
    try:
        import torch

        parts.append(str(torch.backends.cpu.get_cpu_capability()))
    except (ImportError, AttributeError):
        pass
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts.append(model or platform.processor() or "unknown model")
    return " ".join(" ".join(parts).split())


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return "cpu"


def capture(started_at: str | None = None, wall_s: float = 0.0) -> dict:
    sha, dirty = git_state()
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "started_at": started_at or now_iso(),
        "wall_s": round(float(wall_s), 3),
        "host": socket.gethostname(),
        "device": device_name(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "argv": sys.argv[:1],
        "versions": {**package_versions(), "cpu": cpu_kind()},
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@contextmanager
def timed():
    """``with timed() as t: ...`` then ``t["wall_s"]`` and ``t["started_at"]``."""
    t = {"started_at": now_iso(), "wall_s": 0.0}
    t0 = time.perf_counter()
    try:
        yield t
    finally:
        t["wall_s"] = time.perf_counter() - t0
