"""``make gpu-smoke``, evaluation area: lm-eval and the 2048-window perplexity on micro models.

Goes through the functions the paper-scale ``eval_lm`` and ``eval_ppl`` jobs call
(``benchmarks.lm_eval_suite.evaluate``, ``benchmarks.perplexity.evaluate``) with the paper
scale's ``eval`` settings (context cap, request cache, backend, 2048-token windows), on a
micro Llama and a micro Qwen2 (``claimbench.micro``) and local task data written here, on the
given device in the given dtype. lm-eval's ``vllm`` backend runs too when vLLM is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import yaml

from claimbench.config import CONFIG_DIR

ARCHS = ("llama", "qwen2")
TASKS = "text_ppl,arith_mc,arith_id"


def _peak(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return ""


def _data(workdir: Path) -> tuple[Path, Path]:
    """Task data for text_ppl / arith_mc / arith_id, and a text file for the perplexity."""
    from claimbench.micro import CORPUS

    data = workdir / "data"
    (data / "text").mkdir(parents=True)
    (data / "arith").mkdir(parents=True)
    text = [{"text": " ".join(CORPUS[i : i + 20])} for i in range(0, 160, 20)]
    mc, gen = [], []
    for i, (a, b) in enumerate([(3, 4), (12, 9), (7, 8), (25, 17), (6, 6), (19, 2)]):
        q = f"What is {a} + {b}?"
        mc.append({"question": q, "choices": [str(a + b + d) for d in (0, 1, 10, -1)], "label": 0})
        gen.append({"prompt": f"Question: {q}\nAnswer:", "answer": a + b, "id": f"s{i}"})
    for name, rows in (("text/test", text), ("arith/mc_test", mc), ("arith/test_id", gen)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    return data, corpus


def _scale(workdir: Path, dtype: str, corpus: Path) -> Path:
    """The paper scale file, its eval section kept but for local data and our tasks only."""
    data = yaml.safe_load((CONFIG_DIR / "scales" / "paper.yaml").read_text())
    lm = data["eval"]["lm_eval"]
    lm.update(include_defaults=False, limit=6, max_gen_toks=8, dtype=dtype)
    local = {"path": "text", "data_files": {"test": str(corpus)}, "split": "test"}
    data["eval"]["ppl"]["datasets"] = {"local": local}
    path = workdir / "paper-smoke.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _job(parser, scale: Path, variant: str, out: Path, device: str, dtype: str, *extra: str):
    from claimbench.job import job_from_args

    argv = ["--scale", "paper", "--scale-file", str(scale), "--paper", "base"]
    argv += ["--variant", variant, "--out", str(out), "--device", device, "--dtype", dtype]
    return job_from_args(parser.parse_args([*argv, *extra])).setup()


def gpu_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    """lm-eval (hf; vllm when importable) and the perplexity suite on micro Llama / Qwen2."""
    import torch

    from benchmarks import lm_eval_suite, perplexity
    from claimbench.micro import micro_lm

    workdir = Path(workdir)
    data, corpus = _data(workdir)
    scale = _scale(workdir, dtype, corpus)
    backends = ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    lines = []
    for arch in ARCHS:
        model = micro_lm(workdir / arch, arch=arch)
        for backend in backends:
            t0 = time.perf_counter()
            out = workdir / "runs" / f"{arch}-{backend}" / "lm_eval.json"
            opts = ["--artifact", str(model), "--data-dir", str(data), "--tasks", TASKS]
            opts += ["--backend", backend]
            job = _job(lm_eval_suite.parser(), scale, arch, out, device, dtype, *opts)
            rec = lm_eval_suite.evaluate(job)
            values = {(m["task"], m["metric"]): m["value"] for m in rec["metrics"]}
            assert all(math.isfinite(v) for v in values.values()), values
            assert {t for t, _ in values} == set(TASKS.split(",")), sorted(values)
            cfg = rec["config"]
            assert cfg["context"] == 4096 and cfg["dtype"] == dtype and cfg["use_cache"], cfg
            assert out.with_suffix(lm_eval_suite.RESULTS_SUFFIX).is_file()
            lines.append(
                f"eval: lm-eval {backend} {arch} {dtype} on {device}: word ppl "
                f"{values[('text_ppl', 'word_perplexity')]:.1f}, mc acc "
                f"{values[('arith_mc', 'acc')]:.2f}, context {cfg['context']}, "
                f"{time.perf_counter() - t0:.1f} s{_peak(device)}"
            )
        t0 = time.perf_counter()
        out = workdir / "runs" / arch / "ppl.json"
        job = _job(perplexity.parser(), scale, arch, out, device, dtype, "--artifact", str(model))
        rec = perplexity.evaluate(job)
        got = {m["metric"]: m for m in rec["metrics"]}
        # float32 reference of the same windows, through the same functions
        tok, ref = perplexity.load_model(str(model), "float32", device)
        spec = rec["config"]["datasets"]["local"]
        ref_res = perplexity.perplexity(ref, tok, {"local": spec}, 2048, 2, device)["local"]
        ref_ppl = ref_res["summary"]["ppl"]
        rel = abs(got["ppl"]["value"] - ref_ppl) / ref_ppl
        assert rec["config"]["seq_len"] == 2048 and got["ppl"]["n"] >= 1, rec["config"]
        assert math.isfinite(got["ppl"]["value"]) and rel < 0.05, (got["ppl"], ref_ppl)
        del ref
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        lines.append(
            f"eval: perplexity {arch} {dtype} on {device}: {got['ppl']['n']} x 2048-token "
            f"windows, ppl {got['ppl']['value']:.1f} (float32 {ref_ppl:.1f}, rel. {rel:.4f}), "
            f"{time.perf_counter() - t0:.1f} s{_peak(device)}"
        )
    return lines
