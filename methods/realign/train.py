"""Build realignment artifacts and decode them:

    python -m methods.realign.train trra --ref R --aligned A --lam 2 --direction forward \\
        --mode vocab --train train.jsonl --test test_id.jsonl --config JSON --out DIR ...
    python -m methods.realign.train inra --ref R --train ... --lams -0.25,0.5,1 --decode-out ...

TrRa (spec 3.1): student initialised from pi_ref, teacher-forced on fixed slow-style traces
(the world's long forms, off-policy), loss = KL between the fused teacher
softmax(lam z_A + (1 - lam) z_ref) and the student; TrRa-iter passes a previous TrRa artifact as
``--aligned`` (spec 3.2). InRa (spec 4): expand pi_ref with an identity copy of layer 0, train
only that layer by SFT on fast-style (short) demonstrations, decode both paths at each lambda.
Every run writes the artifact (``save_pretrained``), a ``train`` record with the loss curve and
``realign_decode`` records; meta.json is written last.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_json, sha256_file
from claimbench.records import make_run_record, metric, series, write_run_record
from methods.posttrain.cli import save_artifact
from methods.posttrain.loops import SFTObjective, train_demos
from methods.posttrain.models import check_same_tokenizer, load_model, read_meta
from methods.posttrain.rewards import demonstration, load_problems
from methods.posttrain.tokens import Batch, shifted_logits
from methods.realign.evaluate import (
    decode_mixed,
    decode_single,
    lam_name,
    parse_lams,
    test_problems,
    write_decode_record,
)
from methods.realign.fusion import (
    DIRECTIONS,
    MODES,
    check_lambda,
    fused_logits,
    trra_loss,
    trra_loss_code_faithful,
)
from methods.realign.inra import (
    AdapterPaths,
    check_adapter,
    expand_with_adapter,
    freeze_all_but_adapter,
)


class TrRaObjective:
    """Per-token objective for ``posttrain.loops.train_demos``: the fused teacher is computed
    once per mini-batch (no grad) from the frozen reference and aligned models."""

    name = "trra"

    def __init__(self, ref, aligned, lam: float, direction: str = "forward", mode: str = "vocab"):
        if direction not in DIRECTIONS:
            raise ValueError(f"TrRa direction must be one of {DIRECTIONS}, got {direction!r}")
        if mode not in MODES:
            raise ValueError(f"TrRa mode must be one of {MODES}, got {mode!r}")
        self.ref, self.aligned = ref, aligned
        self.lam, self.direction, self.mode = check_lambda(lam), direction, mode

    def snapshot(self, model, batch: Batch) -> dict:
        with torch.no_grad():
            z_ref = shifted_logits(self.ref, batch)
            z_a = shifted_logits(self.aligned, batch)
            return {"teacher": fused_logits(z_a, z_ref, self.lam)}

    def loss(self, logits, batch: Batch, snap: dict):
        teacher = snap["teacher"]
        if self.mode == "vocab":
            return trra_loss(logits, teacher, batch.loss_mask, self.direction), {}
        # code_faithful: each sequence alone (the code's per-device batch of 1, accumulated),
        # all its positions (no mask; shifted[:, 1:] = the model's raw logits at 0..n-2).
        losses = []
        for b in range(len(batch)):
            n = int(batch.attention_mask[b].sum())
            losses.append(trra_loss_code_faithful(logits[b : b + 1, 1:n], teacher[b : b + 1, 1:n]))
        with torch.no_grad():
            kl = trra_loss(logits, teacher, batch.loss_mask, "forward")
        return torch.stack(losses).mean(), {"vocab_forward_kl": float(kl)}


FORMS = ("long", "short", "nocheck")
_CHECK = re.compile(r" Check: [^.]*\.")


def demonstration_form(problem: dict, form: str) -> tuple[str, str]:
    """(prompt, completion): the world's ``long`` (slow: steps + check block) or ``short`` form,
    or ``nocheck`` = the long trace with its check sentence dropped (spec 8: "SFT on a mix
    where the check block is dropped", the efficient aligned model that still reasons)."""
    if form not in FORMS:
        raise ValueError(f"demonstration form must be one of {FORMS}, got {form!r}")
    if form != "nocheck":
        return demonstration(problem, form)
    prompt, long = demonstration(problem, "long")
    return prompt, _CHECK.sub("", long)


def demos(path: str, families, form: str) -> tuple[list[str], list[str]]:
    rows = load_problems(path, families)
    pr, co = zip(*[demonstration_form(p, form) for p in rows], strict=True)
    return list(pr), list(co)


def fingerprint(path: str) -> str:
    """Content hash of a model folder's weights, or what its meta.json loads (linked bases)."""
    weights = Path(path) / "model.safetensors"
    if weights.is_file():
        return sha256_file(weights)[:16]
    load = read_meta(path).get("load") or {}
    return str(load.get("hub_id") or load.get("path") or path)


def _loss_series(rows: list[dict], name: str) -> dict:
    return series(name, [r["step"] for r in rows], [r["loss"] for r in rows], "step", "loss")


def _write_train_record(args, cfg, rows, metrics, curves, base_name, prov, method) -> None:
    rec = make_run_record(
        scale=args.scale,
        paper="realign",
        method=method,
        variant=args.variant,
        base_model=base_name,
        suite="train",
        tasks=sorted({m["task"] for m in metrics}) or ["train"],
        seed=args.seed,
        config=cfg,
        metrics=metrics,
        provenance=prov,
        series=curves,
        task_hashes={"train": sha256_file(args.train)[:16]},
    )
    write_run_record(args.record, rec)


def run_trra(args, cfg) -> None:
    lam = check_lambda(args.lam)
    with provenance.timed() as t:
        student, tok = load_model(args.ref, trainable=True, device=args.device)
        student.requires_grad_(True)
        ref, tok_r = load_model(args.ref, device=args.device)
        aligned, tok_a = load_model(args.aligned, device=args.device)
        check_same_tokenizer(tok, tok_a, "aligned model")
        pr, co = demos(args.train, cfg.get("families"), "long")  # fixed slow-style traces
        obj = TrRaObjective(ref, aligned, lam, args.direction, args.mode)
        rows = train_demos(
            student,
            tok,
            pr,
            co,
            obj,
            steps=cfg["steps"],
            minibatch=cfg["minibatch"],
            lr=cfg["lr"],
            warmup_steps=cfg.get("warmup_steps", 0),
            seed=args.seed,
        )
        save_artifact(student, tok, Path(args.out), rows)
    prov = provenance.capture(t["started_at"], t["wall_s"])
    base_name = read_meta(args.ref).get("name", "ref")
    run_cfg = {**cfg, "lambda": lam, "direction": args.direction, "mode": args.mode}
    metrics = [metric("train", "final_loss", sum(r["loss"] for r in rows[-5:]) / len(rows[-5:]))]
    _write_train_record(
        args, run_cfg, rows, metrics, [_loss_series(rows, "TrRa loss")], base_name, prov, "trra"
    )
    problems = test_problems(args.test, cfg.get("families"), cfg["decode"].get("limit"))
    with provenance.timed() as t:
        dec = decode_single(student, tok, problems, cfg["decode"])
    write_decode_record(
        args.decode_out,
        problems=problems,
        dec=dec,
        scale=args.scale,
        method="trra",
        variant=args.variant,
        base_model=base_name,
        seed=args.seed,
        config={
            **cfg["decode"],
            "families": cfg.get("families"),
            "decode": "greedy",
            "paths": 1,
            "lambda": lam,
            "direction": args.direction,
            "mode": args.mode,
        },
        test_path=args.test,
        started_at=t["started_at"],
        wall_s=t["wall_s"],
        ref_record=args.ref_record or None,
    )
    atomic_write_json(
        Path(args.out) / "meta.json",
        {
            "name": args.variant,
            "method": "trra",
            "paper": "realign",
            "base_model": base_name,
            "inputs": {
                args.ref: fingerprint(args.ref),
                args.aligned: fingerprint(args.aligned),
                args.train: sha256_file(args.train)[:16],
            },
            "seed": args.seed,
            "config": run_cfg,
            "provenance": prov,
        },
    )


@torch.no_grad()
def max_logit_diff(a, b, tok, prompts: list[str]) -> float:
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    la = a(**enc).logits
    lb = b(**enc).logits
    m = enc["attention_mask"].bool()
    return float((la - lb).abs()[m].max())


def run_inra(args, cfg) -> None:
    lams = parse_lams(args.lams)
    outs = args.decode_out.split(",")
    if len(outs) != len(lams):
        raise ValueError(f"inra: {len(lams)} lambdas but {len(outs)} decode records")
    problems = test_problems(args.test, cfg.get("families"), cfg["decode"].get("limit"))
    prompts = [p["prompt"] for p in problems]
    with provenance.timed() as t:
        ref, tok = load_model(args.ref, device=args.device)
        expanded = expand_with_adapter(ref)
        check_adapter(ref, expanded)
        init_diff = max_logit_diff(expanded, ref, tok, prompts[:32])
        n_train = freeze_all_but_adapter(expanded)
        expanded.train()
        pr, co = demos(args.train, cfg.get("families"), cfg["form"])  # fast-style demos
        rows = train_demos(
            expanded,
            tok,
            pr,
            co,
            SFTObjective(),
            steps=cfg["steps"],
            minibatch=cfg["minibatch"],
            lr=cfg["lr"],
            warmup_steps=cfg.get("warmup_steps", 0),
            seed=args.seed,
        )
        save_artifact(expanded, tok, Path(args.out), rows)
    prov = provenance.capture(t["started_at"], t["wall_s"])
    base_name = read_meta(args.ref).get("name", "ref")
    n_total = sum(p.numel() for p in expanded.parameters())
    metrics = [
        metric("train", "final_loss", sum(r["loss"] for r in rows[-5:]) / len(rows[-5:])),
        metric("identity", "init_max_abs_logit_diff", init_diff, n=min(32, len(prompts))),
        metric("train", "trainable_fraction", n_train / n_total),
    ]
    _write_train_record(
        args,
        cfg,
        rows,
        metrics,
        [_loss_series(rows, "InRa adapter SFT loss")],
        base_name,
        prov,
        "inra",
    )
    ref_dec = decode_single(ref, tok, problems, cfg["decode"])  # for the token-for-token check
    paths = AdapterPaths(expanded)
    path_u = (expanded, lambda: paths.path("U"))
    path_a = (expanded, lambda: paths.path("A"))
    for lam, out in zip(lams, outs, strict=True):
        with provenance.timed() as t:
            dec = decode_mixed(path_u, path_a, lam, tok, problems, cfg["decode"])
        same = [
            a == b and x == y
            for a, b, x, y in zip(
                dec.texts, ref_dec.texts, dec.n_tokens, ref_dec.n_tokens, strict=True
            )
        ]
        write_decode_record(
            out,
            problems=problems,
            dec=dec,
            scale=args.scale,
            method="inra",
            variant=f"inra-lam{lam_name(lam)}",
            base_model=base_name,
            seed=args.seed,
            config={
                **cfg["decode"],
                "families": cfg.get("families"),
                "decode": "greedy",
                "paths": 2,
                "lambda": lam,
            },
            test_path=args.test,
            started_at=t["started_at"],
            wall_s=t["wall_s"],
            ref_record=args.ref_record or None,
            extra=[metric("all", "identical_to_ref", sum(same) / len(same), n=len(same))],
        )
    paths.close()
    atomic_write_json(
        Path(args.out) / "meta.json",
        {
            "name": args.variant,
            "method": "inra",
            "paper": "realign",
            "base_model": base_name,
            "inputs": {
                args.ref: fingerprint(args.ref),
                args.train: sha256_file(args.train)[:16],
            },
            "seed": args.seed,
            "config": cfg,
            "adapter": {"position": 0, "zeroed": ["self_attn.o_proj", "mlp.down_proj"]},
            "provenance": prov,
        },
    )


def run_sft(args, cfg) -> None:
    """The efficient aligned model: SFT of the reference on fast-style demonstrations."""
    with provenance.timed() as t:
        model, tok = load_model(args.ref, trainable=True, device=args.device)
        model.requires_grad_(True)
        pr, co = demos(args.train, cfg.get("families"), cfg["form"])
        rows = train_demos(
            model,
            tok,
            pr,
            co,
            SFTObjective(),
            steps=cfg["steps"],
            minibatch=cfg["minibatch"],
            lr=cfg["lr"],
            warmup_steps=cfg.get("warmup_steps", 0),
            seed=args.seed,
        )
        save_artifact(model, tok, Path(args.out), rows)
    prov = provenance.capture(t["started_at"], t["wall_s"])
    base_name = read_meta(args.ref).get("name", "ref")
    metrics = [metric("train", "final_loss", sum(r["loss"] for r in rows[-5:]) / len(rows[-5:]))]
    _write_train_record(
        args, cfg, rows, metrics, [_loss_series(rows, "SFT loss")], base_name, prov, "sft"
    )
    atomic_write_json(
        Path(args.out) / "meta.json",
        {
            "name": args.variant,
            "method": "sft",
            "paper": "realign",
            "base_model": base_name,
            "inputs": {
                args.ref: fingerprint(args.ref),
                args.train: sha256_file(args.train)[:16],
            },
            "seed": args.seed,
            "config": cfg,
            "provenance": prov,
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("what", choices=["trra", "inra", "sft"])
    for a in ("--ref", "--train", "--config", "--out", "--variant", "--record"):
        ap.add_argument(a, required=True)
    ap.add_argument("--test", default="")
    ap.add_argument("--decode-out", default="", help="decode record(s); inra: one per lambda")
    ap.add_argument("--aligned", default="")
    ap.add_argument("--lam", default="1.0")
    ap.add_argument("--lams", default="")
    ap.add_argument("--direction", default="forward")
    ap.add_argument("--mode", default="vocab")
    ap.add_argument("--ref-record", default="")
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = json.loads(args.config)
    with exit_on_user_error(ValueError, FileNotFoundError):
        if args.what == "trra":
            if not args.aligned:
                raise ValueError("trra needs --aligned (the aligned model, or C for TrRa-iter)")
            run_trra(args, cfg)
        elif args.what == "inra":
            run_inra(args, cfg)
        else:
            run_sft(args, cfg)


if __name__ == "__main__":
    main()
