"""D²Quant at the paper scale: every row of Tables 1-2 that a source of the paper scale
measures has a `within` check whose references name variants and metrics the scale produces
(the paper's metric: WikiText-2 perplexity from the `ppl` suite, the 7-task average of lm-eval
accuracies); BoA rows are `not attempted`; the FP16 reference artifact points at its base."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from claimbench.config import load_scale

TASKS = {"piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande", "rte", "openbookqa"}
NORM = {"piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"}  # acc_norm; else acc


def _variants(section: dict) -> set[str]:
    """The variants papers.d2quant produces (rules/d2quant_helpers.smk, d2q_variants)."""
    out = set()
    for name, src in section["sources"].items():
        spec = {k: section.get(k, []) for k in ("bits", "arms", "ablation_bits", "ablation_arms")}
        spec.update({k: v for k, v in src.items() if k in spec})
        if src.get("fp16", section.get("fp16")):
            out.add(f"{name}.fp16")
        for bits_key, arms_key in (("bits", "arms"), ("ablation_bits", "ablation_arms")):
            out |= {f"{name}.{a}-w{b}" for b in spec[bits_key] for a in spec[arms_key]}
    return out


def _refs(ref: dict) -> list[dict]:
    return ref["mean"] if "mean" in ref else [ref]


@pytest.fixture(scope="module")
def paper(root):
    scale = load_scale("paper")
    claims = yaml.safe_load((root / "methods/d2quant/claims.yaml").read_text())["claims"]
    rows = [c for c in claims if c["scales"] == ["paper"] and "paper_value" in c]
    return scale, rows


def test_every_measured_row_has_a_check_on_a_produced_variant(paper):
    scale, rows = paper
    section = scale["papers"]["d2quant"]
    variants = _variants(section)
    assert set(section["lm_eval"]["tasks"]) == TASKS
    assert "d2quant" in scale["eval"]["ppl"]["papers"]
    assert "wikitext2" in scale["eval"]["ppl"]["datasets"]
    assert len(rows) == 92
    checked = [c for c in rows if "check" in c]
    assert len(checked) == 84 and len(checked) / len(rows) >= 0.8
    for c in rows:
        if "BoA" in c["paper_value"]["setting"]:
            assert "check" not in c and "BoA" in c["not_attempted"], c["id"]
            continue
        spec = c["check"]["within"]
        refs = _refs(spec["ref"])
        for r in refs:
            assert r["variant"] in variants, (c["id"], r["variant"])
        model = c["paper_value"]["model"].lower().replace("llama", "llama-").replace("--", "-")
        assert all(r["variant"].startswith(model + ".") for r in refs), (c["id"], model)
        if c["paper_value"]["benchmark"] == "WikiText-2":
            assert refs == [{**refs[0], "suite": "ppl", "task": "wikitext2", "metric": "ppl"}]
            assert spec["value"] == c["paper_value"]["value"] and spec["tol_rel"] == 0.05
        else:
            assert {r["task"] for r in refs} == TASKS and len(refs) == 7
            for r in refs:
                assert r["suite"] == "lm_eval"
                assert r["metric"] == ("acc_norm" if r["task"] in NORM else "acc"), r
            # the published Avg, or the mean of its own seven columns where they disagree
            m = re.search(r"recomputed from the 7 columns: ([0-9.]+)", c.get("note", ""))
            want = float(m.group(1)) if m else c["paper_value"]["value"]
            assert spec["value"] == pytest.approx(want / 100)
            fp16 = c["paper_value"]["setting"] == "FP16"
            assert spec["tol_abs"] == (0.02 if fp16 else 0.03)


def test_every_source_is_a_hub_model_and_big_models_get_more_memory(paper):
    scale, _ = paper
    section = scale["papers"]["d2quant"]
    assert set(section["sources"]) == {
        "qwen3-8b", "qwen3-14b", "qwen3-32b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b",
        "llama-3.1-70b",
    }  # fmt: skip
    for name, src in section["sources"].items():
        assert scale["models"][src["base_model"]]["kind"] == "hub"
        mem = src.get("mem_mb", section["mem_mb"])
        if "70b" in name:
            assert mem >= 2 * 141_000  # bf16 weights on the host, twice over
        assert mem > 2 * 1000 * int(re.search(r"(\d+)b$", name).group(1))


def test_fp16_reference_points_at_its_base(tmp_path):
    from claimbench.models import resolve_pretrained
    from methods.d2quant.reference import main
    from tests.quant_fixtures import job_args, save_quant_micro

    save_quant_micro(tmp_path / "base")
    main(["--model", str(tmp_path / "base"), *job_args("d2quant", "x.fp16", tmp_path / "ref")])
    meta = json.loads((tmp_path / "ref/meta.json").read_text())
    assert meta["method"] == "fp16" and meta["name"] == "x.fp16"
    assert resolve_pretrained(tmp_path / "ref") == str((tmp_path / "base").resolve())
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "meta.json").write_text(
        json.dumps({"name": "m", "kind": "hub", "load": {"hub_id": "org/m", "revision": None}})
    )
    main(["--model", str(hub), *job_args("d2quant", "m.fp16", tmp_path / "ref2")])
    meta = json.loads((tmp_path / "ref2/meta.json").read_text())
    assert meta["load"] == {"hub_id": "org/m", "revision": None} and meta["kind"] == "hub"


@pytest.mark.slow
def test_paper_dry_run_lists_every_source(snakemake_bin, root):
    from tests.helpers import dry_run

    rc, out = dry_run(snakemake_bin, root, "-F", "d2quant_all", "--config", "scale=paper")
    assert rc == 0, out[-2000:]
    for src in ("qwen3-8b", "qwen3-32b", "llama-3-70b", "llama-3.1-70b"):
        for v in ("fp16", "gptq-w2", "gptq_rot-w2", "gptaq-w2", "gptaq_rot-w2", "d2quant-w2"):
            assert f"results/runs/paper/d2quant/{src}.{v}/lm_eval.json" in out, (src, v)
            assert f"results/runs/paper/d2quant/{src}.{v}/ppl.json" in out, (src, v)
    blocks = [b for b in out.split("\nrule ") if b.startswith("d2quant_quantize:")]
    big = [b for b in blocks if "llama-3-70b.d2quant-w2" in b]
    assert big and "mem_mb=600000" in big[0] and "gpu=1" in big[0]
