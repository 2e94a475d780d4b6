"""A micro Llama artifact (2 layers, widths divisible by 16) for quantization tests."""

from __future__ import annotations

import json
from pathlib import Path

from methods.lm.model import build_model
from tests.posttrain_fixtures import micro_tokenizer

SPEC = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
TEXT = " ".join(f"{a} plus {b} is {a + b}." for a in range(40) for b in range(12))


def save_quant_micro(out: Path, seed: int = 0):
    tok = micro_tokenizer()
    model = build_model(SPEC, tok, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "meta.json").write_text(json.dumps({"name": "micro", "method": "base"}))
    (out.parent / "calib.txt").write_text(TEXT)
    return model, tok


def scale_file(path: Path, **papers) -> Path:
    """A copy of the tiny scale file at ``path`` whose ``papers.<name>`` sections are updated
    with ``papers[name]`` (the job reads its settings from there)."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "config/scales/tiny.yaml").read_text())
    for name, changes in papers.items():
        data["papers"][name].update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def job_args(paper: str, variant: str, out, scale_file_path=None) -> list[str]:
    """The job options of an entry point (``claimbench.job``) at the tiny scale."""
    args = ["--scale", "tiny", "--paper", paper, "--variant", variant, "--out", str(out)]
    if scale_file_path is not None:
        args += ["--scale-file", str(scale_file_path)]
    return args


def effective_levels_per_group(weight, group_size: int):
    """Distinct values of the weight a model computes with, per (row, group of input columns):
    at most 2**bits for a b-bit layer whatever its codes say (a second scale, a bias folded into
    the weight or a decoding slip would show here, and never in the clamped integer codes)."""
    g = weight.detach().float().reshape(-1, group_size).sort(-1).values
    return 1 + (g.diff(dim=-1) != 0).sum(-1)
