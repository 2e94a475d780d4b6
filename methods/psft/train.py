"""Train one arm of the PSFT comparison from a start model on arithmetic-world demonstrations:
``python -m methods.psft.train <job options> --arm {sft,psft,sft_kl,sft_lowlr,psft_warmup}
--start A --train train.jsonl --valid valid.jsonl --record train.json [--ood test_ood.jsonl]``;
the settings are the scale file's ``papers.psft.train``.

With ``train.demos`` the arm trains on a fixed seeded pool of that many demonstrations (several
epochs over a small demo set, the paper's regime); with ``train.select`` the arm's checkpoint is
selected on validation (greedy exact match on held-out in-domain problems every ``every`` steps,
the best kept, ties to the earlier step; methods/psft/README.md) and the selected checkpoint is
the artifact.

Writes the artifact (``save_pretrained`` folder, ``train_log.jsonl``, ``meta.json`` last) and a
run record (suite ``train``) with the final teacher-forced entropy / KL to the start model, the
selected checkpoint's numbers, and the training curves (entropy, clip fraction, KL to start,
validation exact match) as ``series``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from tqdm.auto import tqdm

from claimbench.io import atomic_write_jsonl, sha256_file, stable_hash
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.posttrain.cli import save_artifact
from methods.posttrain.engine import (
    drop_checkpoints,
    is_main_process,
    job_engine_kwargs,
    save_pretrained,
)
from methods.posttrain.loops import (
    SFTKLObjective,
    SFTObjective,
    eval_demo_stats,
    greedy_scores,
    problem_lines,
    train_demos,
    valid_rows,
)
from methods.posttrain.models import load_model, read_meta
from methods.posttrain.rewards import demonstration, load_problems
from methods.posttrain.tokens import encode_pairs
from methods.psft.objective import PSFTObjective, WarmupPSFTObjective

ARMS = ("sft", "psft", "sft_kl", "sft_lowlr", "psft_warmup")


def build_objective(arm: str, cfg: dict, start_model):
    if arm in ("sft", "sft_lowlr"):
        return SFTObjective()
    if arm == "psft":
        return PSFTObjective(cfg["eps_low"], cfg["eps_high"])
    if arm == "sft_kl":
        return SFTKLObjective(start_model, cfg["kl_coef"])
    if arm == "psft_warmup":
        return WarmupPSFTObjective(
            cfg["psft_warmup_steps"], cfg["inner_steps"], cfg["eps_low"], cfg["eps_high"]
        )
    raise ValueError(f"unknown PSFT arm {arm!r} (known: {', '.join(ARMS)})")


def demo_pool(problems: list[dict], n: int | None, seed: int) -> list[dict]:
    """The demonstrations an arm trains on: all of them, or a seeded pool of ``n`` (the same
    pool for every arm of a seed), so that ``steps * minibatch / n`` epochs pass over it."""
    if n is None:
        return problems
    if n > len(problems):
        raise ValueError(f"papers.psft.train.demos: {n} is more than the {len(problems)} problems")
    return random.Random(seed).sample(problems, n)


class ValidationSelector:
    """Checkpoint selection on validation through ``train_demos``'s ``log`` callback: every
    ``every`` steps (and at the last step) greedy exact match on held-out in-domain problems;
    the best state is kept in memory (ties go to the earlier step)."""

    def __init__(self, model, tok, problems: list[dict], every: int, last: int, max_new: int):
        self.model, self.tok, self.problems = model, tok, problems
        self.every, self.last, self.max_new = every, last, max_new
        self.best_acc, self.best_step, self.best_state = -1.0, 0, None
        self.history: list[tuple[int, float]] = []
        self.bar = tqdm(total=last, desc="psft", mininterval=2.0, dynamic_ncols=True)

    def __call__(self, row: dict) -> None:
        self.bar.update(1)
        if row["step"] % self.every and row["step"] != self.last:
            return
        was = self.model.training
        acc, _ = greedy_scores(self.model, self.tok, self.problems, self.max_new)
        self.model.train(was)
        row["valid_em"] = acc["accuracy"]
        self.history.append((row["step"], acc["accuracy"]))
        if acc["accuracy"] > self.best_acc:
            self.best_acc, self.best_step = acc["accuracy"], row["step"]
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self) -> None:
        self.bar.close()
        self.model.load_state_dict(self.best_state)


def dataset_demos(scale_config: dict, cfg: dict, tok, seed: int):
    """Demonstrations from the scale's data set ``train.dataset`` (rows with a ``completion``,
    e.g. OpenR1-Math's R1 solutions), prompted through ``train.prompt_format``: the training
    pool (``train.demos`` rows, seeded; absent: all but the held-out rows) and the
    ``eval_batch`` rows held out for the entropy / KL curves (the data set's last rows)."""
    from methods.posttrain.data import format_prompt, load_named

    rows = [r for r in load_named(scale_config, cfg["dataset"]) if r.get("completion")]
    k = cfg["eval_batch"]
    if len(rows) <= k:
        raise ValueError(
            f"papers.psft.train.dataset: {cfg['dataset']!r} has {len(rows)} demonstrations, "
            f"not more than eval_batch = {k}"
        )
    pool = demo_pool(rows[:-k], cfg.get("demos"), seed)

    def pairs(rs):
        ps = [format_prompt(tok, r["prompt"], cfg["prompt_format"]) for r in rs]
        return ps, [r["completion"] for r in rs]

    return pool, pairs(pool), pairs(rows[-k:])


def _em_metric(task: str, acc: dict):
    p = acc["accuracy"]
    return metric(
        task,
        "greedy_exact_match",
        p,
        stderr=(p * (1 - p) / acc["n"]) ** 0.5,
        n=acc["n"],
        higher_is_better=True,
    )


def run(job: Job) -> None:
    args, cfg = job.args, job.config["train"]
    arm = args.arm
    if arm not in ARMS:
        raise ValueError(f"unknown PSFT arm {arm!r} (known: {', '.join(ARMS)})")
    lr = cfg["lr"] * (cfg["lowlr_factor"] if arm == "sft_lowlr" else 1.0)
    model, tok = load_model(args.start, trainable=True, device=job.device, dtype=job.torch_dtype)
    model.requires_grad_(True)
    # the frozen start model: SFT-KL's reference and the KL-to-start of every arm's curves
    start, _ = load_model(args.start, device=job.device, dtype=job.torch_dtype)
    if cfg.get("dataset"):  # paper scale: the paper's data set (methods/posttrain/DATA.md)
        train, (prompts, comps), (vp, vc) = dataset_demos(job.scale_config, cfg, tok, job.seed)
    else:
        train = demo_pool(
            load_problems(args.train, cfg.get("families")), cfg.get("demos"), job.seed
        )
        prompts, comps = zip(*[demonstration(p, cfg["form"]) for p in train], strict=True)
        valid = load_problems(args.valid, cfg.get("families"), limit=cfg["eval_batch"])
        vp, vc = map(list, zip(*[demonstration(p, cfg["form"]) for p in valid], strict=True))
    eval_batch = encode_pairs(tok, vp, vc).to(model.device)
    sel = cfg.get("select")
    selector = None
    if sel:
        vprobs = load_problems(args.valid, cfg.get("families"), limit=sel["n"])
        selector = ValidationSelector(
            model, tok, vprobs, sel["every"], cfg["steps"], sel["max_new_tokens"]
        )
    # the paper scale's engine (accelerate; checkpoints and resume); {} at tiny and small
    run_meta: dict = {}
    ek = job_engine_kwargs(job, run_meta)
    if ek and selector:
        raise ValueError(
            f"papers.psft.train.select: {sel!r}: checkpoint selection keeps whole-model copies "
            "in memory and runs on the plain loop only (tiny, small); drop it with an engine"
        )
    rows = train_demos(
        model,
        tok,
        list(prompts),
        list(comps),
        build_objective(arm, cfg, start),
        steps=cfg["steps"],
        minibatch=cfg["minibatch"],
        inner_steps=cfg["inner_steps"],
        lr=lr,
        weight_decay=cfg["weight_decay"],
        warmup_steps=cfg["warmup_steps"],
        grad_clip=cfg["grad_clip"],
        seed=job.seed,
        eval_batch=eval_batch,
        start_model=start,
        eval_every=cfg["eval_every"],
        log=selector,
        **ek,
    )
    if ek:
        save_pretrained(ek, model, tok, job.out)
        if not is_main_process(ek):
            return  # rank 0 evaluates and writes the record and meta.json
        model = ek["engine"].accelerator.unwrap_model(model)
    extra, curves_sel, samples = [], [], None
    if selector:
        selector.restore()  # the artifact is the checkpoint selected on validation
        at = eval_demo_stats(model, start, eval_batch)
        extra += [
            metric("train", "selected_step", selector.best_step),
            metric(
                "valid_select",
                "greedy_exact_match",
                selector.best_acc,
                n=len(selector.problems),
                higher_is_better=True,
            ),
            metric("demo_valid", "entropy_selected", at["entropy"], n=eval_batch.n_tokens),
            metric(
                "demo_valid",
                "log_entropy_selected",
                math.log(max(at["entropy"], 1e-12)),
                n=eval_batch.n_tokens,
            ),
            metric(
                "demo_valid",
                "kl_to_start_selected",
                at["kl_to_start"],
                n=eval_batch.n_tokens,
                higher_is_better=False,
            ),
        ]
        curves_sel.append(
            series(
                "validation exact match (checkpoint selection)",
                [h[0] for h in selector.history],
                [h[1] for h in selector.history],
                "step",
                "greedy exact match",
            )
        )
    if args.ood:  # the selected checkpoint on the held-out families, in-process, per document
        acc, per_doc = greedy_scores(
            model, tok, load_problems(args.ood), (sel or {}).get("max_new_tokens", 64)
        )
        extra.append(_em_metric("ood", acc))
        samples = Path(args.record).with_suffix(".samples.jsonl")
        atomic_write_jsonl(samples, valid_rows("ood", per_doc, problem_lines(args.ood)))
    out = job.out
    if ek:
        atomic_write_jsonl(Path(out) / "train_log.jsonl", rows)
    else:
        save_artifact(model, tok, out, rows)
    ev = [r for r in rows if "eval_entropy" in r]
    last = ev[-1]
    tokens = sum(r["tokens"] for r in rows)
    cfg_rec = {**cfg, "arm": arm, "effective_lr": lr}
    metrics = [
        metric(
            "demo_valid",
            "entropy_final",
            last["eval_entropy"],
            n=eval_batch.n_tokens,
            higher_is_better=None,
        ),
        metric(
            "demo_valid",
            "log_entropy_final",
            math.log(max(last["eval_entropy"], 1e-12)),
            n=eval_batch.n_tokens,
        ),
        metric(
            "demo_valid",
            "kl_to_start_final",
            last["eval_kl_to_start"],
            n=eval_batch.n_tokens,
            higher_is_better=False,
        ),
        metric("train", "tokens_seen", tokens),
        metric("train", "loss_final", rows[-1]["loss"]),
        metric("train", "demos", len(train)),
        metric("train", "epochs", cfg["steps"] * cfg["minibatch"] / len(train)),
        *extra,
    ]
    curves = [
        series(
            "entropy (valid demos)",
            [r["step"] for r in ev],
            [r["eval_entropy"] for r in ev],
            "step",
            "nats/token",
        ),
        series(
            "KL to start (valid demos)",
            [r["step"] for r in ev],
            [r["eval_kl_to_start"] for r in ev],
            "step",
            "nats/token",
        ),
        series(
            "entropy (train batch)",
            [r["step"] for r in rows],
            [r["train_entropy"] for r in rows],
            "step",
            "nats/token",
        ),
    ]
    curves += curves_sel
    if arm in ("psft", "psft_warmup"):
        tail = rows[-max(1, len(rows) // 5) :]
        metrics += [
            metric("train", "clip_frac_mean", sum(r["clip_frac"] for r in rows) / len(rows)),
            metric("train", "clip_frac_last20", sum(r["clip_frac"] for r in tail) / len(tail)),
            metric("train", "clip_frac_max", max(r["clip_frac"] for r in rows)),
        ]
        curves.append(
            series(
                "clip fraction",
                [r["step"] for r in rows],
                [r["clip_frac"] for r in rows],
                "step",
                "share of tokens",
            )
        )
    prov = job.provenance()
    base_name = read_meta(args.start).get("name", Path(args.start).name)
    rec = job.record(
        suite="train",
        method=arm,
        base_model=base_name,
        tasks=sorted({m["task"] for m in metrics}),
        config=cfg_rec,
        metrics=metrics,
        provenance=prov,
        series=curves,
        task_hashes={
            "train": stable_hash(cfg["dataset"]) if cfg.get("dataset") else sha256_file(args.train),
            "demo_valid": stable_hash([cfg["dataset"], "held-out"])
            if cfg.get("dataset")
            else sha256_file(args.valid),
            **({"valid_select": sha256_file(args.valid)} if selector else {}),
            **({"ood": sha256_file(args.ood)} if args.ood else {}),
        },
        samples=samples.name if samples else None,
    )
    job.write_record(rec, args.record)
    start_meta = Path(args.start) / "meta.json"
    job.write_meta(
        method=arm,
        base_model=base_name,
        inputs={
            args.start: sha256_file(start_meta) if start_meta.is_file() else "",
            args.train: sha256_file(args.train),
        },
        config=cfg_rec,
        tokens_seen=tokens,
        provenance=prov,
        **run_meta,
    )
    drop_checkpoints(ek)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["psft"], out="the artifact folder this arm writes")
    ap.add_argument("--arm", required=True, choices=ARMS, help="which arm of the comparison")
    ap.add_argument("--start", required=True, help="artifact folder of the start model")
    ap.add_argument("--train", required=True, help="arithmetic-world training problems (JSONL)")
    ap.add_argument("--valid", required=True, help="held-out problems: entropy / KL demos")
    ap.add_argument("--record", required=True, help="the train run record this arm writes")
    ap.add_argument(
        "--ood", help="held-out-family problems (JSONL): greedy exact match of the saved model"
    )
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
