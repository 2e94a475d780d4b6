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
outputs go to a ``.samples.jsonl`` beside the record: one row per (task, lm-eval doc id) with
its scores under every filter, ``filter`` and its filtered answer (``response``), the raw
generation (``raw_response``) or, for multiple choice, every option's ``loglikelihoods``,
``is_greedy``, ``choices`` and the ``gold`` index (``response`` is the argmax option), and for
rolling perplexity the document's ``loglikelihood``: enough to re-score acc, acc_norm, exact
match and perplexity from the file alone. A task with one filter keeps lm-eval's plain metric
names (``exact_match``); with several (gsm8k's strict-match and flexible-extract) each metric is
``<name>_<filter>`` (``exact_match_strict-match``), so no two metrics of a task share a name and
per-document pairing never mixes filters. lm-eval's own results (configs,
versions, n-shot, per-task results; samples left out) to ``lm_eval.results.json.gz`` beside
``lm_eval.json`` (not a ``.json`` name: the store ingests every ``*.json`` under
``results/runs`` as a run record).
Training curves are not read here: a method that trains writes its curve into a record of its
own (``series``).

Paper-scale options (``eval.lm_eval`` of the scale file):

* ``max_length``: the context is the model config's ``max_position_embeddings`` (what lm-eval
  reads when it is not given) capped at this, raised to ``max_gen_toks + 1024`` where an answer
  is long; Llama-3.1's config says 131,072, which would make wikitext's rolling windows 131k
  tokens long.
* ``use_cache``: lm-eval's sqlite request cache beside the record (its name hashes the
  artifact's ``meta.json`` and the settings, so a rebuilt artifact never reads stale answers);
  tasks are then evaluated one by one and each is committed when it finishes, so a resubmitted
  job skips the tasks it had done.
* ``backend: hf|vllm`` and ``vllm_papers``: lm-eval's ``vllm`` model type (``pip install -e
  .[gpu]``) for every evaluation, or for those papers only (their long generations).
* ``--steer FILE``: lm-eval's ``steered`` model type (``lm_eval/models/hf_steered.py``): a
  ``.pt`` file ``{hookpoint: {steering_vector, steering_coefficient, action, bias,
  head_index}}`` whose hook points are module names under ``model.base_model`` (``layers.12``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from claimbench.errors import ClaimbenchError
from claimbench.io import (
    atomic_write_bytes,
    atomic_write_jsonl,
    dumps_json,
    sha256_file,
    sha256_files,
    stable_hash,
)
from claimbench.job import Job, job_parser, run_job
from claimbench.models import read_meta, resolve_pretrained
from claimbench.records import metric
from claimbench.stats import ratio_stderr, rolling_metric

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
RESULTS_SUFFIX = ".results.json.gz"  # lm-eval's own results beside the record (lm_eval.json)
# Room kept for the prompt when max_gen_toks raises the context cap (a 16k-token answer).
PROMPT_ROOM = 1024
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


def _filters(res: dict) -> list[str]:
    """The filters of a task's lm-eval results, in order (``exact_match,strict-match``)."""
    out: list[str] = []
    for key, value in res.items():
        if "," not in key or "_stderr," in key or not isinstance(value, int | float):
            continue
        filt = key.split(",", 1)[1]
        if filt not in out:
            out.append(filt)
    return out


def metric_name(name: str, filt: str, filters: list[str]) -> str:
    """The record's name of lm-eval's ``name,filt``: the plain name when the task has one
    filter, ``<name>_<filter>`` when it has several (gsm8k: ``exact_match_strict-match`` and
    ``exact_match_flexible-extract``), so no two metrics of a task share a name."""
    return name if len(filters) <= 1 else f"{name}_{filt}"


def _metrics_for_task(task: str, res: dict, samples: list[dict], hib: dict, n: int) -> list[dict]:
    out = []
    rolling = {}
    filters = _filters(res)
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
                metric_name(name, filt, filters),
                value,
                stderr=se if isinstance(se, int | float) else None,
                n=n,
                higher_is_better=hib.get(name),
            )
        )
    return out


