"""G-OPD / ExOPD training from a student with one or more frozen teachers and a reference:
``python -m methods.gopd.train <job options> --student S --teacher [name=]T ... --ref R --lam 1.25
--train T --valid V --record R``.

The settings are the scale's ``papers.gopd.train`` (``job.config``). Per step: sample
``prompts_per_step`` prompts (n rollouts each, T = 1, top-p 1) from the student with the KV
cache; per-token log-probs of the sampled tokens under the student (no grad, pi_old), the routed
teacher and pi_ref; A_t from ``methods.gopd.objective`` (paper Eq. 14); one optimiser step on
-token_mean(A_t log pi_theta). The correctness reward is only logged, never trained on.

``--method sft`` runs the baseline SFT on teacher samples instead (``methods.gopd.baselines``):
same prompts, steps, optimiser and lr, no reference. ``--route`` sends each prompt to the
teacher of its family's domain (``papers.gopd.multi_teacher.domains``; the teachers are named by
domain); ``--eval-domains`` adds greedy exact match on the validation problems of each domain
(``valid_<name>``), used by the multi-teacher checks. Validation exact match is written per
document too (``<record>.samples.jsonl`` beside the record; doc id = the problem's line in the
validation file, the same in every arm), so the checks between arms pair document by document.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.gopd.baselines import train_teacher_sft
from methods.gopd.objective import check_lambda, gopd_advantage, gopd_loss, route_teacher
from methods.posttrain.cli import save_artifact
from methods.posttrain.engine import (
    drop_checkpoints,
    is_main_process,
    job_engine_kwargs,
    save_pretrained,
)
from methods.posttrain.loops import greedy_scores, problem_lines, valid_rows
from methods.posttrain.models import check_same_tokenizer, load_model, read_meta
from methods.posttrain.rewards import RewardStats, load_problems, reward_function
from methods.posttrain.sampling import sample, stop_token_ids
from methods.posttrain.tokens import (
    entropy_from_logits,
    gather_logp,
    masked_mean,
    shifted_logits,
    token_logprobs,
)


def train_gopd(
    student,
    tok,
    teachers: dict,
    ref,
    problems: list[dict],
    lam: float,
    cfg: dict,
    seed: int,
    routes: dict | None = None,
    engine=None,
    ckpt_dir=None,
    meta: dict | None = None,
):
    """Returns one log row per optimiser step.

    ``engine`` (methods/posttrain/engine.py, the paper scale) runs each step through
    ``gopd_step`` (the same advantage and loss, micro-batched, distributed) and checkpoints
    every ``checkpoint_every`` steps in ``ckpt_dir``; a rerun resumes there (segments in
    ``meta``). Without it this plain loop runs (tiny, small)."""
    lam = check_lambda(lam)
    if lam != 1.0 and ref is None:
        raise ValueError(f"G-OPD with lambda={lam} needs a reference model (pi_ref)")
    stop = stop_token_ids(tok)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg["lr"], weight_decay=0.0)
    stats = RewardStats()
    rows = []
    policy, start = student, 0
    if engine is not None:
        from methods.posttrain.engine import LoopState, _finish, _maybe_save, _start, gopd_step

        student, opt = engine.prepare(student, opt)
        teachers = {k: engine.prepare_frozen(m) for k, m in teachers.items()}
        ref = engine.prepare_frozen(ref)
        policy = engine.accelerator.unwrap_model(student)  # rollouts: every rank, same seed
        state = LoopState(rng)
        start = last_saved = _start(engine, state, ckpt_dir)
        rows = state.rows
    for step in tqdm(range(cfg["steps"]), desc="g-opd", mininterval=2.0, dynamic_ncols=True):
        if step < start:
            continue  # resumed: the checkpoint restored the rng as it was after these steps
        chosen = [problems[rng.randrange(len(problems))] for _ in range(cfg["prompts_per_step"])]
        ro = sample(
            policy,
            tok,
            [p["prompt"] for p in chosen],
            n=cfg["n"],
            max_new_tokens=cfg["max_new_tokens"],
            temperature=cfg["temperature"],
            seed=seed * 100003 + step,
            stop_ids=stop,
        )
        b, mask = ro.batch, ro.batch.loss_mask
        names = [
            (routes or {}).get(chosen[i]["family"], "teacher") if routes else next(iter(teachers))
            for i in ro.prompt_index
        ]
        if engine is not None:
            row = gopd_step(
                engine,
                student,
                opt,
                b,
                teachers,
                names,
                ref,
                lam,
                grad_clip=cfg.get("grad_clip", 1.0),
            )
            rewards, fails = reward_function(cfg.get("reward", "arith"))(
                ro.texts, [chosen[i]["answer"] for i in ro.prompt_index], stats
            )
            row = {
                "step": step + 1,
                "reward": sum(rewards) / len(rewards),
                "format_failures": int(sum(fails)),
                **{k: v for k, v in row.items() if k != "step"},
            }
            state.rows.append(row)
            last_saved = _maybe_save(engine, state, ckpt_dir, start, step + 1, last_saved)
            continue
        with torch.no_grad():
            old = token_logprobs(student, b)
            t_lp = route_teacher(
                {n: token_logprobs(m, b) for n, m in teachers.items() if n in set(names)}, names
            )
            r_lp = token_logprobs(ref, b) if ref is not None else None
        adv = gopd_advantage(t_lp, old, r_lp, lam) * mask
        student.train()
        logits = shifted_logits(student, b)
        loss = gopd_loss(gather_logp(logits, b.input_ids), adv, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # not a schema default: the key would enter every run's record config (its run id)
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.get("grad_clip", 1.0))
        opt.step()
        # logged only; the paper scale's \boxed{} answers are checked by math-verify
        rewards, fails = reward_function(cfg.get("reward", "arith"))(
            ro.texts, [chosen[i]["answer"] for i in ro.prompt_index], stats
        )
        with torch.no_grad():
            row = {
                "step": step + 1,
                "reward": sum(rewards) / len(rewards),
                "format_failures": int(sum(fails)),
                "entropy": float(masked_mean(entropy_from_logits(logits.detach()), mask)),
                "length": float(mask.sum(1).mean()),
                "adv_mean": float(masked_mean(adv, mask)),
                "adv_abs_max": float((adv.abs() * mask).max()),
                "frac_adv_gt5": float(((adv > 5).float() * mask).sum() / mask.sum()),
            }
            if r_lp is not None:
                row["implicit_reward"] = float((((t_lp - r_lp) * mask).sum(1)).mean())
        rows.append(row)
    if engine is not None:
        _finish(state, meta, start, cfg["steps"])
        rows = state.rows
    student.eval()
    return rows, stats


def _teachers(specs: list[str]) -> dict[str, str]:
    out = {}
    for s in specs:
        name, _, path = s.rpartition("=")
        out[name or "teacher"] = path
    return out


def valid_metric(task: str, acc: dict) -> dict:
    return metric(
        task,
        "greedy_exact_match",
        acc["accuracy"],
        stderr=(acc["accuracy"] * (1 - acc["accuracy"]) / acc["n"]) ** 0.5,
        n=acc["n"],
        higher_is_better=True,
    )


def domain_metrics(model, tok, valid: str, cfg: dict) -> tuple[list[dict], list[dict]]:
    """Greedy exact match on each ``eval_domains`` group of validation problems (metrics,
    per-document rows)."""
    out, rows, lines = [], [], problem_lines(valid)
    for name, fams in sorted((cfg.get("eval_domains") or {}).items()):
        acc, per_doc = greedy_scores(model, tok, load_problems(valid, fams), cfg["max_new_tokens"])
        out.append(valid_metric(f"valid_{name}", acc))
        rows += valid_rows(f"valid_{name}", per_doc, lines)
    return out, rows


def dataset_problems(scale_config: dict, cfg: dict, tok) -> list[dict]:
    """Paper scale: the prompts of the scale's data set ``train.dataset`` (DeepMath-103K,
    difficulty >= 6; methods/posttrain/DATA.md) in ``train.prompt_format`` (Qwen3 non-thinking,
    the boxed instruction after the question). G-OPD trains on the teacher's log-probs only; the
    answers feed the logged (never trained on) correctness curve."""
    from methods.posttrain.data import format_prompt, load_named

    return [
        {
            "id": r["id"],
            "prompt": format_prompt(tok, r["prompt"], cfg["prompt_format"]),
            "answer": r["answer"],
            "family": cfg["dataset"],
        }
        for r in load_named(scale_config, cfg["dataset"])
    ]


def run_config(job: Job) -> dict:
    """The run's settings: ``papers.gopd.train``, plus the multi-teacher routes (family ->
    domain) with ``--route`` and the per-domain validation groups with ``--eval-domains``."""
    cfg = dict(job.config["train"])
    if job.args.route or job.args.eval_domains:
        mt = job.config.get("multi_teacher")
        if not mt:
            raise ValueError(
                f"--route / --eval-domains need papers.gopd.multi_teacher in the {job.scale} scale"
            )
        doms = mt["domains"]
        if job.args.route:
            cfg["routes"] = {f: d for d, fams in doms.items() for f in fams}
        if job.args.eval_domains:
            cfg["eval_domains"] = doms
    return cfg


def run(job: Job) -> None:
    args = job.args
    cfg = run_config(job)
    lam = check_lambda(args.lam) if args.method == "gopd" else None
    load = {"device": job.device, "dtype": job.torch_dtype}
    student, tok = load_model(args.student, trainable=True, **load)
    student.requires_grad_(True)
    teachers = {}
    for name, path in _teachers(args.teacher).items():
        m, ttok = load_model(path, **load)
        check_same_tokenizer(tok, ttok, f"teacher {name}")
        teachers[name] = m
    ref = None
    if args.method == "gopd" and lam != 1.0:
        if not args.ref:
            raise ValueError(f"G-OPD with lambda={lam} needs --ref (pi_ref)")
        ref, rtok = load_model(args.ref, **load)
        check_same_tokenizer(tok, rtok, "reference")
    problems = (
        dataset_problems(job.scale_config, cfg, tok)
        if cfg.get("dataset")
        else load_problems(args.train)
    )
    # the paper scale's engine (accelerate; checkpoints and resume); {} at tiny and small
    run_meta: dict = {}
    ek = job_engine_kwargs(job, run_meta) if args.method == "gopd" else {}
    if args.method != "gopd" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"--method {args.method}: SFT on teacher samples runs in one process "
            f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); give the job one GPU"
        )
    if args.method == "gopd":
        rows, stats = train_gopd(
            student, tok, teachers, ref, problems, lam, cfg, job.seed, cfg.get("routes"), **ek
        )
    else:
        rows, stats = train_teacher_sft(
            student, tok, teachers, problems, cfg, job.seed, cfg.get("routes")
        )
    if ek:
        save_pretrained(ek, student, tok, job.out)
        if not is_main_process(ek):
            return  # rank 0 evaluates and writes the record and meta.json
        student = ek["engine"].accelerator.unwrap_model(student)
        atomic_write_jsonl(Path(job.out) / "train_log.jsonl", rows)
    else:
        save_artifact(student, tok, job.out, rows)
    acc, per_doc = greedy_scores(student, tok, load_problems(args.valid), cfg["max_new_tokens"])
    per_domain, domain_rows = domain_metrics(student, tok, args.valid, cfg)
    samples = Path(args.record).with_suffix(".samples.jsonl")
    atomic_write_jsonl(
        samples, valid_rows("valid", per_doc, problem_lines(args.valid)) + domain_rows
    )
    wall_s = job.wall_s
    x = [r["step"] for r in rows]
    reward_name = (
        "training reward (correctness, logged only)"
        if args.method == "gopd"
        else "teacher samples' correctness (logged only)"
    )
    curves = [
        series(
            reward_name,
            x,
            [r["reward"] for r in rows],
            "step",
            "mean reward",
        ),
        series("entropy (rollouts)", x, [r["entropy"] for r in rows], "step", "nats/token"),
        series("response length", x, [r["length"] for r in rows], "step", "tokens"),
    ]
    if "implicit_reward" in rows[0]:
        curves.append(
            series(
                "implicit reward sum log pi*/pi_ref",
                x,
                [r["implicit_reward"] for r in rows],
                "step",
                "nats",
            )
        )
    tail = rows[-max(1, len(rows) // 5) :]
    metrics = [
        valid_metric("valid", acc),
        metric(
            "train",
            "reward_final",
            sum(r["reward"] for r in tail) / len(tail),
            higher_is_better=True,
        ),
        metric("train", "entropy_final", sum(r["entropy"] for r in tail) / len(tail)),
        metric("train", "length_final", sum(r["length"] for r in tail) / len(tail)),
        *per_domain,
        *(
            [metric("train", "adv_abs_max", max(r["adv_abs_max"] for r in rows))]
            if "adv_abs_max" in rows[0]
            else []
        ),
        metric(
            "train",
            "format_failure_rate",
            stats.format_failure_rate,
            n=stats.n,
            higher_is_better=False,
        ),
    ]
    prov = job.provenance(wall_s)
    base_name = read_meta(args.student).get("name", Path(args.student).name)
    cfg_rec = {**cfg, "lambda": lam, "teachers": sorted(teachers), "ref": bool(ref is not None)}
    method = {"sft": "sft-teacher-samples"}.get(args.method) or ("opd" if lam == 1.0 else "g-opd")
    record = job.record(
        method=method,
        base_model=base_name,
        suite="train",
        tasks=["train", "valid", *(m["task"] for m in per_domain)],
        config=cfg_rec,
        metrics=metrics,
        provenance=prov,
        series=curves,
        task_hashes={
            "train": sha256_file(args.train),
            **{t: sha256_file(args.valid) for t in ["valid", *(m["task"] for m in per_domain)]},
        },
        samples=samples.name,
    )
    job.write_record(record, args.record)
    job.write_meta(
        method=method,
        base_model=base_name,
        inputs={
            "student": args.student,
            "teachers": _teachers(args.teacher),
            "ref": args.ref,
            args.train: sha256_file(args.train),
        },
        config=cfg_rec,
        provenance=prov,
        **run_meta,
    )
    drop_checkpoints(ek)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["gopd"])
    for a in ("--student", "--train", "--valid"):
        ap.add_argument(a, required=True, help="artifact folder / problems file")
    ap.add_argument("--record", required=True, help="the train run record to write")
    ap.add_argument("--teacher", action="append", required=True, help="[name=]artifact folder")
    ap.add_argument("--ref", default="", help="pi_ref's artifact folder (needed unless lam = 1)")
    ap.add_argument("--lam", type=float, default=1.0, help="lambda, the reward scaling factor")
    ap.add_argument("--method", choices=["gopd", "sft"], default="gopd")
    ap.add_argument(
        "--route", action="store_true", help="route each prompt to its domain's teacher"
    )
    ap.add_argument(
        "--eval-domains", action="store_true", help="add per-domain validation exact match"
    )
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
