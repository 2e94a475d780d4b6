"""The lm-eval suite: evaluate one artifact on a list of tasks in one process, write a run record.

    python -m benchmarks.lm_eval_suite --artifact artifacts/tiny/base/lm-s \\
        --scale tiny --paper base --method base --variant lm-s --base-model lm-s \\
        --tasks arith_id,arith_ood,arith_mc,text_ppl --data-dir data/tiny \\
        --out results/runs/tiny/base/lm-s/lm_eval.json

Models load through lm-eval's ``hf`` model from the artifact's folder (or, at the paper scale,
a cached hub id); local task YAMLs live beside this file and registered lm-eval tasks
(wikitext, arc_easy, ...) are reachable with ``--include-defaults``. Per-sample outputs go to a
``.samples.jsonl`` beside the record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from claimbench import provenance
from claimbench.errors import ClaimbenchError, exit_on_user_error
from claimbench.io import atomic_write_jsonl, sha256_files
from claimbench.models import read_meta, resolve_pretrained
from claimbench.records import make_run_record, metric, series, write_run_record
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


def training_curves(artifact: str | Path, max_points: int = 200) -> list[dict]:
    """The artifact's training loss (``train_log.jsonl``, if it has one), for the report."""
    log = Path(artifact) / "train_log.jsonl"
    if not log.is_file():
        return []
    rows = [
        json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if not rows or "loss" not in rows[0]:
        return []
    stride = max(1, len(rows) // max_points)
    # Average each block of `stride` steps so the curve is readable and its length bounded.
    xs, ys = [], []
    for i in range(0, len(rows), stride):
        block = rows[i : i + stride]
        xs.append(block[-1]["step"])
        ys.append(sum(r["loss"] for r in block) / len(block))
    return [series("train_loss", xs, ys, "step", "training loss")]


def evaluate(args) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    data_dir = str(Path(args.data_dir).resolve())
    pretrained = resolve_pretrained(args.artifact)
    meta = read_meta(args.artifact)
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    config = {
        "tasks": tasks,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "max_gen_toks": args.max_gen_toks,
        "num_fewshot": args.num_fewshot,
        "chat_template": args.chat_template,
        "dtype": args.dtype,
        "device": device,
        "include_defaults": args.include_defaults,
    }
    with provenance.timed() as t:
        tm = TaskManager(
            include_path=str(TASK_DIR),
            include_defaults=args.include_defaults,
            metadata={"data_dir": data_dir},
        )
        unknown = [x for x in tasks if x not in tm.all_tasks]
        if unknown:
            raise ClaimbenchError(
                f"lm-eval task(s) {unknown} are not defined in {TASK_DIR}"
                + (
                    ""
                    if args.include_defaults
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
            pretrained=pretrained, device=device, batch_size=args.batch_size, dtype=args.dtype
        )
        task_dict = tm.load(tasks)["tasks"]
        gen = [k for k, v in task_dict.items() if v.get_config("output_type") == "generate_until"]
        groups = [(gen, args.chat_template), ([k for k in task_dict if k not in gen], False)]
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
                limit=args.limit,
                num_fewshot=args.num_fewshot,
                log_samples=True,
                apply_chat_template=chat,
                gen_kwargs={"max_gen_toks": args.max_gen_toks} if names is gen else None,
                bootstrap_iters=args.bootstrap_iters,
                random_seed=args.seed,
                numpy_random_seed=args.seed,
                torch_random_seed=args.seed,
                fewshot_random_seed=args.seed,
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
    out_path = Path(args.out)
    samples_name = out_path.with_suffix(".samples.jsonl").name
    atomic_write_jsonl(out_path.parent / samples_name, rows)
    config["model"] = {
        "pretrained": pretrained
        if meta.get("load", {}).get("hub_id")
        else os.path.relpath(pretrained),
        "kind": meta.get("kind"),
        "n_params": meta.get("n_params"),
    }
    record = make_run_record(
        scale=args.scale,
        paper=args.paper,
        method=args.method or meta.get("method", args.paper),
        variant=args.variant,
        base_model=args.base_model or meta.get("base_model", args.variant),
        suite="lm_eval",
        tasks=tasks,
        seed=args.seed,
        config=config,
        metrics=metrics,
        provenance=provenance.capture(t["started_at"], t["wall_s"]),
        task_hashes=hashes,
        samples=samples_name,
        series=training_curves(args.artifact),
    )
    write_run_record(out_path, record)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifact", required=True, help="artifact folder (holds meta.json)")
    for key in ("--scale", "--paper", "--variant", "--tasks", "--data-dir", "--out"):
        ap.add_argument(key, required=True)
    ap.add_argument("--method", help="default: meta.json's method")
    ap.add_argument("--base-model", help="default: meta.json's base_model")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-gen-toks", type=int, default=16)
    ap.add_argument("--num-fewshot", type=int, default=None)
    ap.add_argument("--chat-template", action="store_true")
    ap.add_argument("--include-defaults", action="store_true")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bootstrap-iters", type=int, default=1000)
    args = ap.parse_args(argv)
    with exit_on_user_error():
        evaluate(args)


if __name__ == "__main__":
    main()
