"""A micro tokenizer + Llama and a few arithmetic problems, saved like real artifacts."""

from __future__ import annotations

import json
import random
from pathlib import Path

from benchmarks.data.arith import make_problem
from methods.lm.model import build_model
from methods.lm.tokenizer import train_tokenizer

SPEC = {
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 32,
    "max_position_embeddings": 128,
}


def problems(n: int = 64, seed: int = 0, families=("add", "sub")) -> list[dict]:
    rng = random.Random(seed)
    return [make_problem(families[i % len(families)], rng, 1, f"p{i}").as_dict() for i in range(n)]


def micro_tokenizer():
    corpus = [f"{p['prompt']} {p['long']}\n" for p in problems(200)] + ["Hello world.\n"]
    return train_tokenizer(corpus, 300)


def save_micro_model(out: Path, seed: int = 0, tok=None):
    tok = tok or micro_tokenizer()
    model = build_model(SPEC, tok, seed=seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "meta.json").write_text(json.dumps({"name": out.name, "method": "base"}))
    return model, tok


def write_problems(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scale_file(path: Path, paper: str, section: dict, scale: str = "tiny") -> Path:
    """A copy of ``config/scales/<scale>.yaml`` whose only paper section is ``papers.<paper>``:
    the scale's own section with ``section``'s keys replaced (a job's ``--scale-file``)."""
    import yaml

    from claimbench.config import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "scales" / f"{scale}.yaml").read_text())
    data["papers"] = {paper: {**(data.get("papers") or {}).get(paper, {}), **section}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
