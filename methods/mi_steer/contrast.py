"""Steer and ablate a behaviour direction in a real causal LM (SmolLM2 at small scale, a 7-8B
instruct model at paper scale): the Locate -> Steer -> Improve pipeline on local prompt sets.

Behaviour score of a prompt = log-odds of the behaviour's first tokens at the first generated
position: logsumexp(log p[positive_tokens]) - logsumexp(log p[negative_tokens]) (the refusal
score of Arditi et al. with refusal-start tokens); a prompt "shows the behaviour" when > 0.
Prompts split in half: the first half fits and selects the direction, the second half tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from claimbench.io import atomic_write_jsonl, stable_hash
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.interp.hooks import HookedLM
from methods.mi_steer import steer as S
from methods.mi_steer.suite import improve_verdict, same_n_per_task
from methods.posttrain.models import load_model

ROOT = Path(__file__).resolve().parents[2]


def read_prompts(path: str) -> list[str]:
    p = Path(path) if Path(path).is_absolute() else ROOT / path
    if not p.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    rows = [
        json.loads(line)["prompt"]
        for line in p.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if len(rows) < 2:
        raise ValueError(
            f"empty prompt set: {path} holds {len(rows)} prompts (need at least 2: fit + test)"
        )
    return rows


def first_ids(tok, words: list[str]) -> list[int]:
    ids = sorted({tok(w, add_special_tokens=False)["input_ids"][0] for w in words})
    if not ids:
        raise ValueError(f"no tokens for {words}")
    return ids


class Contrast:
    def __init__(self, lm: HookedLM, tok, chat: bool, device: str):
        self.lm, self.tok, self.chat, self.device = lm, tok, chat, device

    def encode(self, prompt: str) -> torch.Tensor:
        if self.chat:
            ids = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = self.tok(prompt)["input_ids"]
        return torch.tensor([ids], device=self.device)

    @torch.no_grad()
    def last_resid(self, prompts: list[str], layers: list[int]) -> dict[int, torch.Tensor]:
        sites = [self.lm.site("resid_post", lyr) for lyr in layers]
        tot = {lyr: 0.0 for lyr in layers}
        for p in prompts:
            _, c = self.lm.run(self.encode(p), read=sites)
            for lyr, s in zip(layers, sites, strict=False):
                tot[lyr] = tot[lyr] + c[s][0, -1].float()
        return {lyr: tot[lyr] / len(prompts) for lyr in layers}

    @torch.no_grad()
    def first_logprobs(self, prompts: list[str], edits=()) -> torch.Tensor:
        return torch.stack(
            [
                F.log_softmax(self.lm.run(self.encode(p), edits=edits)[0][0, -1].float(), -1)
                for p in prompts
            ]
        )


def score(lp: torch.Tensor, pos_ids: list[int], neg_ids: list[int]) -> torch.Tensor:
    return torch.logsumexp(lp[:, pos_ids], -1) - torch.logsumexp(lp[:, neg_ids], -1)


def text_windows(tok, path: str, n: int, length: int, device: str) -> torch.Tensor:
    """``n`` windows of ``length`` tokens from a text file, or from the ``text`` fields of a JSONL."""
    raw = Path(path).read_text(encoding="utf-8")
    if path.endswith(".jsonl"):
        raw = "\n\n".join(json.loads(line)["text"] for line in raw.splitlines() if line.strip())
    ids = tok(raw[: 8 * n * length + 20000])["input_ids"]
    n = min(n, len(ids) // length)
    if n < 1:
        raise ValueError(f"neutral text {path} has fewer than {length} tokens")
    return torch.tensor([ids[i * length : (i + 1) * length] for i in range(n)], device=device)


def run(job: Job) -> None:
    a = job.args
    cfg = job.config.get("contrast")
    if cfg is None:
        raise ValueError(f"papers.mi_steer.contrast is not set in the {job.scale} scale file")
    if a.behaviour not in cfg["behaviours"]:
        raise ValueError(
            f"behaviour {a.behaviour!r} is not configured (known: {sorted(cfg['behaviours'])})"
        )
    b = cfg["behaviours"][a.behaviour]
    model, tok = load_model(a.artifact, device=job.device, dtype=job.torch_dtype)
    lm = HookedLM(model)
    c = Contrast(lm, tok, cfg["chat_template"], job.device)
    pos, neg = read_prompts(b["positive"]), read_prompts(b["negative"])
    pos_fit, pos_test = pos[: len(pos) // 2], pos[len(pos) // 2 :]
    neg_fit, neg_test = neg[: len(neg) // 2], neg[len(neg) // 2 :]
    pid, nid = first_ids(tok, b["positive_tokens"]), first_ids(tok, b["negative_tokens"])
    depth = lm.n_layers
    # No layers configured: every layer from a quarter of the depth to 80 % (a range that
    # depends on the model, so it is computed here rather than a schema default).
    layers = cfg.get("layers") or list(range(depth // 4, int(0.8 * depth)))
    for lyr in layers:
        lm.check_layer(lyr)
    mp, mn = c.last_resid(pos_fit, layers), c.last_resid(neg_fit, layers)
    dirs = {lyr: mp[lyr] - mn[lyr] for lyr in layers}
    # Selection on the fit split: lowest behaviour score under ablation, KL < 0.1 on the
    # negative prompts, layer in the first 80 % of the depth (Arditi et al.).
    base_neg = c.first_logprobs(neg_fit)
    cands = []
    for lyr, r in dirs.items():
        ed = S.ablation_edits(lm, r)
        lp = c.first_logprobs(neg_fit, ed)
        kl = float((base_neg.exp() * (base_neg - lp)).sum(-1).mean())
        cands.append(
            {
                "layer": lyr,
                "r": r,
                "kl": kl,
                "score": float(score(c.first_logprobs(pos_fit, ed), pid, nid).mean()),
            }
        )
    kl_max, max_depth = cfg["select_kl_max"], cfg["select_max_depth"]
    chosen = S.select_direction(cands, depth, kl_max, max_depth)
    selected = chosen is not None
    if not selected:
        # No layer passes the rule: a finding, not an error. The pipeline then fails the
        # pre-registered criterion (criterion_met = 0); the rest of the record describes the
        # best-scoring candidate within the depth limit, KL filter lifted, so the side effects
        # that made every candidate fail are measured rather than guessed.
        chosen = S.select_direction(cands, depth, float("inf"), max_depth)
        if chosen is None:
            raise ValueError(
                f"layers {layers}: none lies in the first {max_depth:.0%} of the model's "
                f"{depth} layers"
            )
        print(
            f"no candidate layer passes the selection rule (KL < {kl_max:g} on the negative "
            f"prompts, layer < {max_depth:.0%} depth): KL per layer "
            + ", ".join(f"{c['layer']}: {c['kl']:.3g}" for c in cands)
            + f"; reporting layer {chosen['layer']} (lowest score, KL filter lifted)"
        )
    r, lyr = chosen["r"], chosen["layer"]
    abl = S.ablation_edits(lm, r)
    s_base = score(c.first_logprobs(pos_test), pid, nid)
    s_abl = score(c.first_logprobs(pos_test, abl), pid, nid)
    alphas = cfg["alphas"]
    dose = [
        float(
            (score(c.first_logprobs(neg_test, S.steering_edits(lm, r, al, lyr)), pid, nid) > 0)
            .float()
            .mean()
        )
        for al in alphas
    ]
    rnd = S.random_like(r, job.seed + 7)
    dose_rnd = [
        float(
            (score(c.first_logprobs(neg_test, S.steering_edits(lm, rnd, al, lyr)), pid, nid) > 0)
            .float()
            .mean()
        )
        for al in alphas
    ]
    win = text_windows(tok, a.text, cfg["n_neutral"], cfg["neutral_len"], job.device)
    se = S.side_effects(lm, win, abl)
    rate_b, rate_a = float((s_base > 0).float().mean()), float((s_abl > 0).float().mean())
    v = improve_verdict(
        rate_b,
        rate_a,
        se["kl"],
        se["ppl_base"],
        se["ppl"],
        {k: cfg[k] for k in ("min_rel_change", "max_kl", "max_ppl_rise")},
    )
    met = bool(v["met"]) and selected
    metrics = [
        metric("contrast", "layer", lyr),
        metric("contrast", "selection_passed", float(selected), higher_is_better=True),
        metric("contrast", "select_kl", chosen["kl"], higher_is_better=False),
        metric("contrast", "rate_positive", rate_b, n=len(pos_test)),
        metric(
            "contrast", "rate_positive_ablated", rate_a, n=len(pos_test), higher_is_better=False
        ),
        metric("contrast", "score_positive", float(s_base.mean()), n=len(pos_test)),
        metric("contrast", "score_positive_ablated", float(s_abl.mean()), n=len(pos_test)),
        metric(
            "contrast",
            "rate_negative_induced_alpha1",
            dose[alphas.index(1)] if 1 in alphas else float("nan"),
            n=len(neg_test),
        ),
        metric("contrast", "kl_neutral", se["kl"], higher_is_better=False),
        metric("contrast", "ppl_rise", v["ppl_rise"], higher_is_better=False),
        metric("contrast", "rel_reduction", v["rel_change"], higher_is_better=True),
        metric("contrast", "criterion_met", float(met), higher_is_better=True),
    ]
    cand_layers = [c["layer"] for c in cands]
    curves = [
        series(
            "real LM: direction selection, KL on harmless fit prompts under ablation",
            cand_layers,
            [c["kl"] for c in cands],
            "layer",
            "KL (nats) | candidate",
        ),
        series(
            "real LM: direction selection, KL on harmless fit prompts under ablation",
            cand_layers,
            [kl_max] * len(cands),
            "layer",
            "KL (nats) | rule's limit",
        ),
        series(
            "real LM: direction selection, behaviour score on harmful fit prompts under ablation",
            cand_layers,
            [c["score"] for c in cands],
            "layer",
            "log-odds | candidate",
        ),
        series(
            "real LM: behaviour rate vs alpha (negative prompts)",
            alphas,
            dose,
            "alpha (units of r)",
            "rate | direction",
        ),
        series(
            "real LM: behaviour rate vs alpha (negative prompts)",
            alphas,
            dose_rnd,
            "alpha (units of r)",
            "rate | random vector",
        ),
    ]
    samples = [
        {
            "task": "contrast",
            "doc_id": i,
            "doc_hash": stable_hash(p),
            "prompt": p,
            "target": a.behaviour,
            "response": "",
            "metrics": {"score": float(s_base[i]), "score_ablated": float(s_abl[i])},
        }
        for i, p in enumerate(pos_test)
    ]
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out.parent / "contrast.samples.jsonl", samples)
    meta = json.loads((Path(a.artifact) / "meta.json").read_text())
    record = job.record(
        suite="contrast",
        metrics=same_n_per_task([m for m in metrics if np.isfinite(m["value"])]),
        base_model=meta.get("name", Path(a.artifact).name),
        tasks=["contrast"],
        config={**cfg, "behaviour": a.behaviour},
        task_hashes={"contrast": stable_hash([pos, neg])},
        samples="contrast.samples.jsonl",
        series=curves,
    )
    job.write_record(record)
    print(json.dumps({m["metric"]: m["value"] for m in metrics}))


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["mi_steer"], out="the run record this job writes")
    ap.add_argument("--artifact", required=True, help="the model's artifact folder")
    ap.add_argument(
        "--behaviour", required=True, help="a key of papers.mi_steer.contrast.behaviours"
    )
    ap.add_argument("--text", required=True, help="neutral text file (side effects)")
    run_job(ap, run, argv, errors=(ValueError, IndexError, FileNotFoundError))


if __name__ == "__main__":
    main()
