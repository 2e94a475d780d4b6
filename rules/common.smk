# Helpers shared by every .smk file -- validated config, paths, input and params functions.
#
# Network assets are named in params under fixed keys, so `claimbench prefetch` can list them
# from the workflow's jobs (claimbench/prefetch.py): `model_id` (+ `revision`) for a Hugging Face
# model, `hub_dataset` ("path" or "path:config", or a list) for a hub data set, `lm_eval_tasks`
# (comma-separated) for lm-eval tasks, `package` + `version` (+ `sha256`) for a PyPI file.
import json
import os
from pathlib import Path

from claimbench.config import load_workflow_config
from claimbench.errors import ClaimbenchError

# Offline by default: a stray hub access fails at once instead of hanging (README: Scales, nothing is downloaded at run time).
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    RESOLVED = load_workflow_config(config)
except ClaimbenchError as _err:
    raise WorkflowError(f"invalid configuration: {_err}") from None

SCALE_NAME = config["scale"]
SCALE = RESOLVED["scale"]
PAPERS = RESOLVED["papers"]
DATA = f"data/{SCALE_NAME}"
ART = f"artifacts/{SCALE_NAME}"
RUNS = f"results/runs/{SCALE_NAME}"
LOGS = f"logs/{SCALE_NAME}"
DB = "results/claimbench.duckdb"
JOB_THREADS = SCALE["threads"]
GPU = SCALE["gpu"]
MODELS = SCALE["models"]
LM_EVAL = SCALE["eval"]["lm_eval"]

# rules/<paper>.smk for every known paper except the base models (rules/base.smk); benchmark
# data rules (rules/pde.smk) come in through rules/data.smk, before every paper.
PAPER_RULE_FILES = sorted(
    str(p)
    for p in Path(workflow.basedir, "rules").glob("*.smk")
    if p.stem not in ("common", "data", "pde", "base", "eval", "report")
)

# Run records each paper contributes to the store; rules/<paper>.smk adds its own.
RUN_RECORDS = {}


def models_of_kind(kind):
    return sorted(name for name, spec in MODELS.items() if spec["kind"] == kind)


def one_of(names):
    """Wildcard regex matching exactly the given names (never matching when empty)."""
    import re

    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def paper_lm_eval(wildcards):
    """A paper's optional ``lm_eval`` overrides (``tasks``, ``max_gen_toks``,
    ``include_defaults``) of the scale's."""
    return (SCALE.get("papers", {}).get(wildcards.paper) or {}).get("lm_eval", {})


def lm_eval_tasks(wildcards):
    return ",".join(paper_lm_eval(wildcards).get("tasks", LM_EVAL["tasks"]))


def uses_chat_template(wildcards):
    """Whether an artifact is prompted through its chat template: it is one of the scale's
    ``chat_template_models``, or derives from one: a paper whose ``base_model``, ``start_model``
    or ``student_model`` is one (every D2Quant variant of SmolLM2, every PSFT arm of
    Qwen2.5-7B-Instruct) or a variant named ``<model>-...`` (NSDS's ``smollm2-nsds-b3``).
    A quantized chat model is asked exactly as its full-precision base, so their scores compare.
    """
    chat = set(LM_EVAL["chat_template_models"])
    paper = SCALE.get("papers", {}).get(wildcards.paper) or {}
    return bool(
        chat
        & {
            wildcards.variant,
            wildcards.variant.split("-")[0],
            paper.get("base_model"),
            paper.get(
                "start_model"
            ),  # PSFT, noisy rewards, realignment: trained from it
            paper.get("student_model"),  # G-OPD's student
        }
    )


def lm_eval_options(wildcards):
    """The suite's own options for one artifact: what the scale's ``eval.lm_eval`` (which the
    suite reads itself, dtype override included) does not say: the paper's ``lm_eval``
    overrides and whether the artifact is prompted through its chat template."""
    paper = paper_lm_eval(wildcards)
    opts = []
    if "max_gen_toks" in paper:
        opts.append(f"--max-gen-toks {paper['max_gen_toks']}")
    if paper.get("include_defaults"):
        opts.append("--include-defaults")
    if uses_chat_template(wildcards):
        opts.append("--chat-template")
    return " ".join(opts)


