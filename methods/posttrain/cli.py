"""Build post-trained artifacts with the shared loops:
``python -m methods.posttrain.cli {sft,grpo} <job options> --settings KEY --start A
--train data.jsonl [--valid data.jsonl] [--record train.json]``.

The job's settings are the object at the dotted ``--settings`` key of its paper's section of the
scale file (psft ``rl.grpo``, gopd ``student_sft``, realign ``reference_sft``, ...), checked
against ``config/schema/posttrain.schema.yaml`` (which holds the loops' defaults);
``--families-key`` merges a family list from the same section in as ``families``.

``sft`` trains on the arithmetic world's demonstrations (prompt and padding masked); ``grpo``
runs GRPO with the binary correctness reward (format failures counted). At the paper scale a job
reads a data set of the scale file's ``datasets:`` block instead (``--train-set``,
``--valid-set``; methods/posttrain/DATA.md): its prompts built with ``--prompt-format`` (the
model's chat template or the ORZ prompt), scored with ``--reward math_verify`` (the last
``\\boxed{}``), rolled out until EOS or the template's end token (``--stop eos``); SFT trains on
the set's ``completion`` column. Each writes a
``save_pretrained`` folder in the job's dtype, ``train_log.jsonl`` and ``meta.json`` (last), and
optionally a run record (suite ``train``) with the training curves as ``series``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from claimbench.config import SCHEMA_DIR, read_yaml, validate_with_defaults
from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.posttrain.data import PROMPT_FORMATS, format_prompt, load_named
from methods.posttrain.engine import (
    drop_checkpoints,
    is_main_process,
    job_engine_kwargs,
    save_pretrained,
)
from methods.posttrain.loops import (
    SFTObjective,
    greedy_scores,
    problem_lines,
    train_demos,
    train_grpo,
    valid_rows,
)
from methods.posttrain.models import load_model, read_meta
from methods.posttrain.rewards import (
    REWARDS,
    RewardStats,
    demonstration,
    load_problems,
    reward_function,
)
from methods.posttrain.sampling import STOPS, sample

# Papers whose scale-file sections hold posttrain settings.
PAPERS = ("psft", "gopd", "noisy_rewards", "realign")


def save_artifact(model, tok, out: Path, rows: list[dict]) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_jsonl(out / "train_log.jsonl", rows)


def section_at(job: Job, key: str, option: str) -> Any:
    """The value at dotted ``key`` of ``papers.<paper>`` (a user error names the missing key)."""
    node: Any = job.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(
                f"{option} {key}: papers.{job.paper} of the {job.scale} scale has no key {part!r}"
            )
        node = node[part]
    return node


def job_settings(job: Job) -> tuple[dict, dict]:
    """(``config``, ``settings``) of a posttrain job.

    ``config`` is the settings object as the scale file states it (plus ``families`` from
    ``--families-key``): it is the run record's config, so the run id stays that of the object
    the paper wrote. ``settings`` is a copy with ``config/schema/posttrain.schema.yaml``'s
    defaults filled in: what the loops read.
    """
    args = job.args
    config = section_at(job, args.settings, "--settings")
    if not isinstance(config, dict):
        raise ValueError(
            f"--settings {args.settings}: papers.{job.paper}.{args.settings} is not a mapping"
        )
    config = copy.deepcopy(config)
    if args.families_key:
        config["families"] = copy.deepcopy(section_at(job, args.families_key, "--families-key"))
    doc = read_yaml(SCHEMA_DIR / "posttrain.schema.yaml")
    schema = {"$defs": doc["$defs"], "$ref": f"#/$defs/{args.what}"}
    settings = validate_with_defaults(
        copy.deepcopy(config), schema, f"papers.{job.paper}.{args.settings} ({args.what} settings)"
    )
    return config, settings


def data_options(args, st: dict) -> SimpleNamespace:
    """Where a job's data, prompts, reward and stop come from: the options, else the settings
    object's ``dataset`` / ``valid_dataset`` / ``prompt_format`` / ``reward`` / ``stop`` (the
    paper section names them), else the arithmetic world's (one-line errors)."""
    if args.train and args.train_set:
        raise ValueError("give at most one of --train (arithmetic JSONL) and --train-set (a name)")
    if args.valid and args.valid_set:
        raise ValueError("give at most one of --valid and --valid-set")
    train_set = args.train_set or st.get("dataset") or ""
    if not (train_set or args.train):
        raise ValueError("no training data: give --train, --train-set or a settings 'dataset'")
    valid_set = args.valid_set or st.get("valid_dataset") or ""
    d = SimpleNamespace(
        train_set=train_set,
        train="" if train_set else args.train,
        valid_set=valid_set,
        # an arithmetic validation file scores the arithmetic world only
        valid="" if (valid_set or train_set) else args.valid,
        prompt_format=args.prompt_format or st.get("prompt_format") or "",
        reward=args.reward or st.get("reward") or "arith",
        stop=args.stop or st.get("stop") or "newline",
    )
    if (d.train_set or d.valid_set) and not d.prompt_format:
        raise ValueError("--train-set/--valid-set need --prompt-format (the model's prompt)")
    return d


