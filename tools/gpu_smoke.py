"""``make gpu-smoke``: the paper scale's code path, end to end, on one device in minutes.

Runs, on micro models built offline in the real architectures (``claimbench.micro``: Llama,
Qwen2, Qwen3, CLIP), the functions the paper-scale jobs call:

- core: the job layer resolves the paper scale's device and dtype; bf16 loads of each LM
  architecture; bf16 logits against float32; greedy generation;
- one ``gpu_smoke(device, dtype, workdir)`` per area (quantization, evaluation and perplexity,
  PIG towers, interpretability hooks and steering, OMNIFLOW's HF backend), each in its own module.

Every area prints its lines; a failing area prints one line with its error and the run goes on;
the exit code is 1 if any area failed. ``--only quant,eval`` runs a subset.

    python tools/gpu_smoke.py --device cuda          # on a GPU node (make gpu-smoke)
    python tools/gpu_smoke.py --device cpu           # here (make gpu-smoke DEVICE=cpu)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

# area -> module holding its gpu_smoke(device, dtype, workdir) -> list[str]
AREAS = {
    "quant": "methods.quant.smoke",
    "eval": "benchmarks.smoke",
    "pig": "methods.pig.smoke",
    "mi_steer": "methods.mi_steer.smoke",
    "omniflow": "methods.omniflow.smoke",
    "engine": "methods.posttrain.smoke",
    "mtp_d": "methods.mtp_d.smoke",
}
BUDGET_S = 8 * 60


def _peak(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return ""


def core_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    """The job layer on the paper scale, and bf16 loads of each LM architecture."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from claimbench.job import job_from_args, job_parser
    from claimbench.micro import micro_lm

    ap = job_parser("smoke")
    args = ap.parse_args(
        ["--scale", "paper", "--paper", "mtp_d", "--variant", "smoke", "--out", str(workdir / "o")]
        + ["--device", device, "--dtype", dtype]
    )
    job = job_from_args(args)
    assert job.device == device and job.dtype == dtype, (job.device, job.dtype)
    lines = [f"core: paper-scale job resolves device {job.device}, dtype {job.dtype}"]
    for arch in ("llama", "qwen2", "qwen3"):
        t0 = time.perf_counter()
        path = micro_lm(workdir / arch, arch=arch)
        tok = AutoTokenizer.from_pretrained(path)
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        model = AutoModelForCausalLM.from_pretrained(path, **job.load_kwargs())
        model = job.to(model).eval()
        dtypes = {p.dtype for p in model.parameters()}
        assert dtypes == {job.torch_dtype}, f"{arch}: parameters in {dtypes}"
        enc = tok.apply_chat_template(
            [{"role": "user", "content": "what is 2 plus 3?"}],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )
        ids = enc["input_ids"].to(device)
        with torch.no_grad():
            lo = model(ids).logits.float()
            lr = ref(ids).logits
            err = ((lo - lr).abs().max() / lr.abs().max()).item()
            gen = model.generate(ids, max_new_tokens=8, do_sample=False)
        assert torch.isfinite(lo).all(), f"{arch}: non-finite logits"
        assert err < 0.05, f"{arch}: bf16 logits differ from float32 by {err:.3f} (relative)"
        assert gen.shape[1] > ids.shape[1], f"{arch}: generate returned no tokens"
        lines.append(
            f"core: {arch} {type(model).__name__} {dtype} on {device}: logits vs float32 "
            f"rel. err {err:.4f}, generated {gen.shape[1] - ids.shape[1]} tokens, "
            f"{time.perf_counter() - t0:.1f} s{_peak(device)}"
        )
    return lines


def run(device: str, dtype: str, only: list[str] | None) -> int:
    import torch

    from claimbench.job import resolve_device

    device = resolve_device(device)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "-"
    print(
        f"gpu-smoke: torch {torch.__version__} (CUDA build {torch.version.cuda or 'no'}), "
        f"device {device} ({gpu}), dtype {dtype}",
        flush=True,
    )
    areas = {"core": core_smoke}
    for name, module in AREAS.items():
        areas[name] = module
    failed: list[str] = []
    t_all = time.perf_counter()
    for name, target in areas.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            fn = target if callable(target) else importlib.import_module(target).gpu_smoke
            with tempfile.TemporaryDirectory(prefix=f"smoke-{name}-") as tmp:
                lines = fn(device, dtype, Path(tmp))
            for line in lines:
                print(f"  {line}", flush=True)
            print(f"[ok]   {name} ({time.perf_counter() - t0:.1f} s{_peak(device)})", flush=True)
        except Exception as exc:  # one area's failure must not hide the others'
            failed.append(name)
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(
                f"[FAIL] {name}: {type(exc).__name__}: {exc} "
                f"({Path(where.filename).name}:{where.lineno})",
                flush=True,
            )
    total = time.perf_counter() - t_all
    over = total > BUDGET_S
    print(
        f"gpu-smoke: {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
        f"{total:.0f} s{' (over the 8-minute budget)' if over else ''}"
    )
    return 1 if failed or over else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=os.environ.get("DEVICE", "cuda"))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--only", default="", help="comma-separated areas (core," + ",".join(AREAS))
    args = ap.parse_args(argv)
    only = [a for a in args.only.split(",") if a]
    unknown = set(only) - {"core", *AREAS}
    if unknown:
        print(f"gpu-smoke: --only: unknown areas {sorted(unknown)}", file=sys.stderr)
        return 2
    from claimbench.errors import ClaimbenchError

    try:
        return run(args.device, args.dtype, only)
    except ClaimbenchError as exc:
        print(f"gpu-smoke: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
