"""Build post-trained artifacts with the shared loops:
``python -m methods.posttrain.cli {sft,grpo} <job options> --settings KEY --start A
--train data.jsonl [--valid data.jsonl] [--record train.json]``.

The job's settings are the object at the dotted ``--settings`` key of its paper's section of the
scale file (psft ``rl.grpo``, gopd ``student_sft``, realign ``reference_sft``, ...), checked
against ``config/schema/posttrain.schema.yaml`` (which holds the loops' defaults);
``--families-key`` merges a family list from the same section in as ``families``.

``sft`` trains on the arithmetic world's demonstrations (prompt and padding masked); ``grpo``
runs GRPO with the binary correctness reward (format failures counted). Each writes a
``save_pretrained`` folder in the job's dtype, ``train_log.jsonl`` and ``meta.json`` (last), and
optionally a run record (suite ``train``) with the training curves as ``series``.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from claimbench.config import SCHEMA_DIR, read_yaml, validate_with_defaults
from claimbench.io import atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.posttrain.loops import (
    SFTObjective,
    greedy_scores,
    problem_lines,
    train_demos,
    train_grpo,
    valid_rows,
)
from methods.posttrain.models import load_model, read_meta
from methods.posttrain.rewards import demonstration, load_problems

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


def run(job: Job) -> None:
    args = job.args
    cfg, st = job_settings(job)
    model, tok = load_model(args.start, trainable=True, device=job.device, dtype=job.torch_dtype)
    model.requires_grad_(True)
    train = load_problems(args.train, st.get("families"))
    metrics, curves = [], []
    if args.what == "sft":
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
    save_artifact(model, tok, job.out, rows)
    samples = None
    if args.valid:
        acc, per_doc = greedy_scores(
            model, tok, load_problems(args.valid, st.get("families")), st["max_new_tokens"]
        )
        if args.record:  # per-document exact match, doc id = the problem's line in the file
            samples = Path(args.record).with_suffix(".samples.jsonl")
            atomic_write_jsonl(samples, valid_rows("valid", per_doc, problem_lines(args.valid)))
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
            task_hashes={
                "train": sha256_file(args.train),
                **({"valid": sha256_file(args.valid)} if args.valid else {}),
            },
            samples=samples.name if samples else None,
        )
        job.write_record(rec, args.record)
    job.write_meta(
        method=args.what,
        base_model=base_name,
        inputs={args.train: sha256_file(args.train), args.start: base_name},
        config=cfg,
        provenance=prov,
    )


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
    ap.add_argument("--train", required=True, help="arithmetic-world training problems (JSONL)")
    ap.add_argument("--valid", default="", help="validation problems: greedy exact match")
    ap.add_argument("--record", default="", help="write a train run record here")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
