"""Checkpoint and resume of a training job (claimbench/checkpoint.py, the engine's loops).

A micro SFT job (a subprocess) is killed with SIGKILL after its first checkpoint; the rerun
continues from that checkpoint, records both segments, and ends with exactly the weights of an
uninterrupted run. Run as a script it is the job (``python tests/test_resume.py OUT DELAY``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from claimbench import checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 6, 2


class _Acc:
    """The two calls of ``accelerate.Accelerator`` that checkpoint.py uses, one process."""

    is_main_process = True

    def __init__(self):
        self.saved = []

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path, "state.bin").write_text("x")
        self.saved.append(path)

    def load_state(self, path):
        self.loaded = path


def test_latest_ignores_partial_checkpoints(tmp_path):
    acc = _Acc()
    assert checkpoint.latest(tmp_path / "none") is None
    assert checkpoint.resume(acc, tmp_path) == 0
    for s in (2, 4, 6):
        checkpoint.save(acc, tmp_path, s, keep=2, extra={"segments": [{"start_step": 0}]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4", "step-6"]  # keep=2
    (tmp_path / "step-8.tmp").mkdir()  # killed during a save
    (tmp_path / "step-9").mkdir()  # renamed by hand, no step.json
    assert checkpoint.latest(tmp_path) == (6, tmp_path / "step-6")
    assert checkpoint.resume(acc, tmp_path) == 6 and acc.loaded.endswith("step-6")
    assert checkpoint.read_step(tmp_path / "step-6") == {"step": 6, "segments": [{"start_step": 0}]}
    assert checkpoint.segments_of(tmp_path) == [{"start_step": 0}]
    meta = {}
    checkpoint.record_segment(meta, 0, 4)
    checkpoint.record_segment(meta, 4, 6)
    assert [(s["start_step"], s["end_step"]) for s in meta["segments"]] == [(0, 4), (4, 6)]
    assert {"started_at", "host", "pid"} <= set(meta["segments"][0])
    with pytest.raises(ValueError, match="ends before"):
        checkpoint.record_segment(meta, 5, 4)


def _job(out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(Path(__file__)), str(out), str(delay)]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> None:
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]


@pytest.mark.slow  # three micro training jobs in subprocesses: ~20 s CPU, ~60 s on a busy machine
def test_killed_job_resumes_from_checkpoint(tmp_path):
    from claimbench.micro import micro_lm

    micro_lm(tmp_path / "model", arch="qwen2", seed=0)
    full, cut = tmp_path / "full", tmp_path / "cut"
    for d in (full, cut):
        d.mkdir()
        (d / "model").symlink_to(tmp_path / "model")

    proc = _job(cut, delay=1.0)
    deadline = time.time() + 240
    while checkpoint.latest(cut / "ckpt") is None:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (cut / "weights.pt").exists()
    first = checkpoint.latest(cut / "ckpt")[0]
    assert EVERY <= first < STEPS

    _finish(_job(cut, delay=0.0))  # the rerun
    _finish(_job(full, delay=0.0))  # uninterrupted

    res = json.loads((cut / "result.json").read_text())
    segs = res["segments"]
    assert [(s["start_step"], s["end_step"]) for s in segs] == [(0, first), (first, STEPS)]
    assert segs[0]["pid"] != segs[1]["pid"]
    # the rerun trained steps first+1..STEPS only; its rows include the first segment's
    assert res["logged"] == list(range(first + 1, STEPS + 1))  # continued, not restarted
    assert res["steps"] == list(range(1, STEPS + 1))
    ref = json.loads((full / "result.json").read_text())
    assert [(s["start_step"], s["end_step"]) for s in ref["segments"]] == [(0, STEPS)]
    assert res["losses"] == ref["losses"]
    a, b = (torch.load(p / "weights.pt", weights_only=True) for p in (cut, full))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    from safetensors.torch import load_file

    start = load_file(tmp_path / "model" / "model.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in start if k in a), "training did nothing"


if __name__ == "__main__":  # the micro training job
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from methods.posttrain.loops import SFTObjective, train_demos

    out, delay = Path(sys.argv[1]), float(sys.argv[2])
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out / "model")
    prompts = [f"Problem {i}: what is {i} plus {i}?" for i in range(10)]
    comps = [f" The answer is {2 * i}." for i in range(10)]
    meta: dict = {}
    logged: list[int] = []

    def log(row):
        logged.append(row["step"])
        time.sleep(delay)

    rows = train_demos(
        model,
        tok,
        prompts,
        comps,
        SFTObjective(),
        steps=STEPS,
        minibatch=4,
        lr=1e-2,
        warmup_steps=3,
        seed=5,
        engine={"kind": "accelerate", "micro_batch": 2, "checkpoint_every": EVERY},
        ckpt_dir=out / "ckpt",
        meta=meta,
        log=log,
    )
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "weights.pt")
    result = {
        "segments": meta["segments"],
        "steps": [r["step"] for r in rows],
        "logged": logged,
        "losses": [r["loss"] for r in rows],
    }
    (out / "result.json").write_text(json.dumps(result))