def set_problems(job: Job, tok, name: str, prompt_format: str) -> list[dict]:
    """A named data set's rows with the model's prompt (``--prompt-format``) as ``prompt`` (the
    set's name as the per-document rows' family)."""
    rows = load_named(job.scale_config, name, file=job.args.scale_file or None)
    return [
        {
            **r,
            "family": name,
            "question": r["prompt"],
            "prompt": format_prompt(tok, r["prompt"], prompt_format),
        }
        for r in rows
    ]


def set_demonstrations(problems: list[dict], name: str) -> tuple[list[str], list[str]]:
    """(prompts, completions) of a data set with a ``completion`` column (SFT on it)."""
    pairs = [(p["prompt"], p["completion"]) for p in problems if p.get("completion")]
    if not pairs:
        raise ValueError(f"--train-set {name}: no completion column to train SFT on")
    pr, co = zip(*pairs, strict=True)
    return list(pr), list(co)


def file_task_hash(path: str, families: list[str] | None) -> str:
    """The task hash of an arithmetic file as a job reads it: the file's sha256, or, when a
    ``families`` filter picks part of it, a hash of the file's and the filter's identity (two
    runs on different family subsets are not the same documents)."""
    digest = sha256_file(path)
    if not families:
        return digest
    key = json.dumps({"file": digest, "families": sorted(families)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def rows_hash(rows: list[dict]) -> str:
    """sha256 of a set's (id, prompt, answer) rows: the run record's task hash of a named set."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["id"], r["prompt"], r["answer"]]).encode())
    return h.hexdigest()


def grpo_paper_options(d: SimpleNamespace) -> dict:
    """``train_grpo`` keywords for the paper-scale reward and stop (none at tiny and small)."""
    opts: dict[str, Any] = {}
    if d.reward != "arith":
        opts["reward_fn"] = reward_function(d.reward)
    if d.stop != "newline":
        if "stop" not in inspect.signature(train_grpo).parameters:
            raise ValueError(f"--stop {d.stop}: train_grpo takes no stop option yet")
        opts["stop"] = d.stop
    return opts


def greedy_set_scores(model, tok, problems, max_new_tokens, reward, stop, batch: int = 64):
    """Greedy accuracy of a named set under the job's reward and stop (the paper scale)."""
    stats, correct, per_doc = RewardStats(), 0.0, []
    fn = reward_function(reward)
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        ro = sample(
            model,
            tok,
            [p["prompt"] for p in chunk],
            greedy=True,
            max_new_tokens=max_new_tokens,
            stop=stop,
        )
        rw, _ = fn(ro.texts, [p["answer"] for p in chunk], stats)
        correct += sum(rw)
        per_doc += list(zip(chunk, ro.texts, rw, strict=True))
    acc = {"accuracy": correct / len(problems), "format_failures": stats.format_failures}
    return {**acc, "n": len(problems)}, per_doc


def run(job: Job) -> None:
    args = job.args
    cfg, st = job_settings(job)
    d = data_options(args, st)
    model, tok = load_model(args.start, trainable=True, device=job.device, dtype=job.torch_dtype)
    model.requires_grad_(True)
    if d.train_set:
        train = set_problems(job, tok, d.train_set, d.prompt_format)
        train_key, train_hash = f"datasets.{d.train_set}", rows_hash(train)
    else:
        train = load_problems(d.train, st.get("families"))
        train_key, train_hash = d.train, sha256_file(d.train)
    train_task = file_task_hash(d.train, st.get("families")) if not d.train_set else train_hash
    valid_hash = file_task_hash(d.valid, st.get("families")) if d.valid else None
    # the paper scale's engine (accelerate: DDP / FSDP2 / ZeRO-3, checkpoints, resume); {} at
    # tiny and small, where the plain loops run unchanged
    run_meta: dict = {}
    ek = job_engine_kwargs(job, run_meta)
    metrics, curves = [], []
    if args.what == "sft":
        if d.train_set:
            pr, co = set_demonstrations(train, d.train_set)
        else:
            pr, co = zip(*[demonstration(p, st["form"]) for p in train], strict=True)
        rows = train_demos(
            model,
            tok,
            list(pr),
            list(co),
            SFTObjective(),
            steps=st["steps"],
            minibatch=st["minibatch"],
            lr=st["lr"],
            warmup_steps=st["warmup_steps"],
            weight_decay=st["weight_decay"],
            seed=job.seed,
            **ek,
        )
        curves.append(
            series(
                "SFT loss",
                [r["step"] for r in rows],
                [r["loss"] for r in rows],
                "step",
                "nats/token",
            )
        )
    else:
        rows, stats = train_grpo(
            model,
            tok,
            train,
            steps=st["steps"],
            prompts_per_step=st["prompts_per_step"],
            n=st["n"],
            lr=st["lr"],
            max_new_tokens=st["max_new_tokens"],
            temperature=st["temperature"],
            seed=job.seed,
            **grpo_paper_options(d),
            **ek,
        )
        x = [r["step"] for r in rows]
        curves += [
            series("training reward", x, [r["reward"] for r in rows], "step", "mean reward"),
            series("entropy (rollouts)", x, [r["entropy"] for r in rows], "step", "nats/token"),
            series("response length", x, [r["length"] for r in rows], "step", "tokens"),
        ]
        metrics += [
            metric(
                "train",
                "format_failure_rate",
                stats.format_failure_rate,
                n=stats.n,
                higher_is_better=False,
            ),
            metric("train", "reward_final", sum(r["reward"] for r in rows[-5:]) / len(rows[-5:])),
        ]
    if ek:
        save_pretrained(ek, model, tok, job.out)
        if not is_main_process(ek):
            return  # rank 0 evaluates and writes the record and meta.json
        model = ek["engine"].accelerator.unwrap_model(model)
        atomic_write_jsonl(Path(job.out) / "train_log.jsonl", rows)
    else:
        save_artifact(model, tok, job.out, rows)
    samples = None
    if d.valid_set:
        problems = set_problems(job, tok, d.valid_set, d.prompt_format)
        valid_hash = rows_hash(problems)
        acc, per_doc = greedy_set_scores(
            model, tok, problems, st["max_new_tokens"], d.reward, d.stop
        )
        if args.record:  # per-document scores, doc id = the row's position in the set
            samples = Path(args.record).with_suffix(".samples.jsonl")
            lines = {p["id"]: i for i, p in enumerate(problems)}
            atomic_write_jsonl(samples, valid_rows("valid", per_doc, lines))
    elif d.valid:
        acc, per_doc = greedy_scores(
            model, tok, load_problems(d.valid, st.get("families")), st["max_new_tokens"]
        )
        if args.record:  # per-document exact match, doc id = the problem's line in the file
            samples = Path(args.record).with_suffix(".samples.jsonl")
            atomic_write_jsonl(samples, valid_rows("valid", per_doc, problem_lines(d.valid)))
    if d.valid or d.valid_set:
        metrics += [
            metric(
                "valid", "greedy_exact_match", acc["accuracy"], n=acc["n"], higher_is_better=True
            ),
            metric(
                "valid",
                "format_failures",
                acc["format_failures"],
                n=acc["n"],
                higher_is_better=False,
            ),
        ]
    prov = job.provenance()
    base_name = read_meta(args.start).get("name", Path(args.start).name)
    if args.record:
        rec = job.record(
            suite="train",
            method=args.what,
            base_model=base_name,
            tasks=sorted({m["task"] for m in metrics}) or ["train"],
            config=cfg,
            metrics=metrics,
            provenance=prov,
            series=curves,
            task_hashes={"train": train_task, **({"valid": valid_hash} if valid_hash else {})},
            samples=samples.name if samples else None,
        )
        job.write_record(rec, args.record)
    job.write_meta(
        method=args.what,
        base_model=base_name,
        inputs={train_key: train_hash, args.start: base_name},
        config=cfg,
        provenance=prov,
        **run_meta,
    )
    drop_checkpoints(ek)


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=PAPERS, out="the artifact folder this job writes")
    ap.add_argument("what", choices=["sft", "grpo"])
    ap.add_argument(
        "--settings",
        required=True,
        help="dotted key of the settings object in papers.<paper> (e.g. rl.grpo, student_sft)",
    )
    ap.add_argument(
        "--families-key",
        default="",
        help="dotted key in papers.<paper> of a family list merged into the settings as families",
    )
    ap.add_argument("--start", required=True, help="artifact folder of the start model")
    ap.add_argument("--train", default="", help="arithmetic-world training problems (JSONL)")
    ap.add_argument("--valid", default="", help="validation problems: greedy exact match")
    ap.add_argument(
        "--train-set",
        default="",
        help="instead of --train: a data set named in the scale file's datasets: block",
    )
    ap.add_argument(
        "--valid-set", default="", help="instead of --valid: a named data set, greedy accuracy"
    )
    ap.add_argument(
        "--prompt-format",
        default="",
        choices=["", *PROMPT_FORMATS],
        help="how a named set's questions become prompts (DATA.md; default: settings' prompt_format)",
    )
    ap.add_argument(
        "--reward",
        default="",
        choices=["", *sorted(REWARDS)],
        help="arith: 'answer is N' (tiny, small); math_verify: the last \\boxed{} (paper); "
        "default: the settings' reward, else arith",
    )
    ap.add_argument(
        "--stop",
        default="",
        choices=["", *STOPS],
        help="rollouts stop at a newline (tiny, small) or only at EOS / the template's end "
        "(paper); default: the settings' stop, else newline",
    )
    ap.add_argument("--record", default="", help="write a train run record here")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
