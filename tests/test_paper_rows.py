"""Every paper row checked at the paper scale reads an lm-eval task that the paper scale runs
for that paper, and every such task exists (lm-eval's index or benchmarks/lm_eval_tasks): a
typo or a task left out of config/scales/paper.yaml would otherwise leave the row `missing`
only after a cluster run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _refs(check):
    """Every metric reference of a claim's check (``mean`` lists, compare sides, refs)."""
    if isinstance(check, dict):
        if "suite" in check and "metric" in check:
            yield check
            return
        for value in check.values():
            yield from _refs(value)
    elif isinstance(check, list):
        for value in check:
            yield from _refs(value)


def _paper_rows():
    for path in sorted(ROOT.glob("methods/*/claims.yaml")):
        doc = yaml.safe_load(path.read_text())
        for claim in doc["claims"]:
            if "paper" in claim.get("scales", []) and claim.get("check"):
                yield doc["paper"], claim


def _scale_tasks(scale: dict, paper: str) -> set[str]:
    section = scale["papers"].get(paper) or {}
    tasks = set((section.get("lm_eval") or {}).get("tasks", scale["eval"]["lm_eval"]["tasks"]))
    for model in (section.get("models") or {}).values():  # D2Quant's per-model grids
        tasks |= set((model.get("lm_eval") or {}).get("tasks", []))
    for value in section.values():  # nested evaluation blocks (e.g. steered_eval)
        if isinstance(value, dict):
            for sub in value.values():
                if isinstance(sub, dict) and "tasks" in sub:
                    tasks |= set(sub["tasks"])
    return tasks


@pytest.fixture(scope="module")
def scale():
    return yaml.safe_load((ROOT / "config" / "scales" / "paper.yaml").read_text())


@pytest.fixture(scope="module")
def known_tasks():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(ROOT / "benchmarks" / "lm_eval_tasks"))
    return set(tm.all_subtasks)


def test_paper_rows_read_tasks_the_paper_scale_runs(scale, known_tasks):
    rows = list(_paper_rows())
    assert len(rows) > 100
    missing, unknown = [], []
    for paper, claim in rows:
        for ref in _refs(claim["check"]):
            if ref["suite"] != "lm_eval":
                continue
            if ref["task"] not in _scale_tasks(scale, paper):
                missing.append(f"{paper}.{claim['id']}: {ref['task']}")
            if ref["task"] not in known_tasks:
                unknown.append(f"{paper}.{claim['id']}: {ref['task']}")
    assert not missing, f"tasks the paper scale does not run: {missing}"
    assert not unknown, f"tasks neither lm-eval nor benchmarks/lm_eval_tasks has: {unknown}"


def test_the_check_detects_a_task_left_out(scale):
    broken = yaml.safe_load(yaml.safe_dump(scale))
    broken["papers"]["gopd"]["lm_eval"]["tasks"].remove("hmmt25_nov")
    assert "hmmt25_nov" in _scale_tasks(scale, "gopd")
    assert "hmmt25_nov" not in _scale_tasks(broken, "gopd")


def test_gopd_extra_student_runs_from_its_own_start(scale):
    """Table 3's Qwen3-4B student (s2w_4b_exopd): a G-OPD run whose student and pi_ref are that
    model, named as the claim reads it."""
    ns: dict = {"job": lambda *a, **k: None}  # common.smk's job(), used at import
    exec((ROOT / "rules" / "gopd_helpers.smk").read_text(), ns)  # plain Python functions
    runs = ns["_gopd_runs"](scale["papers"]["gopd"])
    run = runs["qwen3-4b-lam1.25"]
    assert run["student"] == run["ref"] == "base:qwen3-4b"
    assert run["method"] == "gopd" and run["lam"] == 1.25
    assert runs["lam1.0"]["student"] == "student"
    variants = {
        ref["variant"]
        for paper, claim in _paper_rows()
        if paper == "gopd"
        for ref in _refs(claim["check"])
    }
    assert variants <= set(runs), variants - set(runs)
