"""GPU smoke run of the quantization papers' paper-scale code path (``make gpu-smoke``).

On a micro Llama (``claimbench.micro``, the real ``LlamaForCausalLM`` class) and through the
same entry points the paper-scale jobs call: GPTQ w4 g32 and GPTAQ w4 g32
(``methods.quant.apply``), GPTQ† / GPTAQ† w2 g32 (rotated, on a micro Qwen3 with tied
embeddings) and D²Quant w2 (``methods.d2quant.quantize``), each loaded on the CPU and quantized
one layer at a time on ``device`` with calibration in micro-batches, calibration text read
through ``datasets`` (a local ``.jsonl`` file standing in for WikiText-2), no decoded copy
(``decoded_copy: false``); both artifacts reloaded with transformers' ``from_pretrained`` and
compared with our exact loader; NSDS scores of the model in ``dtype`` on ``device``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _scale_file(workdir: Path, calib: Path) -> Path:
    data = yaml.safe_load((ROOT / "config/scales/tiny.yaml").read_text())
    data["papers"]["d2quant"].update(
        group_size=32,
        decoded_copy=False,
        calib={"n": 8, "seq_len": 64, "batch_size": 3, "dataset": {"name": str(calib)}},
    )
    path = workdir / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ppl(model, ids, device) -> float:
    import torch

    with torch.no_grad():
        out = model(input_ids=ids.to(device), labels=ids.to(device))
    loss = float(out.loss)
    if not math.isfinite(loss):
        raise AssertionError(f"non-finite loss {loss}")
    return math.exp(loss)


def _check_reload(folder: Path, dtype, device, ids) -> tuple[float, float]:
    """Logits of ``from_pretrained(packed/)`` vs our loader, both in ``dtype`` on ``device``:
    (max abs difference, max abs logit)."""
    import torch
    from transformers import AutoModelForCausalLM

    from claimbench.models import resolve_pretrained
    from methods.quant.pack import load_packed

    packed = folder / "packed"
    if Path(resolve_pretrained(folder)).resolve() != packed.resolve():
        raise AssertionError(f"{folder}: meta.json load.path does not point at packed/")
    if (folder / "model.safetensors").exists():
        raise AssertionError(f"{folder}: a decoded copy was written (decoded_copy: false)")
    ours = load_packed(packed, dtype=dtype, device=device)
    theirs = AutoModelForCausalLM.from_pretrained(packed, dtype=dtype).to(device).eval()
    with torch.no_grad():
        a = ours(input_ids=ids.to(device)).logits.float()
        b = theirs(input_ids=ids.to(device)).logits.float()
    return float((a - b).abs().max()), float(a.abs().max())


def gpu_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    """Run GPTQ w4, D²Quant w2 and NSDS scoring on a micro Llama on ``device`` in ``dtype``;
    return one line per step. Raises on a failed check."""
    import torch

    from claimbench.micro import CORPUS, micro_lm
    from methods.d2quant.quantize import main as d2quant_main
    from methods.nsds.scores import nsds_scores
    from methods.quant.apply import main as quant_main
    from methods.quant.artifact import load_artifact
    from methods.quant.pack import load_packed, read_codes, serving

    workdir = Path(workdir)
    tdtype = getattr(torch, dtype)
    cuda = device.startswith("cuda")
    base = micro_lm(workdir / "llama", arch="llama")
    qwen3 = micro_lm(workdir / "qwen3", arch="qwen3")
    calib = workdir / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    text = workdir / "calib.txt"
    text.write_text("\n".join(CORPUS))
    scale = _scale_file(workdir, calib)
    job = ["--scale", "tiny", "--scale-file", str(scale), "--device", device, "--dtype", dtype]
    model, tok, _ = load_artifact(base, device, tdtype)
    ids = torch.tensor([tok(" ".join(CORPUS[i : i + 6]))["input_ids"][:64] for i in (5, 300)])
    ppl0 = {base: _ppl(model, ids, device)}
    ppl0[qwen3] = _ppl(load_artifact(qwen3, device, tdtype)[0], ids, device)
    lines = []
    gptq_tail = ["--group-size", "32", "--n-calib", "8", "--seq-len", "64", "--calib", str(text)]

    def quant(variant, bits, method):
        return ["--paper", "d2quant", "--variant", variant, "--bits", bits, "--method", method]

    runs = {
        "GPTQ w4 g32": (quant_main, quant("gptq-w4", "4", "gptq"), gptq_tail, base),
        "GPTAQ w4 g32": (quant_main, quant("gptaq-w4", "4", "gptaq"), gptq_tail, base),
        "GPTQ-rot w2 g32 (qwen3)": (
            quant_main,
            quant("gptq_rot-w2", "2", "gptq_rot"),
            gptq_tail,
            qwen3,
        ),
        "GPTAQ-rot w2 g32 (qwen3)": (
            quant_main,
            quant("gptaq_rot-w2", "2", "gptaq_rot"),
            gptq_tail,
            qwen3,
        ),
        "D2Quant w2 g32": (
            d2quant_main,
            ["--paper", "d2quant", "--variant", "d2quant-w2", "--bits", "2"],
            ["--calib", str(text), "--heldout", str(calib)],
            base,
        ),
    }
    for label, (entry, head, tail, src) in runs.items():
        out = workdir / head[3]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        entry([*job, *head, "--out", str(out), "--model", str(src), *tail])
        secs = time.perf_counter() - t0
        meta = json.loads((out / "meta.json").read_text())
        if meta["reload_max_abs_diff"] != 0.0:
            raise AssertionError(f"{out}: reload_max_abs_diff {meta['reload_max_abs_diff']}")
        bits = int(head[head.index("--bits") + 1])
        codes = read_codes(out / "packed")
        if {q.bits for q in codes.values()} != {bits}:
            raise AssertionError(
                f"{out}: packed bit widths {sorted({q.bits for q in codes.values()})}"
            )
        serve = serving(out / "packed")
        if not serve["from_pretrained"] or serve["vllm_wna16"] != (bits == 4):
            raise AssertionError(f"{out}: serving {serve}")
        diff, scale_ = _check_reload(out, tdtype, device, ids)
        if diff > 0.02 * scale_ + 0.05:
            raise AssertionError(f"{out}: from_pretrained logits differ by {diff} (max {scale_})")
        ppl1 = _ppl(load_packed(out / "packed", dtype=tdtype, device=device), ids, device)
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if cuda else ""
        lines.append(
            f"quant: {label} on {device} {dtype}: ppl {ppl0[src]:.1f} -> {ppl1:.1f}, {secs:.1f} s"
            f"{peak}; from_pretrained logits within {diff:.3g} (max |logit| {scale_:.3g}); "
            f"vLLM WNA16 {'yes' if serve['vllm_wna16'] else 'no (' + serve['vllm_problems'][0] + ')'}"
        )

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    scores = nsds_scores(model)
    secs = time.perf_counter() - t0
    vals = [float(v) for v in scores["scores"]]
    if len(vals) != model.config.num_hidden_layers or not all(0 < v < 1 for v in vals):
        raise AssertionError(f"NSDS layer scores {vals!r}")
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if cuda else ""
    lines.append(
        f"quant: NSDS scores on {device} {dtype}: layers {[round(v, 3) for v in vals]}, "
        f"{secs:.1f} s{peak}"
    )
    return lines


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for line in gpu_smoke(sys.argv[1] if len(sys.argv) > 1 else "cpu", "bfloat16", Path(d)):
            print(line)
