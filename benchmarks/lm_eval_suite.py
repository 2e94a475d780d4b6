"""The lm-eval suite: evaluate one artifact on a list of tasks in one process, write a run record.

    python -m benchmarks.lm_eval_suite --scale tiny --paper base --variant lm-s \\
        --artifact artifacts/tiny/base/lm-s --data-dir data/tiny \\
        --tasks arith_id,arith_ood,arith_mc,text_ppl \\
        --out results/runs/tiny/base/lm-s/lm_eval.json

A job (``claimbench.job``) whose paper and variant are the artifact's. Settings not given on
the command line are the scale file's ``eval.lm_eval`` ones (schema defaults filled in); the
model loads in ``eval.lm_eval.dtype`` when the scale sets it, else in the job's ``--dtype``,
on the job's device. Models load through lm-eval's ``hf`` model from the artifact's folder (or,
at the paper scale, a cached hub id); local task YAMLs live beside this file and registered
lm-eval tasks (wikitext, arc_easy, ...) are reachable with ``--include-defaults``. Per-sample
outputs go to a ``.samples.jsonl`` beside the record. Training curves are not read here: a
method that trains writes its curve into a record of its own (``series``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_jsonl, sha256_files
from claimbench.job import Job, job_parser, run_job
from claimbench.models import read_meta, resolve_pretrained
from claimbench.records import metric
from claimbench.stats import ratio_stderr, rolling_metric

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
# Which data files each local task reads (their hash is the task's content hash).
LOCAL_TASK_FILES = {
    "arith_id": ["arith/test_id.jsonl"],
    "arith_id_final": ["arith/test_id.jsonl"],
    "arith_id_cot": ["arith/test_id.jsonl"],
    "arith_ood": ["arith/test_ood.jsonl"],
    "arith_mc": ["arith/mc_test.jsonl"],
    "text_ppl": ["text/test.jsonl"],
}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _metrics_for_task(task: str, res: dict, samples: list[dict], hib: dict, n: int) -> list[dict]:
    out = []
    rolling = {}
    if any(m in k for k in res for m in ROLLING_METRICS):
        for m in ROLLING_METRICS:
            pairs = [tuple(s[m]) for s in samples if isinstance(s.get(m), list | tuple)]
            if pairs:
                rolling[m] = ratio_stderr(pairs)
    for key, value in sorted(res.items()):
        if "," not in key or "_stderr," in key or not isinstance(value, int | float):
            continue
        name, filt = key.split(",", 1)
        se = res.get(f"{name}_stderr,{filt}")
        if name in rolling and rolling[name] is not None:
            se = rolling_metric(name, *rolling[name])[1]
        out.append(
            metric(
                task,
                name,
                value,
                stderr=se if isinstance(se, int | float) else None,
                n=n,
                higher_is_better=hib.get(name),
            )
        )
    return out


def _sample_rows(task: str, samples: list[dict]) -> list[dict]:
    rows = []
    for s in samples:
        args = s.get("arguments") or {}
        prompt = ""
        if isinstance(args, dict) and args:
            first = next(iter(args.values()))
            prompt = first.get("arg_0", "") if isinstance(first, dict) else str(first)
        elif isinstance(args, list) and args:
            prompt = str(args[0][0]) if isinstance(args[0], list | tuple) else str(args[0])
        resps = s.get("filtered_resps")
        response = resps[0] if isinstance(resps, list) and resps else resps
        metrics = {k: s[k] for k in s if k in ("exact_match", "acc", "acc_norm", *ROLLING_METRICS)}
        rows.append(
            {
                "task": task,
                "doc_id": s.get("doc_id"),
                "doc_hash": s.get("doc_hash"),
                "prompt_hash": s.get("prompt_hash") or _hash(str(prompt)),
                "target_hash": s.get("target_hash"),
                "prompt": str(prompt)[:2000],
                "target": str(s.get("target", ""))[:500],
                "response": json.dumps(response) if not isinstance(response, str) else response,
                "metrics": metrics,
            }
        )
    return rows


def settings(job: Job) -> dict:
    """The suite's settings (the record's ``config``): the command line's, else the scale's
    ``eval.lm_eval`` (validated, schema defaults filled in)."""
    args, lm = job.args, job.scale_config["eval"]["lm_eval"]
    return {
        "tasks": [t for t in args.tasks.split(",") if t] if args.tasks else list(lm["tasks"]),
        "batch_size": args.batch_size or lm["batch_size"],
        "limit": args.limit if args.limit is not None else lm.get("limit"),
        "max_gen_toks": args.max_gen_toks or lm["max_gen_toks"],
        "num_fewshot": args.num_fewshot if args.num_fewshot is not None else lm.get("num_fewshot"),
        "chat_template": args.chat_template,
        # eval.lm_eval.dtype, when the scale sets it, overrides the job's dtype for the eval.
        "dtype": args.model_dtype or lm.get("dtype") or job.dtype,
        "device": job.device,
        "include_defaults": args.include_defaults or lm["include_defaults"],
    }


def evaluate(job: Job) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(job.threads)  # torch is imported here, after the job's setup
    args = job.args
    config = settings(job)
    tasks = config["tasks"]
    data_dir = str(Path(args.data_dir).resolve())
    pretrained = resolve_pretrained(args.artifact)
    meta = read_meta(args.artifact)
    tm = TaskManager(
        include_path=str(TASK_DIR),
        include_defaults=config["include_defaults"],
        metadata={"data_dir": data_dir},
    )
    unknown = [x for x in tasks if x not in tm.all_tasks]
    if unknown:
        raise ClaimbenchError(
            f"lm-eval task(s) {unknown} are not defined in {TASK_DIR}"
            + (
                ""
                if config["include_defaults"]
                else " (registered lm-eval tasks need include_defaults: true)"
            )
        )
    grouped = [x for x in tasks if x not in tm.all_subtasks]
    if grouped:
        raise ClaimbenchError(
            f"lm-eval task(s) {grouped} are groups or tags, not single tasks: list their "
            "tasks instead (the suite records metrics per task)"
        )
    lm = HFLM(
        pretrained=pretrained,
        device=job.device,
        batch_size=config["batch_size"],
        dtype=config["dtype"],
    )
    task_dict = tm.load(tasks)["tasks"]
    gen = [k for k, v in task_dict.items() if v.get_config("output_type") == "generate_until"]
    groups = [(gen, config["chat_template"]), ([k for k in task_dict if k not in gen], False)]
    results, samples, n_samples, hib, task_hashes = {}, {}, {}, {}, {}
    for names, chat in groups:
        if not names:
            continue
        out = simple_evaluate(
            model=lm,
            tasks=[task_dict[k] for k in names],
            # Without it, lm-eval builds a default TaskManager per call: an index of all its
            # built-in task YAMLs, about 10 s each time, whether or not they are used.
            task_manager=tm,
            limit=config["limit"],
            num_fewshot=config["num_fewshot"],
            log_samples=True,
            apply_chat_template=chat,
            gen_kwargs={"max_gen_toks": config["max_gen_toks"]} if names is gen else None,
            bootstrap_iters=args.bootstrap_iters,
            random_seed=job.seed,
            numpy_random_seed=job.seed,
            torch_random_seed=job.seed,
            fewshot_random_seed=job.seed,
        )
        results.update(out["results"])
        samples.update(out["samples"])
        n_samples.update(out.get("n-samples", {}))
        for task_name, flags in out.get("higher_is_better", {}).items():
            hib[task_name] = flags
        task_hashes.update(out.get("task_hashes", {}))
    metrics, rows = [], []
    for task in tasks:
        n = (n_samples.get(task) or {}).get("effective")
        metrics += _metrics_for_task(
            task, results.get(task, {}), samples.get(task, []), hib.get(task, {}), n
        )
        rows += _sample_rows(task, samples.get(task, []))
    hashes = {}
    for task in tasks:
        files = [Path(data_dir) / f for f in LOCAL_TASK_FILES.get(task, [])]
        if files and all(f.is_file() for f in files):
            hashes[task] = sha256_files(files)[:16]
        elif task_hashes.get(task):
            hashes[task] = str(task_hashes[task])[:16]
    samples_name = job.out.with_suffix(".samples.jsonl").name
    atomic_write_jsonl(job.out.parent / samples_name, rows)
    config["model"] = {
        "pretrained": pretrained
        if meta.get("load", {}).get("hub_id")
        else os.path.relpath(pretrained),
        "kind": meta.get("kind"),
        "n_params": meta.get("n_params"),
    }
    prov = job.provenance()
    prov["dtype"] = config["dtype"]  # what the model was loaded in
    record = job.record(
        suite="lm_eval",
        method=args.method or meta.get("method", job.paper),
        base_model=args.base_model or meta.get("base_model", job.variant),
        tasks=tasks,
        config=config,
        metrics=metrics,
        provenance=prov,
        task_hashes=hashes,
        samples=samples_name,
    )
    job.write_record(record)
    return record


def parser() -> argparse.ArgumentParser:
    ap = job_parser(__doc__, out="the run record (.json) this evaluation writes")
    ap.add_argument("--artifact", required=True, help="artifact folder (holds meta.json)")
    ap.add_argument("--data-dir", required=True, help="the scale's data folder (data/<scale>)")
    ap.add_argument("--tasks", default="", help="comma-separated; default: eval.lm_eval.tasks")
    ap.add_argument("--method", help="default: meta.json's method")
    ap.add_argument("--base-model", help="default: meta.json's base_model")
    ap.add_argument("--batch-size", type=int, default=None, help="default: eval.lm_eval's")
    ap.add_argument("--limit", type=int, default=None, help="default: eval.lm_eval's")
    ap.add_argument("--max-gen-toks", type=int, default=None, help="default: eval.lm_eval's")
    ap.add_argument("--num-fewshot", type=int, default=None, help="default: eval.lm_eval's")
    ap.add_argument("--chat-template", action="store_true")
    ap.add_argument(
        "--include-defaults", action="store_true", help="or eval.lm_eval.include_defaults"
    )
    ap.add_argument(
        "--model-dtype",
        choices=("float32", "bfloat16", "float16", "auto"),
        default=None,
        help="lm-eval's load dtype; default: eval.lm_eval.dtype if set, else the job's --dtype",
    )
    ap.add_argument("--bootstrap-iters", type=int, default=1000)
    return ap


def main(argv: list[str] | None = None) -> None:
    run_job(parser(), evaluate, argv)


if __name__ == "__main__":
    main()
