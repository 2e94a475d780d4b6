"""Build realignment artifacts and decode them (one job each, ``claimbench.job``):

    python -m methods.realign.train trra --scale S --paper realign --variant trra-lam2 \\
        --out DIR --ref R --aligned A --lam 2 --direction forward --mode vocab \\
        --train train.jsonl --test test_id.jsonl --record train.json --decode-out decode.json
    python -m methods.realign.train inra ... --runs results/runs/<scale>/realign
    python -m methods.realign.train sft ...   (the efficient aligned model)

Settings come from the job's ``papers.realign`` section (``trra``, ``inra``, ``aligned_sft``,
``decode``, ``families``); the command line names the files and what a wildcard picks (the
lambda, direction and mode of one TrRa run). TrRa (README.md, Eq. 2; the paper's
Table 1):
student initialised from pi_ref, teacher-forced on fixed slow-style traces (the world's long
forms, off-policy), loss = KL between the fused teacher softmax(lam z_A + (1 - lam) z_ref) and
the student; TrRa-iter (Table 1's iter rows) passes a previous TrRa artifact as ``--aligned``. InRa
(README.md, Eqs. 3-4; Table 9): expand pi_ref with an identity copy of layer 0, train only that layer by SFT on
fast-style (short) demonstrations, decode both paths at each lambda of ``inra.lambdas`` (and
0). Every run writes the artifact (``save_pretrained``), a ``train`` record with the loss curve
and ``realign_decode`` records; meta.json is written last. Equations: README.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.posttrain.cli import save_artifact, set_demonstrations, set_problems
from methods.posttrain.engine import (
    drop_checkpoints,
    is_main_process,
    job_engine_kwargs,
    save_pretrained,
)
from methods.posttrain.loops import SFTObjective, train_demos
from methods.posttrain.models import check_same_tokenizer, load_model, read_meta
from methods.posttrain.rewards import demonstration, load_problems
from methods.posttrain.tokens import Batch, shifted_logits
from methods.realign.evaluate import (
    decode_config,
    decode_mixed,
    decode_record_path,
    decode_single,
    lam_name,
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
    or ``nocheck`` = the long trace with its check sentence dropped (the efficient aligned
    model of our arithmetic world: it still reasons, without the slow model's verification)."""
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


TRAIN_KEYS = ("steps", "minibatch", "lr", "warmup_steps", "dataset", "prompt_format")


def train_config(job: Job, section: str) -> dict:
    """The run record's config of a training job: the section's training settings (InRa: and its
    demonstration form), the families and the decode settings (the object the workflow always
    passed, so that run ids stay the same). ``sft`` records the whole ``aligned_sft``."""
    c = job.config
    if section == "aligned_sft":
        return {**c["aligned_sft"], "families": c["families"]}
    keys = TRAIN_KEYS + (("form",) if section == "inra" else ())
    return {
        **{k: v for k, v in c[section].items() if k in keys},
        "families": c["families"],
        "decode": c["decode"],
    }


def _train_record(job: Job, cfg, metrics, curves, base_name, method) -> None:
    rec = job.record(
        method=method,
        base_model=base_name,
        suite="train",
        tasks=sorted({m["task"] for m in metrics}) or ["train"],
        config=cfg,
        metrics=metrics,
        series=curves,
        task_hashes={"train": sha256_file(job.args.train)[:16]},
    )
    job.write_record(rec, job.args.record)


def _load(job: Job, path: str, trainable: bool = False):
    return load_model(path, trainable=trainable, device=job.device, dtype=job.torch_dtype)


