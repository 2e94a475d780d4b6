"""Periodic checkpoints of a training job and resumption after a kill.

A checkpoint is ``accelerate``'s own state folder (``Accelerator.save_state``: model, optimiser,
scheduler and every registered object, plus the RNG states of every process) written as
``<ckpt_dir>/step-<n>.tmp`` and renamed to ``<ckpt_dir>/step-<n>`` once complete, with a
``step.json`` inside (``{"step": n, **extra}``). A folder without ``step.json`` or still named
``*.tmp`` is never resumed from, so a job killed in the middle of a save resumes from the previous
checkpoint.

    from claimbench import checkpoint
    start = checkpoint.resume(accelerator, ckpt_dir)          # 0 when there is none
    for step in range(start, steps):
        ...
        if (step + 1) % every == 0:
            checkpoint.save(accelerator, ckpt_dir, step + 1, extra={"segments": segs})
    checkpoint.record_segment(meta, start, steps)            # meta["segments"] += one entry

``record_segment`` keeps a job's history in its ``meta.json``: one entry per process run that
trained (start step, end step, when it started, host, pid). A job saves its segments so far in
``extra`` so that the rerun that resumes knows the earlier ones (:func:`segments_of`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

from claimbench.io import atomic_write_json

STEP_FILE = "step.json"
_STEP_DIR = re.compile(r"^step-([0-9]+)$")
# When this process started training (approximately: when this module was imported).
_STARTED_AT = datetime.now(UTC).isoformat(timespec="seconds")


def _complete(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STEP_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(ckpt_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """The last complete checkpoint under ``ckpt_dir`` as ``(step, path)``, or None."""
    done = _complete(Path(ckpt_dir))
    return done[-1] if done else None


def read_step(path: str | os.PathLike) -> dict:
    """The ``step.json`` of a checkpoint folder (``{"step": n, **extra}``)."""
    return json.loads((Path(path) / STEP_FILE).read_text(encoding="utf-8"))


def segments_of(ckpt_dir: str | os.PathLike) -> list[dict]:
    """The segments recorded in the latest checkpoint's ``extra`` (empty when none)."""
    last = latest(ckpt_dir)
    return list(read_step(last[1]).get("segments", [])) if last else []


def _is_main(accelerator) -> bool:
    return bool(getattr(accelerator, "is_main_process", True))


def _barrier(accelerator) -> None:
    wait = getattr(accelerator, "wait_for_everyone", None)
    if wait is not None:
        wait()


def save(accelerator, ckpt_dir, step: int, *, keep: int = 2, extra: dict | None = None) -> Path:
    """Save the accelerator's state for ``step`` atomically; keep the last ``keep`` checkpoints.

    Every process must call it (each saves its RNG state; ZeRO-3 / FSDP save their shards)."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"checkpoint keep must be >= 1, got {keep}")
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step-{step}"
    tmp = ckpt_dir / f"step-{step}.tmp"
    if _is_main(accelerator):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(accelerator)
    accelerator.save_state(str(tmp))
    _barrier(accelerator)
    if _is_main(accelerator):
        atomic_write_json(tmp / STEP_FILE, {**(extra or {}), "step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        for _, old in _complete(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(accelerator)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resume(accelerator, ckpt_dir) -> int:
    """Load the latest complete checkpoint (model, optimiser, scheduler, RNG states) into
    ``accelerator``'s prepared objects; returns its step, or 0 when there is none."""
    last = latest(ckpt_dir)
    if last is None:
        return 0
    step, path = last
    accelerator.load_state(str(path))
    return step


def record_segment(meta: dict, start_step: int, end_step: int) -> None:
    """Append one training segment (this process's run) to ``meta["segments"]``."""
    if end_step < start_step:
        raise ValueError(f"segment ends before it starts: {start_step} -> {end_step}")
    meta.setdefault("segments", []).append(
        {
            "start_step": int(start_step),
            "end_step": int(end_step),
            "started_at": _STARTED_AT,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
    )
