"""GPU smoke of the paper-scale MI path: the real-LM contrast job (``contrast.main``, as the
``mi_steer_contrast`` rule runs it) on micro Llama and Qwen2 models served from a hub base
artifact in a local cache, on the given device and dtype, then the exported steer file applied
by lm-eval's ``steered`` model against our own S1 edit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _scale_file(workdir: Path, model: str) -> Path:
    import yaml

    scale = yaml.safe_load((ROOT / "config" / "scales" / "tiny.yaml").read_text())
    scale["papers"]["mi_steer"] = {
        "seeds": [0],
        "contrast": {
            "model": model,
            "chat_template": True,
            "layers": [0, 1],
            "select_max_depth": 1.0,
            "alphas": [-1, 0, 1],
            "n_neutral": 2,
            "neutral_len": 16,
            "steer_alpha": 1.0,
            "behaviours": {
                "refusal": {
                    "positive": "benchmarks/data/mi_prompts/harmful.jsonl",
                    "negative": "benchmarks/data/mi_prompts/harmless.jsonl",
                    "positive_tokens": ["I", "Sorry"],
                    "negative_tokens": ["Sure", "Here"],
                }
            },
        },
    }
    path = workdir / f"scale-{model}.yaml"
    path.write_text(yaml.safe_dump(scale))
    return path


def _hub_artifact(workdir: Path, arch: str) -> tuple[Path, Path]:
    """A micro model in a hub cache under ``workdir`` and a base artifact naming its hub id."""
    import shutil

    from claimbench.micro import micro_lm

    src = micro_lm(workdir / "models" / arch, arch=arch)
    repo = f"claimbench/micro-{arch}"
    commit = "0" * 40
    snap = workdir / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "meta.json":
            shutil.copy2(f, snap / f.name)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(commit)
    art = workdir / "base" / f"micro-{arch}"
    art.mkdir(parents=True)
    meta = {"name": art.name, "kind": "hub", "method": "base", "load": {"hub_id": repo}}
    (art / "meta.json").write_text(json.dumps(meta))
    return art, src


def gpu_smoke(device: str, dtype: str, workdir: Path) -> list[str]:
    import huggingface_hub.constants as C
    import torch
    from lm_eval.models.hf_steered import SteeredModel
    from transformers import AutoModelForCausalLM

    from claimbench.records import load_run_record
    from methods.interp.hooks import HookedLM
    from methods.mi_steer import contrast
    from methods.mi_steer import steer as S

    workdir = Path(workdir)
    text = workdir / "neutral.jsonl"
    from claimbench.micro import CORPUS

    text.write_text("\n".join(json.dumps({"text": t}) for t in CORPUS[:80]))
    old_cache, old_off = C.HF_HUB_CACHE, os.environ.get("HF_HUB_OFFLINE")
    C.HF_HUB_CACHE = str(workdir / "hub")
    os.environ["HF_HUB_OFFLINE"] = "1"
    lines = []
    try:
        for arch in ("llama", "qwen2"):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            art, src = _hub_artifact(workdir, arch)
            rec, steer = workdir / f"{arch}.contrast.json", workdir / f"{arch}.steer.pt"
            contrast.main(
                [
                    *["--scale", "tiny", "--scale-file", str(_scale_file(workdir, art.name))],
                    *["--paper", "mi_steer", "--variant", f"{art.name}-refusal"],
                    *["--device", device, "--dtype", dtype, "--out", str(rec)],
                    *["--artifact", str(art), "--text", str(text), "--behaviour", "refusal"],
                    *["--steer-out", str(steer)],
                ]
            )
            r = load_run_record(rec)
            vals = {m["metric"]: m["value"] for m in r["metrics"]}
            assert r["provenance"]["device"].startswith(device), r["provenance"]["device"]
            for k in ("kl_neutral", "score_positive", "score_positive_ablated"):
                assert torch.isfinite(torch.tensor(vals[k])), (arch, k, vals[k])
            layer = int(vals["layer"])
            cfg = torch.load(steer, weights_only=True)
            v = cfg[f"layers.{layer}"]["steering_vector"]
            assert torch.isfinite(v).all() and v.norm() > 0
            # the file through lm-eval's steered model == our S1 edit, on device in dtype
            tdt = getattr(torch, dtype)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=tdt).to(device).eval()
            lm = HookedLM(model)
            ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
            ids = ids.to(device)
            ours = lm.run(ids, edits=S.steering_edits(lm, v.to(device), 1.0, layer))[0].float()
            sm = SteeredModel(
                pretrained=str(src), steer_path=str(steer), device=device, dtype=dtype
            )
            with torch.no_grad():
                theirs = sm._model_call(ids).float()
            tol = 1e-4 if dtype == "float32" else 5e-2
            err = float((theirs - ours).abs().max() / ours.abs().max().clamp_min(1e-6))
            assert err <= tol, f"{arch}: steered logits differ from our edit by {err:.3g}"
            peak = (
                f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB"
                if device == "cuda"
                else ""
            )
            lines.append(
                f"mi_steer: {arch} contrast on {device} {dtype}: layer {layer}, "
                f"KL {vals['kl_neutral']:.3g}, score {vals['score_positive']:.3g} -> "
                f"{vals['score_positive_ablated']:.3g} ablated; lm-eval steered == ours "
                f"(rel {err:.1e}), {time.perf_counter() - t0:.1f} s{peak}"
            )
            del sm, model, lm
    finally:
        C.HF_HUB_CACHE = old_cache
        if old_off is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_off
    return lines
