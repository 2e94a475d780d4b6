"""Steer and ablate a behaviour direction in a real causal LM (SmolLM2 at small scale, a 7-8B
instruct model at paper scale): the Locate -> Steer -> Improve pipeline on local prompt sets.

Behaviour score of a prompt = log-odds of the behaviour's first tokens at the first generated
position: logsumexp(log p[positive_tokens]) - logsumexp(log p[negative_tokens]) (the refusal
score of Arditi et al. with refusal-start tokens); a prompt "shows the behaviour" when > 0.
Prompts split in file order (`split_prompts`): `n_fit` fit the candidate directions, `n_val`
select one, the rest test (default half / quarter / quarter; Arditi et al. 128 / 32 / rest).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from claimbench.io import atomic_write_jsonl, stable_hash
from claimbench.job import Job, job_parser, run_job
from claimbench.models import loadable_source
from claimbench.records import metric, series
from methods.interp.hooks import HookedLM
from methods.mi_steer import steer as S
from methods.mi_steer.suite import improve_verdict, same_n_per_task

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


def load(artifact: str, job: Job):
    """(model, tokenizer) of an artifact (a saved folder, or a base artifact naming a cached hub
    id) in the job's dtype on its device, frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = loadable_source(artifact)
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = job.to(AutoModelForCausalLM.from_pretrained(src, **job.load_kwargs())).eval()
    model.requires_grad_(False)
    return model, tok


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
            # transformers 5 returns a BatchEncoding (iterating it yields its keys): ask for it
            ids = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        else:
            ids = self.tok(prompt)["input_ids"]
        return torch.tensor([ids], device=self.device)

    @torch.no_grad()
    def mean_resid(
        self, prompts: list[str], layers: list[int], positions: list[int]
    ) -> dict[tuple[int, int], torch.Tensor]:
        """Mean residual stream (output of each layer) at each position (negative offsets from
        the end of the prompt) over the prompts: {(layer, position): vector}."""
        sites = [self.lm.site("resid_post", lyr) for lyr in layers]
        tot = {(lyr, i): 0.0 for lyr in layers for i in positions}
        for p in prompts:
            _, c = self.lm.run(self.encode(p), read=sites)
            for lyr, s in zip(layers, sites, strict=True):
                for i in positions:
                    tot[lyr, i] = tot[lyr, i] + c[s][0, i].float()
        return {k: v / len(prompts) for k, v in tot.items()}

    def post_instruction_positions(self, prompts: list[str], max_positions: int) -> list[int]:
        """Arditi et al.'s candidate positions: the tokens after the instruction, i.e. the
        chat template's suffix common to every encoded prompt (at most ``max_positions``, at
        least the last token), as offsets -1, -2, ... from the end."""
        seqs = [self.encode(p)[0].tolist() for p in prompts]
        k = 0
        while k < min(map(len, seqs)) and len({q[-1 - k] for q in seqs}) == 1:
            k += 1
        return [-i for i in range(1, max(1, min(k, max_positions)) + 1)]

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


def split_prompts(prompts: list[str], n_fit: int | None, n_val: int | None, what: str):
    """(fit, validation, test) in file order: Arditi et al. fit the candidate directions on
    one split, select among them on a held-out validation split, and evaluate on a third.
    Absent sizes: half to fit, a quarter to validate, the rest to test."""
    n_fit = len(prompts) // 2 if n_fit is None else n_fit
    n_val = len(prompts) // 4 if n_val is None else n_val
    if n_fit < 1 or n_val < 1 or n_fit + n_val >= len(prompts):
        raise ValueError(
            f"{what}: {len(prompts)} prompts cannot give n_fit={n_fit}, n_val={n_val} and at "
            "least one test prompt"
        )
    return prompts[:n_fit], prompts[n_fit : n_fit + n_val], prompts[n_fit + n_val :]


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