def _prompt(args) -> str:
    prompt = ""
    if isinstance(args, dict) and args:
        first = next(iter(args.values()))
        prompt = first.get("arg_0", "") if isinstance(first, dict) else str(first)
    elif isinstance(args, list) and args:
        prompt = str(args[0][0]) if isinstance(args[0], list | tuple) else str(args[0])
    return prompt


def _scores(s: dict, filt: str, filters: list[str]) -> dict:
    """A logged sample's per-document scores under the record's metric names: numbers, and
    ``[loglikelihood, weight]`` pairs of the rolling metrics."""
    out = {}
    for name in s.get("metrics") or []:
        v = s.get(name)
        if name in ROLLING_METRICS and isinstance(v, list | tuple):
            out[metric_name(name, filt, filters)] = [float(v[0]), float(v[1])]
        elif v is not None and not isinstance(v, str | bytes | list | tuple | dict):
            out[metric_name(name, filt, filters)] = float(v)  # numpy scalars and bools too
    return out


def _raw(s: dict, output_type: str | None, choices: list[str] | None) -> dict:
    """What the model returned before any filter: the generation, or every option's
    log-likelihood and is_greedy (lm-eval's ``resps``)."""
    resps = [r[0] if isinstance(r, list | tuple) and len(r) == 1 else r for r in s["resps"]]
    if output_type == "generate_until":
        return {"raw_response": resps[0] if len(resps) == 1 else list(resps)}
    if output_type == "loglikelihood_rolling":
        return {"loglikelihood": float(resps[0])}
    if output_type not in ("multiple_choice", "loglikelihood"):
        return {}
    # one (log-likelihood, is_greedy) per option
    raw = {
        "loglikelihoods": [float(r[0]) for r in resps],
        "is_greedy": [bool(r[1]) for r in resps],
    }
    if choices is not None:
        raw["choices"] = [str(c) for c in choices]
    return raw


def _gold(target, choices: list[str] | None):
    """lm-eval's gold option index (or indices) of a multiple-choice document."""
    if isinstance(target, list):
        return [int(t) for t in target]
    if isinstance(target, str) and choices is not None and target in choices:
        return choices.index(target)
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        return int(target)
    return target if isinstance(target, int) else None


def _sample_rows(
    task: str, samples: list[dict], output_type: str | None = None, doc_to_choice=None
) -> list[dict]:
    """One row per document: its scores under every filter (lm-eval logs one sample per
    document and filter), the filtered answer, the raw generation or every option's
    log-likelihood, so that a run can be re-scored from its samples file alone."""
    filters: list[str] = []
    by_doc: dict = {}
    for s in samples:
        filt = s.get("filter") or "none"
        if filt not in filters:
            filters.append(filt)
        by_doc.setdefault(s.get("doc_id"), []).append((filt, s))
    rows = []
    mc = output_type == "multiple_choice"  # a loglikelihood task has no choices, one option
    for doc_id, per_filter in by_doc.items():
        filt, s = per_filter[0]
        prompt = _prompt(s.get("arguments") or {})
        choices = doc_to_choice(s["doc"]) if mc and doc_to_choice and "doc" in s else None
        raw = _raw(s, output_type, choices) if s.get("resps") is not None else {}
        metrics, answers = {}, {}
        for f, x in per_filter:
            metrics.update(_scores(x, f, filters))
            resps = x.get("filtered_resps")
            answers[f] = resps[0] if isinstance(resps, list) and len(resps) == 1 else resps
        response = answers[filt]
        if mc and "loglikelihoods" in raw:
            lls = raw["loglikelihoods"]
            best = max(range(len(lls)), key=lls.__getitem__)
            response = raw["choices"][best] if "choices" in raw else str(best)
            raw["gold"] = _gold(s.get("target"), raw.get("choices"))
        row = {
            "task": task,
            "doc_id": doc_id,
            "doc_hash": s.get("doc_hash"),
            "prompt_hash": s.get("prompt_hash") or _hash(str(prompt)),
            "target_hash": s.get("target_hash"),
            "prompt": str(prompt)[:2000],
            "target": str(s.get("target", ""))[:500],
            "response": json.dumps(response) if not isinstance(response, str) else response,
            "filter": filt,
            "metrics": metrics,
            **raw,
        }
        if len(filters) > 1:  # every filter's answer: ``response`` is the first one's
            row["filtered_responses"] = {
                f: a if isinstance(a, str) else json.dumps(a) for f, a in answers.items()
            }
        rows.append(row)
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
        "max_length": args.max_length or lm["max_length"],
        "backend": args.backend
        or ("vllm" if lm["backend"] == "vllm" or job.paper in lm["vllm_papers"] else "hf"),
        "use_cache": args.use_cache or lm["use_cache"],
        "steer": args.steer,
    }


