"""The paper's regime at tiny/small (methods/psft/README.md): a seeded pool of long-form demos
trained for several epochs, each arm's checkpoint selected on validation exact match, the
held-out families scored on the selected checkpoint, clip-fraction summaries."""

from __future__ import annotations

import pytest
import torch

import methods.psft.train as psft_train
from claimbench.records import load_run_record
from methods.posttrain.models import load_model
from methods.psft.train import ValidationSelector, demo_pool
from tests.posttrain_fixtures import problems, save_micro_model, scale_file, write_problems


def test_demo_pool_is_seeded_and_bounded():
    rows = problems(50)
    a, b = demo_pool(rows, 10, seed=0), demo_pool(rows, 10, seed=0)
    assert a == b and len(a) == 10 and len({r["id"] for r in a}) == 10
    assert demo_pool(rows, 10, seed=1) != a
    assert demo_pool(rows, None, seed=0) is rows
    with pytest.raises(ValueError, match="papers.psft.train.demos: 51"):
        demo_pool(rows, 51, seed=0)


def test_selector_keeps_best_checkpoint_ties_to_earlier(monkeypatch):
    model = torch.nn.Linear(1, 1, bias=False)
    accs = iter([0.1, 0.5, 0.5, 0.2])
    monkeypatch.setattr(
        psft_train, "greedy_scores", lambda *a, **k: ({"accuracy": next(accs), "n": 4}, [])
    )
    sel = ValidationSelector(model, None, [{}] * 4, every=2, last=7, max_new=4)
    for step in range(1, 8):
        with torch.no_grad():
            model.weight.fill_(float(step))  # the weights at each step are the step number
        row = {"step": step}
        sel(row)
        assert ("valid_em" in row) == (step in (2, 4, 6, 7))
    assert sel.history == [(2, 0.1), (4, 0.5), (6, 0.5), (7, 0.2)]
    assert (sel.best_step, sel.best_acc) == (4, 0.5)
    sel.restore()
    assert model.weight.item() == 4.0


def test_micro_regime_record(tmp_path):
    save_micro_model(tmp_path / "start")
    tr = write_problems(tmp_path / "train.jsonl", problems(64))
    va = write_problems(tmp_path / "valid.jsonl", problems(16, seed=1))
    ood = write_problems(tmp_path / "ood.jsonl", problems(6, seed=2, families=("add3",)))
    cfg = {
        "form": "long",
        "demos": 8,
        "steps": 6,
        "minibatch": 4,
        "inner_steps": 2,
        "lr": 1e-2,
        "lowlr_factor": 0.3,
        "weight_decay": 0.0,
        "warmup_steps": 0,
        "grad_clip": 1.0,
        "eps_low": 0.2,
        "eps_high": 0.28,
        "kl_coef": 0.05,
        "eval_batch": 8,
        "eval_every": 3,
        "select": {"every": 2, "n": 5, "max_new_tokens": 12},
    }
    sf = scale_file(tmp_path / "tiny.yaml", "psft", {"train": cfg})
    out, rec = tmp_path / "psft", tmp_path / "psft.json"
    psft_train.main(
        ["--scale", "tiny", "--scale-file", str(sf), "--paper", "psft", "--variant", "psft"]
        + ["--out", str(out), "--arm", "psft", "--start", str(tmp_path / "start")]
        + ["--train", str(tr), "--valid", str(va), "--ood", str(ood), "--record", str(rec)]
    )
    r = load_run_record(rec)
    m = {(x["task"], x["metric"]): x for x in r["metrics"]}
    assert m[("train", "demos")]["value"] == 8 and m[("train", "epochs")]["value"] == 3.0
    sel_curve = next(s for s in r["series"] if s["name"].startswith("validation exact match"))
    assert sel_curve["x"] == [2, 4, 6]
    best = max(sel_curve["y"])
    assert m[("train", "selected_step")]["value"] == sel_curve["x"][sel_curve["y"].index(best)]
    assert m[("valid_select", "greedy_exact_match")]["value"] == best
    assert m[("ood", "greedy_exact_match")]["n"] == 6
    assert m[("ood", "greedy_exact_match")]["stderr"] is not None
    for k in ("clip_frac_mean", "clip_frac_last20", "clip_frac_max"):
        assert 0.0 <= m[("train", k)]["value"] <= 1.0
    assert ("demo_valid", "log_entropy_selected") in m and ("demo_valid", "entropy_final") in m
    assert r["samples"] and (tmp_path / r["samples"]).is_file()
    load_model(out)


def test_paper_scale_data_paths_read_a_local_dataset(tmp_path):
    """The paper scale's data path (PSFT's demonstrations and G-OPD's prompts from a
    ``datasets:`` entry, methods/posttrain/DATA.md) on a local JSON file."""
    import json

    from methods.gopd.train import dataset_problems
    from methods.psft.train import dataset_demos
    from tests.posttrain_fixtures import micro_tokenizer

    rows = [
        {"q": f"What is {i} + 1?", "a": str(i + 1), "sol": f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}"}
        for i in range(12)
    ]
    f = tmp_path / "toy.json"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"path": "json", "data_files": {"train": str(f)}, "split": "train"}
    spec["columns"] = {"prompt": "q", "answer": "a", "completion": "sol"}
    scale = {"scale": "paper", "datasets": {"toy": spec}}
    tok = micro_tokenizer()
    cfg = {"dataset": "toy", "prompt_format": "plain", "eval_batch": 4, "demos": 5}
    pool, (ps, cs), (vp, vc) = dataset_demos(scale, cfg, tok, seed=0)
    held = {r["q"] for r in rows[-4:]}
    assert len(pool) == len(ps) == len(cs) == 5 and not held & set(ps)  # held-out rows apart
    assert vp == [r["q"] for r in rows[-4:]] and vc == [r["sol"] for r in rows[-4:]]
    assert all(
        c == next(r["sol"] for r in rows if r["q"] == p) for p, c in zip(ps, cs, strict=True)
    )
    with pytest.raises(ValueError, match="not more than eval_batch = 12"):
        dataset_demos(scale, {**cfg, "eval_batch": 12}, tok, seed=0)
    probs = dataset_problems(scale, {"dataset": "toy", "prompt_format": "plain"}, tok)
    assert [p["prompt"] for p in probs] == [r["q"] for r in rows]
    assert [p["answer"] for p in probs] == [r["a"] for r in rows]
