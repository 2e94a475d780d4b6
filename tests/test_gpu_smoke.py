"""``make gpu-smoke``: the paper-scale code path on micro models (here on CPU, marked slow)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


def _smoke(root, *args):
    return subprocess.run(
        [sys.executable, str(root / "tools" / "gpu_smoke.py"), *args],
        cwd=root,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cpu", "--only", "core,bogus"], "--only: unknown areas ['bogus']"),
        pytest.param(
            ["--device", "cuda", "--only", "core"],
            "--device cuda: torch sees no GPU on this machine",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_gpu_smoke_refuses_bad_options(root, args, message):
    proc = _smoke(root, *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_gpu_smoke_runs_on_cpu(root):
    """The whole smoke run on CPU in bf16: every area ok, inside the 8-minute budget."""
    proc = _smoke(root, "--device", "cpu", "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[FAIL]" not in proc.stdout
    for area in ("core", "quant", "eval", "pig", "mi_steer", "omniflow", "engine", "mtp_d"):
        assert f"[ok]   {area}" in proc.stdout, area