def context_length(model_max: int, cap: int | None, max_gen_toks: int) -> int:
    """The evaluation's context: the model's own, capped at ``cap`` (raised to leave
    ``max_gen_toks`` plus ``PROMPT_ROOM`` tokens for a long answer)."""
    if cap is None:
        return model_max
    return min(model_max, max(cap, max_gen_toks + PROMPT_ROOM))


def model_max_length(pretrained: str) -> int:
    """What lm-eval reads from a model when no ``max_length`` is given (its config's
    ``max_position_embeddings`` for the causal LMs here)."""
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig

    return resolve_max_length(AutoConfig.from_pretrained(pretrained))


def vllm_model_args(
    pretrained: str, dtype: str, max_length: int, seed: int, vllm: dict, max_gen_toks: int
) -> str:
    """lm-eval's ``model_args`` string of its ``vllm`` model type."""
    if "," in pretrained or "=" in pretrained:
        raise ClaimbenchError(
            f"--backend vllm: model path {pretrained!r} holds ',' or '=', which lm-eval's "
            "model_args string cannot carry"
        )
    args = {
        "pretrained": pretrained,
        "dtype": dtype,
        "max_model_len": max_length,
        "gpu_memory_utilization": vllm["gpu_memory_utilization"],
        "tensor_parallel_size": vllm["tensor_parallel_size"],
        "max_gen_toks": max_gen_toks,
        "seed": seed,
    }
    return ",".join(f"{k}={v}" for k, v in args.items())


def check_steer_file(path: str) -> dict:
    """A steer file lm-eval's ``steered`` model reads, loaded here first without pickle
    (``weights_only=True``): lm-eval itself unpickles it, so a file that holds anything but
    tensors, numbers and strings is refused before it gets there."""
    import torch

    if not path.endswith((".pt", ".pth")):
        raise ClaimbenchError(f"--steer {path}: not a .pt file (lm-eval's steered format)")
    try:
        cfg = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ClaimbenchError(f"--steer {path}: no such file") from None
    except Exception as e:  # UnpicklingError for anything that is not plain data
        raise ClaimbenchError(f"--steer {path}: not a plain steer file ({type(e).__name__})") from e
    if not isinstance(cfg, dict) or not cfg:
        raise ClaimbenchError(f"--steer {path}: expected {{hookpoint: {{steering_vector, ...}}}}")
    for hook, spec in cfg.items():
        if not isinstance(spec, dict) or "steering_vector" not in spec or "action" not in spec:
            raise ClaimbenchError(
                f"--steer {path}: hookpoint {hook!r}: needs steering_vector and action"
            )
    return cfg


def build_lm(job: Job, config: dict, pretrained: str):
    """The lm-eval model object for the settings: ``hf``, ``steered`` or ``vllm``."""
    from lm_eval.api.registry import get_model

    if config["backend"] == "vllm":
        if config["steer"]:
            raise ClaimbenchError("--steer: lm-eval's steered model runs on the hf backend only")
        if importlib.util.find_spec("vllm") is None:
            raise ClaimbenchError(
                "eval.lm_eval.backend vllm: the Python package 'vllm' is not installed "
                "(pip install -e .[gpu] on a GPU node)"
            )
        lm_cfg = job.scale_config["eval"]["lm_eval"]
        args = vllm_model_args(
            pretrained,
            config["dtype"],
            config["context"],
            job.seed,
            lm_cfg["vllm"],
            config["max_gen_toks"],
        )
        return get_model("vllm").create_from_arg_string(args, {"batch_size": "auto"})
    kwargs = dict(
        pretrained=pretrained,
        device=job.device,
        batch_size=config["batch_size"],
        dtype=config["dtype"],
        max_length=config["context"],
    )
    if several_gpus(job.device):
        # a model too big for one GPU (a 70B in bf16): weights spread over the job's GPUs
        kwargs["parallelize"] = True
    if config["steer"]:
        check_steer_file(config["steer"])
        return get_model("steered")(steer_path=config["steer"], **kwargs)
    return get_model("hf")(**kwargs)