def run_trra(job: Job) -> None:
    args = job.args
    if not args.aligned:
        raise ValueError("trra needs --aligned (the aligned model, or C for TrRa-iter)")
    cfg = train_config(job, "trra")
    lam = check_lambda(args.lam)
    student, tok = _load(job, args.ref, trainable=True)
    student.requires_grad_(True)
    ref, tok_r = _load(job, args.ref)
    aligned, tok_a = _load(job, args.aligned)
    check_same_tokenizer(tok, tok_a, "aligned model")
    if cfg.get("dataset"):  # the paper scale: long-CoT traces of the paper's data set
        rows = set_problems(job, tok, cfg["dataset"], cfg.get("prompt_format", "plain"))
        pr, co = set_demonstrations(rows, cfg["dataset"])
    else:
        pr, co = demos(args.train, cfg["families"], "long")  # fixed slow-style traces
    obj = TrRaObjective(ref, aligned, lam, args.direction, args.mode)
    # the paper scale's engine (accelerate; checkpoints and resume); {} at tiny and small
    run_meta: dict = {}
    ek = job_engine_kwargs(job, run_meta)
    rows = train_demos(
        student,
        tok,
        pr,
        co,
        obj,
        steps=cfg["steps"],
        minibatch=cfg["minibatch"],
        lr=cfg["lr"],
        warmup_steps=cfg["warmup_steps"],
        seed=job.seed,
        **ek,
    )
    if ek:
        save_pretrained(ek, student, tok, job.out)
        if not is_main_process(ek):
            return  # rank 0 decodes and writes the records and meta.json
        student = ek["engine"].accelerator.unwrap_model(student)
        atomic_write_jsonl(Path(job.out) / "train_log.jsonl", rows)
    else:
        save_artifact(student, tok, job.out, rows)
    prov = job.provenance()
    base_name = read_meta(args.ref).get("name", "ref")
    run_cfg = {**cfg, "lambda": lam, "direction": args.direction, "mode": args.mode}
    metrics = [metric("train", "final_loss", sum(r["loss"] for r in rows[-5:]) / len(rows[-5:]))]
    _train_record(job, run_cfg, metrics, [_loss_series(rows, "TrRa loss")], base_name, "trra")
    problems = test_problems(args.test, cfg["families"], cfg["decode"].get("limit"))
    dec = decode_single(student, tok, problems, cfg["decode"])
    write_decode_record(
        job,
        args.decode_out,
        problems=problems,
        dec=dec,
        method="trra",
        base_model=base_name,
        config={
            **decode_config(job),
            "decode": "greedy",
            "paths": 1,
            "lambda": lam,
            "direction": args.direction,
            "mode": args.mode,
        },
        test_path=args.test,
        ref_record=args.ref_record or None,
    )
    job.write_meta(
        method="trra",
        base_model=base_name,
        inputs={
            args.ref: fingerprint(args.ref),
            args.aligned: fingerprint(args.aligned),
            args.train: sha256_file(args.train)[:16],
        },
        config=run_cfg,
        provenance=prov,
        **run_meta,
    )
    drop_checkpoints(ek)


@torch.no_grad()
def max_logit_diff(a, b, tok, prompts: list[str]) -> float:
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = enc.to(next(a.parameters()).device)
    la = a(**enc).logits
    lb = b(**enc).logits
    m = enc["attention_mask"].bool()
    return float((la - lb).abs()[m].max())


def inra_lambdas(job: Job) -> list[float]:
    """InRa's decoded lambdas: ``inra.lambdas`` and 0 (the token-for-token identity check)."""
    return sorted({0.0, *(check_lambda(x) for x in job.config["inra"]["lambdas"])})