# The perplexity suite's settings (rules/eval.smk, rule eval_ppl).
PPL = SCALE["eval"].get("ppl") or {}
LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow")


def ppl_hub_datasets(ppl):
    """The hub data sets the perplexity suite reads (`hub_dataset`, for claimbench prefetch)."""
    out = []
    for spec in (ppl.get("datasets") or {}).values():
        if spec["path"] in LOCAL_BUILDERS or os.path.isdir(spec["path"]):
            continue
        entry = {"path": spec["path"], "name": spec.get("name")}
        if spec.get("data_files"):
            entry["kwargs"] = {"data_files": spec["data_files"]}
        out.append(entry)
    return out


def ppl_records(ppl):
    """{paper: the ppl.json records it adds}, after checking the names it lists; base models
    in eval.ppl.base_models get one too (the tables' full-precision rows)."""
    from claimbench.config import known_papers

    where = config.get("scale_file") or f"config/scales/{SCALE_NAME}.yaml"
    papers = known_papers(Path(workflow.basedir))
    for key, known in (("papers", papers), ("base_models", MODELS)):
        unknown = sorted(set(ppl.get(key, [])) - set(known))
        if unknown:
            raise WorkflowError(
                f"{where}: eval.ppl.{key}: {unknown} are not known {key}"
            )
    out = {
        paper: [
            os.path.join(os.path.dirname(path), "ppl.json")
            for path in RUN_RECORDS[paper]
            if os.path.basename(path) == "lm_eval.json"
        ]
        for paper in ppl.get("papers", [])
        if paper in RUN_RECORDS
    }
    if ppl.get("base_models"):
        out["base"] = [f"{RUNS}/base/{m}/ppl.json" for m in ppl["base_models"]]
    return out


def job(paper="{paper}", variant="{variant}", out=None, seed=None):
    """Params function: the options every job takes (``claimbench.job``), so that a rule states
    only what is its own: ``params: job=job("nsds", "{src}")`` then ``{params.job}`` in shell.

    ``paper`` and ``variant`` are formatted with the rule's wildcards (``"{name}"``). ``out`` is
    the name of the output the job writes, a function of the wildcards giving a folder (a job
    that writes several records under one folder), or None: the folder of the first output.
    ``seed`` is a number, a wildcard pattern (``"{seed}"``), a function of the wildcards (a grid
    whose runs carry their own seeds), or None: the scale's seed. Threads come from the rule's
    ``threads``, the dtype from the scale, and the device from the scale for a rule that asks
    for a GPU (``resources: gpu > 0``) and ``cpu`` for one that does not: a job runs where SLURM
    put it. A ``scale_file`` given on the command line travels with the job.
    """
    import shlex

    def get(wildcards, output, threads, resources):
        fmt = lambda v: str(v).format(**dict(wildcards.items()))
        if out is None:
            dest = os.path.dirname(output[0])
        elif callable(out):
            dest = out(wildcards)
        else:
            dest = output[out]
        if seed is None:
            job_seed = SCALE["seed"]
        elif callable(seed):
            job_seed = seed(wildcards)
        else:
            job_seed = fmt(seed)
        opts = [
            ("--scale", SCALE_NAME),
            ("--paper", fmt(paper)),
            ("--variant", fmt(variant)),
            ("--seed", job_seed),
            ("--threads", threads),
            ("--device", SCALE["device"] if resources.get("gpu", 0) > 0 else "cpu"),
            ("--dtype", SCALE["dtype"]),
            ("--out", dest),
        ]
        if config.get("scale_file"):
            opts.append(("--scale-file", config["scale_file"]))
        return " ".join(f"{k} {shlex.quote(str(v))}" for k, v in opts)

    return get


# Multi-GPU training jobs (profiles/slurm): the GPUs of one job and the command that starts its
# Python module. `engine.launcher` of the scale names the launcher's config file (profiles/engine/).
ENGINE = SCALE.get("engine") or {}