def several_gpus(device: str) -> bool:
    """Whether the job runs on CUDA and sees more than one GPU (its allocation's)."""
    if not str(device).startswith("cuda"):
        return False
    import torch

    return torch.cuda.device_count() > 1


def cache_prefix(job: Job, config: dict) -> str:
    """lm-eval's cache path (it appends ``_rank<i>.db``): beside the record, named by the
    artifact's ``meta.json``, the steer file and the settings that change an answer."""
    key = {k: config[k] for k in ("dtype", "context", "backend", "max_gen_toks")}
    key["meta"] = stable_hash(read_meta(job.args.artifact))
    if config["steer"]:
        key["steer"] = sha256_file(config["steer"])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return str(job.out.parent / f"lm_eval.cache-{digest}")


def _merge_results(outs: list[dict]) -> dict:
    """lm-eval's results dicts of several calls as one (per-sample outputs left out)."""
    merged: dict = {}
    for out in outs:
        for key, value in out.items():
            if key == "samples":
                continue
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
    return merged


def write_results(path: Path, outs: list[dict]) -> Path:
    """lm-eval's own results JSON (non-finite numbers as null), gzipped, atomically."""
    data = gzip.compress(dumps_json(_merge_results(outs)).encode("utf-8"), mtime=0)
    return atomic_write_bytes(path, data)


def evaluate(job: Job) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from lm_eval import simple_evaluate
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
    config["context"] = context_length(
        model_max_length(pretrained), config["max_length"], config["max_gen_toks"]
    )
    lm = build_lm(job, config, pretrained)
    task_dict = tm.load(tasks)["tasks"]
    gen = [k for k, v in task_dict.items() if v.get_config("output_type") == "generate_until"]
    groups = [(gen, config["chat_template"]), ([k for k in task_dict if k not in gen], False)]
    cache = cache_prefix(job, config) if config["use_cache"] else None
    if cache:  # one call per task: each task's answers are committed when it finishes
        groups = [([k], chat) for names, chat in groups for k in names]
    results, samples, n_samples, hib, task_hashes, outs = {}, {}, {}, {}, {}, []
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
            use_cache=cache,
        )
        outs.append(out)
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
        t = task_dict[task]
        rows += _sample_rows(
            task, samples.get(task, []), t.get_config("output_type"), t.doc_to_choice
        )
    hashes = {}
    for task in tasks:
        files = [Path(data_dir) / f for f in LOCAL_TASK_FILES.get(task, [])]
        if files and all(f.is_file() for f in files):
            hashes[task] = sha256_files(files)[:16]
        elif task_hashes.get(task):
            hashes[task] = str(task_hashes[task])[:16]
    samples_name = job.out.with_suffix(".samples.jsonl").name
    atomic_write_jsonl(job.out.parent / samples_name, rows)
    write_results(job.out.with_suffix(RESULTS_SUFFIX), outs)
    if config["steer"]:
        config["steer"] = {"file": config["steer"], "sha256": sha256_file(config["steer"])[:16]}
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
    ap.add_argument("--max-length", type=int, default=None, help="default: eval.lm_eval's")
    ap.add_argument(
        "--backend", choices=("hf", "vllm"), default=None, help="default: eval.lm_eval's"
    )
    ap.add_argument("--use-cache", action="store_true", help="or eval.lm_eval.use_cache")
    ap.add_argument(
        "--steer", default=None, help="a steer file (.pt) for lm-eval's steered model type"
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    run_job(parser(), evaluate, argv)


if __name__ == "__main__":
    main()
