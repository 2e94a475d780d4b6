"""Diagnostics of the arithmetic world's check sentence (README.md, "The check sentence"):

    python -m methods.realign.diagnose split results/runs/tiny/realign > split.json
    python -m methods.realign.diagnose banned --model artifacts/tiny/realign/ref \\
        --test data/tiny/arith/test_id.jsonl --families add sub --max-new-tokens 96

``split``: for every ``realign_decode.samples.jsonl`` under a folder, exact match split by
whether the completion wrote the check sentence (``Check``). ``banned``: greedy decoding of
one model with every token that can start ``Check`` banned, exact match against the same
model's unconstrained greedy decoding. Read-only on its inputs; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from methods.posttrain.models import load_model
from methods.posttrain.rewards import extract_answer
from methods.realign.decode import batched, mixed_greedy, single_greedy
from methods.realign.evaluate import test_problems

MARK = "Check"


def check_split(rows: list[dict]) -> dict:
    """{n, with/without the check sentence: n and mean exact match} of one run's sample rows."""
    out = {"n": len(rows)}
    for name, keep in (("with_check", True), ("without_check", False)):
        sel = [r for r in rows if (MARK in r["response"]) == keep]
        em = [r["metrics"]["exact_match"] for r in sel]
        out[name] = {"n": len(sel), "exact_match": sum(em) / len(em) if em else None}
    return out


def split_runs(folder: str | Path) -> dict:
    res = {}
    for path in sorted(Path(folder).glob("*/realign_decode.samples.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        res[path.parent.name] = check_split(rows)
    return res


def banned_ids(tok, word: str = MARK) -> list[int]:
    """Token ids whose text (stripped of leading spaces) is a non-empty prefix of ``word`` or
    contains it: banning them all makes ``word`` impossible to write as a new word."""
    out = []
    for i in range(len(tok)):
        s = tok.decode([i]).lstrip()
        if s and (word.startswith(s) or word in s):
            out.append(i)
    return out


class _Banned:
    """A causal LM whose logits of ``ids`` are -1e9 (for ``decode.mixed_greedy``)."""

    def __init__(self, model, ids: list[int]):
        self.model, self.ids, self.device = model, torch.tensor(ids), model.device

    def __call__(self, **kw):
        out = self.model(**kw)
        out.logits[..., self.ids] = -1e9  # finite: the fused mixture rejects inf
        return out


def banned_decode(model, tok, problems: list[dict], max_new_tokens: int, size: int = 100) -> dict:
    ids = banned_ids(tok)
    prompts = [p["prompt"] for p in problems]
    wrapped = (_Banned(model, ids), None)

    def em(dec) -> float:
        ok = [
            extract_answer(t) == int(p["answer"]) for p, t in zip(problems, dec.texts, strict=True)
        ]
        return sum(ok) / len(ok)

    plain = batched(
        lambda ps: single_greedy(model, tok, ps, max_new_tokens=max_new_tokens), prompts, size
    )
    ban = batched(
        lambda ps: mixed_greedy(wrapped, wrapped, 0.0, tok, ps, max_new_tokens=max_new_tokens),
        prompts,
        size,
    )
    return {
        "n": len(problems),
        "banned_tokens": [tok.decode([i]) for i in ids],
        "plain": {"exact_match": em(plain), "with_check": sum(MARK in t for t in plain.texts)},
        "check_banned": {"exact_match": em(ban), "with_check": sum(MARK in t for t in ban.texts)},
        "examples": ban.texts[:5],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["split", "banned"])
    ap.add_argument("folder", nargs="?", default="", help="split: a realign runs folder")
    ap.add_argument("--model", default="", help="banned: a model artifact folder")
    ap.add_argument("--test", default="", help="banned: test problems (JSONL)")
    ap.add_argument("--families", nargs="*", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    a = ap.parse_args(argv)
    if a.what == "split":
        res = split_runs(a.folder)
    else:
        torch.manual_seed(0)
        model, tok = load_model(a.model)
        res = banned_decode(model, tok, test_problems(a.test, a.families, None), a.max_new_tokens)
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