def _eval_model(wildcards):
    """The scale model an evaluated artifact is (or derives from): ``<model>`` or
    ``<model>.<arm>-w<bits>`` (D2Quant's sources), else its paper's base/start model."""
    name = wildcards.variant.split(".")[0]
    if name in MODELS:
        return MODELS[name]
    paper = SCALE.get("papers", {}).get(wildcards.paper) or {}
    for key in ("base_model", "start_model", "student_model"):
        if paper.get(key) in MODELS:
            return MODELS[paper[key]]
    return {}


def eval_gpus(wildcards):
    """GPUs of an evaluation job: the model's ``eval_gpus`` (a 70B model's bf16 weights need
    several), else the scale's ``gpu``; 0 where the scale has none."""
    if not GPU:
        return 0
    return int(_eval_model(wildcards).get("eval_gpus") or GPU)


def eval_mem_mb(default):
    """Host memory of an evaluation job: the model's ``eval_mem_mb``, else ``default``."""

    def get(wildcards):
        return int(_eval_model(wildcards).get("eval_mem_mb") or default)

    return get


def train_gpus(paper=None, configured=None):
    """GPUs of one multi-GPU training job (its ``resources: gpu``): ``configured`` (a paper's
    own count), else the scale's ``engine.gpus_per_job``, else the scale's ``gpu``; 0 where the
    scale has no GPU (tiny, small), whatever the count says."""
    if not GPU:
        return 0
    if configured is None and paper is not None:
        configured = (SCALE.get("papers", {}).get(paper) or {}).get("gpus")
    return int(configured or ENGINE.get("gpus_per_job") or GPU)


def launch_command(gpus, config_file=None, threads=None):
    """``python`` for a job on the CPU or one GPU; ``accelerate launch`` with one process per
    GPU of the allocation for more (the engine's launcher: DDP, or FSDP / DeepSpeed by the
    config file; torchrun underneath, a free port per job so jobs may share a node)."""
    if int(gpus) <= 1:
        return "python"
    opts = ["accelerate launch", f"--num_processes {int(gpus)}", "--num_machines 1"]
    opts.append(f"--config_file {config_file}" if config_file else "--multi_gpu")
    opts.append("--main_process_port 0")
    if threads:
        opts.append(f"--num_cpu_threads_per_process {int(threads)}")
    return " ".join(opts)


def launch(config_file=None):
    """Params function ``launch=launch()``, then ``"{params.launch} -m methods.x ..."`` in shell:
    the launcher for the GPUs the job asks for (its ``gpu`` resource), so the processes
    started always match the allocation SLURM grants. ``config_file``: an accelerate config
    (DDP, FSDP, DeepSpeed) instead of the scale's ``engine.launcher``."""

    def get(wildcards, threads, resources):
        cfg = config_file or ENGINE.get("launcher")
        return launch_command(resources.get("gpu", 0), cfg, threads)

    return get


def all_run_records(wildcards):
    return [path for paper in PAPERS for path in RUN_RECORDS.get(paper, [])]


def output_dir(wildcards, output):
    """Folder of the rule's first output (an artifact or data folder)."""
    return os.path.dirname(output[0])


def input_dir(wildcards, input):
    """Folder of the rule's first input (an artifact folder holding meta.json)."""
    return os.path.dirname(input[0])


def data_dir(wildcards, input):
    """The scale's data folder, from the task data files (data/<scale>/<dataset>/<file>)."""
    return os.path.dirname(os.path.dirname(input.data[0]))


def methods_dir(wildcards, input):
    """The methods/ folder, from the claims files (methods/<pkg>/claims.yaml)."""
    return os.path.dirname(os.path.dirname(input.claims[0]))


def model_field(key, default=None):
    """Params function: one field of the model named by the ``name`` wildcard."""

    def get(wildcards):
        return MODELS[wildcards.name].get(key, default)

    return get


# The slurm executor submits with sbatch and polls with squeue (profiles/slurm); without them
# the plugin fails late, once per job, on whichever tool it calls first. Say it once, up front.
SLURM_TOOLS = ("sbatch", "squeue")


def check_executor_tools():
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    import shutil

    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        raise WorkflowError(
            f"the slurm executor (--workflow-profile profiles/slurm) needs {' and '.join(missing)} "
            "on PATH: run on a SLURM login node, or install the SLURM client tools "
            "(Debian: slurm-client)"
        )


onstart:
    check_executor_tools()