def run_inra(job: Job) -> None:
    args = job.args
    cfg = train_config(job, "inra")
    lams = inra_lambdas(job)
    problems = test_problems(args.test, cfg["families"], cfg["decode"].get("limit"))
    prompts = [p["prompt"] for p in problems]
    ref, tok = _load(job, args.ref)
    expanded = expand_with_adapter(ref)
    check_adapter(ref, expanded)
    init_diff = max_logit_diff(expanded, ref, tok, prompts[:32])
    n_train = freeze_all_but_adapter(expanded)
    expanded.train()
    pr, co = demos(args.train, cfg["families"], cfg["form"])  # fast-style demos
    rows = train_demos(
        expanded,
        tok,
        pr,
        co,
        SFTObjective(),
        steps=cfg["steps"],
        minibatch=cfg["minibatch"],
        lr=cfg["lr"],
        warmup_steps=cfg["warmup_steps"],
        seed=job.seed,
    )
    save_artifact(expanded, tok, job.out, rows)
    prov = job.provenance()
    base_name = read_meta(args.ref).get("name", "ref")
    n_total = sum(p.numel() for p in expanded.parameters())
    metrics = [
        metric("train", "final_loss", sum(r["loss"] for r in rows[-5:]) / len(rows[-5:])),
        metric("identity", "init_max_abs_logit_diff", init_diff, n=min(32, len(prompts))),
        metric("train", "trainable_fraction", n_train / n_total),
    ]
    _train_record(
        job, cfg, metrics, [_loss_series(rows, "InRa adapter SFT loss")], base_name, "inra"
    )
    ref_dec = decode_single(ref, tok, problems, cfg["decode"])  # for the token-for-token check
    paths = AdapterPaths(expanded)
    path_u = (expanded, lambda: paths.path("U"))
    path_a = (expanded, lambda: paths.path("A"))
    for lam in lams:
        variant = f"inra-lam{lam_name(lam)}"
        t0 = job.wall_s
        dec = decode_mixed(path_u, path_a, lam, tok, problems, cfg["decode"])
        same = [
            a == b and x == y
            for a, b, x, y in zip(
                dec.texts, ref_dec.texts, dec.n_tokens, ref_dec.n_tokens, strict=True
            )
        ]
        write_decode_record(
            job,
            decode_record_path(args.runs, variant),
            problems=problems,
            dec=dec,
            method="inra",
            variant=variant,
            base_model=base_name,
            config={**decode_config(job), "decode": "greedy", "paths": 2, "lambda": lam},
            test_path=args.test,
            ref_record=args.ref_record or None,
            extra=[metric("all", "identical_to_ref", sum(same) / len(same), n=len(same))],
            wall_s=job.wall_s - t0,
        )
    paths.close()
    job.write_meta(
        method="inra",
        base_model=base_name,
        inputs={
            args.ref: fingerprint(args.ref),
            args.train: sha256_file(args.train)[:16],
        },
        config=cfg,
        adapter={"position": 0, "zeroed": ["self_attn.o_proj", "mlp.down_proj"]},
        provenance=prov,
    )


def run_sft(job: Job) -> None:
    """The efficient aligned model: SFT of the reference on fast-style demonstrations."""
    args = job.args
    cfg = train_config(job, "aligned_sft")
    model, tok = _load(job, args.ref, trainable=True)
    model.requires_grad_(True)
    pr, co = demos(args.train, cfg["families"], cfg["form"])
    rows = train_demos(
        model,
        tok,
        pr,
        co,
        SFTObjective(),
        steps=cfg["steps"],
        minibatch=cfg["minibatch"],
        lr=cfg["lr"],
        warmup_steps=cfg["warmup_steps"],
        seed=job.seed,
    )
    save_artifact(model, tok, job.out, rows)
    prov = job.provenance()
    base_name = read_meta(args.ref).get("name", "ref")
    metrics = [metric("train", "final_loss", sum(r["loss"] for r in rows[-5:]) / len(rows[-5:]))]
    _train_record(job, cfg, metrics, [_loss_series(rows, "SFT loss")], base_name, "sft")
    job.write_meta(
        method="sft",
        base_model=base_name,
        inputs={
            args.ref: fingerprint(args.ref),
            args.train: sha256_file(args.train)[:16],
        },
        config=cfg,
        provenance=prov,
    )


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["realign"], out="the artifact folder this job writes")
    ap.add_argument("what", choices=["trra", "inra", "sft"])
    ap.add_argument("--ref", required=True, help="the reference model's artifact folder")
    ap.add_argument("--train", required=True, help="arithmetic-world training problems (JSONL)")
    ap.add_argument("--record", required=True, help="the train run record this job writes")
    ap.add_argument("--test", default="", help="test problems (trra, inra: decoded after training)")
    ap.add_argument("--decode-out", default="", help="trra: its realign_decode record")
    ap.add_argument("--runs", default="", help="inra: folder of the <variant>/ decode records")
    ap.add_argument("--aligned", default="", help="trra: the aligned model (TrRa-iter: C)")
    ap.add_argument("--lam", default="1.0", help="trra: lambda of this run")
    ap.add_argument("--direction", default="forward", choices=DIRECTIONS, help="trra: KL")
    ap.add_argument("--mode", default="vocab", choices=MODES, help="trra: loss mode")
    ap.add_argument("--ref-record", default="", help="the reference's decode record")
    runs = {"trra": run_trra, "inra": run_inra, "sft": run_sft}
    run_job(ap, lambda job: runs[job.args.what](job), argv)


if __name__ == "__main__":
    main()