@torch.no_grad()
def side_effects(lm: HookedLM, ids: torch.Tensor, edits, chunk: int = 4) -> dict:
    """``steer.side_effects`` (KL(p_base || p_edited) per token, perplexity base and edited)
    over ``chunk`` windows at a time, log-probabilities in float32: a 7B model's 152k-token
    vocabulary makes the logits of 64 windows x 512 tokens ~10 GB per copy in bf16."""
    kl = nll_b = nll_n = 0.0
    n_tok = 0
    for i in range(0, ids.shape[0], chunk):
        x = ids[i : i + chunk]
        lb = F.log_softmax(lm.run(x)[0][:, :-1].float(), -1)
        ln = F.log_softmax(lm.run(x, edits=edits)[0][:, :-1].float(), -1)
        tgt = x[:, 1:, None]
        kl += float((lb.exp() * (lb - ln)).sum(-1).sum())
        nll_b += float(-lb.gather(-1, tgt).sum())
        nll_n += float(-ln.gather(-1, tgt).sum())
        n_tok += tgt.numel()
        del lb, ln
    return {
        "kl": kl / n_tok,
        "ppl_base": float(np.exp(nll_b / n_tok)),
        "ppl": float(np.exp(nll_n / n_tok)),
    }


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
    model, tok = load(a.artifact, job)
    lm = HookedLM(model)
    c = Contrast(lm, tok, cfg["chat_template"], job.device)
    pos, neg = read_prompts(b["positive"]), read_prompts(b["negative"])
    pos_fit, pos_val, pos_test = split_prompts(
        pos, cfg.get("n_fit"), cfg.get("n_val"), b["positive"]
    )
    neg_fit, neg_val, neg_test = split_prompts(
        neg, cfg.get("n_fit"), cfg.get("n_val"), b["negative"]
    )
    pid, nid = first_ids(tok, b["positive_tokens"]), first_ids(tok, b["negative_tokens"])
    depth = lm.n_layers
    # Candidates (Arditi et al.): every layer x every post-instruction position; the depth
    # limit is part of the selection rule below.
    layers = cfg.get("layers") or list(range(depth))
    for lyr in layers:
        lm.check_layer(lyr)
    positions = c.post_instruction_positions(pos_fit + neg_fit, cfg["max_positions"])
    mp = c.mean_resid(pos_fit, layers, positions)
    mn = c.mean_resid(neg_fit, layers, positions)
    # Selection on the validation split: bypass score (behaviour score of the positive prompts
    # under ablation, lower is better), induce score (the negative prompts with r added at its
    # layer), KL on the negative prompts' next token under ablation.
    base_neg = c.first_logprobs(neg_val)
    cands = []
    for (lyr, i), m in tqdm(mp.items(), desc="direction candidates", unit="candidate"):
        r = m - mn[lyr, i]
        ed = S.ablation_edits(lm, r)
        lp = c.first_logprobs(neg_val, ed)
        kl = float((base_neg.exp() * (base_neg - lp)).sum(-1).mean())
        cands.append(
            {
                "layer": lyr,
                "position": i,
                "r": r,
                "kl": kl,
                "score": float(score(c.first_logprobs(pos_val, ed), pid, nid).mean()),
                "induce": float(
                    score(
                        c.first_logprobs(neg_val, S.steering_edits(lm, r, 1.0, lyr)), pid, nid
                    ).mean()
                ),
            }
        )
    kl_max, max_depth = cfg["select_kl_max"], cfg["select_max_depth"]
    induce_min = cfg["select_induce_min"]
    chosen = S.select_direction(cands, depth, kl_max, max_depth, induce_min)
    selected = chosen is not None
    n_pass = {
        "kl": sum(c["kl"] < kl_max for c in cands),
        "induce": sum(c["induce"] > induce_min for c in cands),
        "depth": sum(c["layer"] < max_depth * depth for c in cands),
    }
    if not selected:
        # No candidate passes the rule: a finding, not an error. The pipeline then fails the
        # pre-registered criterion (criterion_met = 0); the rest of the record describes the
        # best-scoring candidate within the depth limit, KL and induce filters lifted, so the
        # side effects that made every candidate fail are measured rather than guessed.
        chosen = S.select_direction(cands, depth, float("inf"), max_depth)
        if chosen is None:
            raise ValueError(
                f"layers {layers}: none lies in the first {max_depth:.0%} of the model's "
                f"{depth} layers"
            )
        print(
            f"no candidate passes the selection rule (KL < {kl_max:g} and induce score > "
            f"{induce_min:g} on the negative validation prompts, layer < {max_depth:.0%} "
            f"depth; passing each filter: {n_pass}); reporting layer {chosen['layer']} "
            f"position {chosen['position']} (lowest score, KL and induce filters lifted)"
        )
    r, lyr = chosen["r"], chosen["layer"]
    if a.steer_out:  # S1 at the selected layer, for lm-eval's `steered` model
        S.save_steering_file(a.steer_out, lyr, r, cfg["steer_alpha"])
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
    se = side_effects(lm, win, abl)
    rate_b, rate_a = float((s_base > 0).float().mean()), float((s_abl > 0).float().mean())
    # The premise of every refusal claim: the unedited model refuses the held-out harmful
    # prompts more often than the harmless ones (two-proportion difference, binomial se).
    rate_n = float((score(c.first_logprobs(neg_test), pid, nid) > 0).float().mean())
    gap_se = math.sqrt(
        rate_b * (1 - rate_b) / len(pos_test) + rate_n * (1 - rate_n) / len(neg_test)
    )
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
        metric("contrast", "position", chosen["position"]),
        metric("contrast", "select_kl", chosen["kl"], higher_is_better=False),
        metric("contrast", "select_bypass_score", chosen["score"], n=len(pos_val)),
        metric("contrast", "select_induce_score", chosen["induce"], n=len(neg_val)),
        metric("contrast", "n_candidates", len(cands)),
        metric("contrast", "n_passing_kl", n_pass["kl"]),
        metric("contrast", "n_passing_induce", n_pass["induce"]),
        metric("contrast", "n_fit", len(pos_fit)),
        metric("contrast", "n_val", len(pos_val)),
        metric("contrast", "n_test", len(pos_test)),
        metric("contrast", "rate_positive", rate_b, n=len(pos_test)),
        metric(
            "contrast", "rate_positive_ablated", rate_a, n=len(pos_test), higher_is_better=False
        ),
        metric("contrast", "rate_negative", rate_n, n=len(neg_test), higher_is_better=False),
        metric(
            "contrast",
            "refusal_gap",
            rate_b - rate_n,
            stderr=gap_se,
            n=min(len(pos_test), len(neg_test)),
            higher_is_better=True,
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
    curves = []
    for name, key, unit in (
        ("KL on harmless validation prompts under ablation", "kl", "KL (nats)"),
        ("behaviour score on harmful validation prompts under ablation", "score", "log-odds"),
        ("induce score on harmless validation prompts (r added)", "induce", "log-odds"),
    ):
        for i in positions:
            cs = [c for c in cands if c["position"] == i]
            curves.append(
                series(
                    f"real LM: direction selection, {name}",
                    [c["layer"] for c in cs],
                    [c[key] for c in cs],
                    "layer",
                    f"{unit} | position {i}",
                )
            )
    curves += [
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
    ap.add_argument(
        "--steer-out",
        help="write the selected direction as a steer file (.pt) of lm-eval's `steered` model",
    )
    run_job(ap, run, argv, errors=(ValueError, IndexError, FileNotFoundError))


if __name__ == "__main__":
    main()
