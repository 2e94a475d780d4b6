"""The perplexity suite (benchmarks/perplexity.py) against a hand computation on a micro Llama,
its windows (GPTQ's convention), and its wiring at the paper scale."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from claimbench.micro import micro_lm

    return micro_lm(tmp_path_factory.mktemp("micro") / "llama", arch="llama")


def _scale_file(tmp_path: Path, ppl: dict) -> Path:
    from tests.helpers import reduced_scale

    path = reduced_scale(tmp_path / "tiny-ppl.yaml", ROOT)
    data = yaml.safe_load(path.read_text())
    data["eval"]["ppl"] = ppl
    path.write_text(yaml.safe_dump(data))
    return path


def test_consecutive_windows_drop_the_last_partial_window():
    import torch

    from benchmarks.perplexity import consecutive_windows

    w = consecutive_windows(torch.arange(11), 4)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert consecutive_windows(torch.arange(3), 4).shape == (0, 4)


def test_random_doc_windows_follow_gptq_c4():
    """Each window is a slice of one document longer than seq_len, drawn by random.seed(seed)
    in GPTQ's order (document, then offset); the same seed gives the same windows."""
    import random

    from benchmarks.perplexity import random_doc_windows
    from claimbench.micro import CORPUS, micro_tokenizer

    tok = micro_tokenizer()
    texts = [" ".join(CORPUS[i : i + 1 + i % 5]) for i in range(40)]
    seq_len = 24
    w = random_doc_windows(tok, texts, seq_len, 6, seed=0)
    assert w.shape == (6, seq_len)
    # The same draws by hand.
    rng = random.Random(0)
    for row in w:
        while True:
            ids = tok(texts[rng.randint(0, len(texts) - 1)], return_tensors="pt").input_ids[0]
            if ids.numel() > seq_len:
                break
        j = rng.randint(0, ids.numel() - seq_len - 1)
        assert row.tolist() == ids[j : j + seq_len].tolist()
    assert not (random_doc_windows(tok, texts, seq_len, 6, seed=1) == w).all()


def test_wikitext_style_ppl_equals_a_hand_computation(micro, tmp_path):
    """The suite's record on a save_to_disk data set: windows cut from the "\\n\\n"-joined text,
    one forward per window, every token but the first predicted, ppl = exp(mean NLL)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks import perplexity
    from claimbench.micro import CORPUS

    lines = CORPUS[:40] + ["", " = Heading = "] + CORPUS[40:60]
    data = tmp_path / "wiki"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": lines})}).save_to_disk(data)
    seq_len = 64
    scale = _scale_file(
        tmp_path,
        {
            "seq_len": seq_len,
            "batch_size": 3,
            "datasets": {"wikitext2": {"path": str(data), "split": "test"}},
        },
    )
    out = tmp_path / "runs" / "ppl.json"
    argv = ["--scale", "tiny", "--scale-file", str(scale), "--paper", "base", "--variant", "micro"]
    perplexity.main([*argv, "--out", str(out), "--artifact", str(micro)])
    rec = json.loads(out.read_text())
    got = {m["metric"]: m for m in rec["metrics"] if m["task"] == "wikitext2"}

    # By hand: float64 log-softmax, one window at a time.
    tok = AutoTokenizer.from_pretrained(micro)
    model = AutoModelForCausalLM.from_pretrained(micro, dtype=torch.float32).eval()
    ids = tok("\n\n".join(lines), return_tensors="pt").input_ids[0]
    n = ids.numel() // seq_len
    assert n >= 3 and ids.numel() % seq_len  # a partial window exists and is dropped
    per_window = []
    with torch.no_grad():
        for i in range(n):
            w = ids[i * seq_len : (i + 1) * seq_len]
            logp = model(w[None]).logits[0].double().log_softmax(-1)
            per_window.append(-logp[:-1].gather(1, w[1:, None]).sum().item() / (seq_len - 1))
    nll = sum(per_window) / n
    sd = math.sqrt(sum((x - nll) ** 2 for x in per_window) / (n - 1))
    assert got["ppl"]["n"] == n and got["nll"]["n"] == n
    assert math.isclose(got["nll"]["value"], nll, rel_tol=1e-5)
    assert math.isclose(got["ppl"]["value"], math.exp(nll), rel_tol=1e-5)
    assert math.isclose(got["nll"]["stderr"], sd / math.sqrt(n), rel_tol=1e-4)
    assert math.isclose(got["ppl"]["stderr"], math.exp(nll) * sd / math.sqrt(n), rel_tol=1e-4)
    assert rec["suite"] == "ppl" and rec["config"]["seq_len"] == seq_len
    # Per-window samples: [log-likelihood, predicted tokens], paired by window index.
    rows = [json.loads(x) for x in (out.parent / rec["samples"]).read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == list(range(n))
    for r, x in zip(rows, per_window, strict=True):
        ll, tokens = r["metrics"]["ppl"]
        assert tokens == seq_len - 1 and math.isclose(-ll / tokens, x, rel_tol=1e-5)


def test_local_text_builder_and_unknown_dataset(micro, tmp_path):
    """A local text file through the same loader (datasets' ``text`` builder); a data set name
    the scale does not list is one line naming it, exit 2."""
    from benchmarks import perplexity
    from claimbench.micro import CORPUS

    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(CORPUS[:50]))
    spec = {"path": "text", "data_files": {"test": str(txt)}, "split": "test"}
    scale = _scale_file(tmp_path, {"seq_len": 32, "datasets": {"local": spec}})
    argv = ["--scale", "tiny", "--scale-file", str(scale), "--paper", "base", "--variant", "m"]
    argv += ["--artifact", str(micro), "--out", str(tmp_path / "r.json")]
    perplexity.main([*argv, "--n-windows", "2"])
    rec = json.loads((tmp_path / "r.json").read_text())
    assert {(m["task"], m["metric"], m["n"]) for m in rec["metrics"]} == {
        ("local", "ppl", 2),
        ("local", "nll", 2),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.perplexity", *argv, "--datasets", "c4"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "--datasets c4" in proc.stderr, proc.stderr[-500:]


def test_paper_scale_dry_run_lists_the_ppl_records():
    """eval_ppl runs for every NSDS / D2Quant artifact and the listed base models at the paper
    scale (the claims' references), never at the tiny scale."""
    from tests.helpers import dry_run

    snakemake = str(Path(sys.executable).parent / "snakemake")
    rc, out = dry_run(snakemake, ROOT, "-F", "reproduce_all", "--config", "scale=paper")
    assert rc == 0, out[-2000:]
    outputs = [
        line.split("output:")[1].split(",")[0].strip()
        for block in out.split("\nrule ")
        if block.startswith("eval_ppl:")
        for line in block.splitlines()
        if "output:" in line
    ]
    papers = {Path(p).parts[3] for p in outputs}
    assert papers == {"nsds", "d2quant", "base"}, papers
    for variant in (
        "nsds/llama-3.1-8b-nsds-b3",
        "d2quant/llama-3.1-8b.d2quant-w2",
        "base/llama-3.1-8b",
    ):
        assert f"results/runs/paper/{variant}/ppl.json" in outputs
    claims = yaml.safe_load((ROOT / "methods/nsds/claims.yaml").read_text())["claims"]
    refs = [
        side
        for c in claims
        if "paper" in c["scales"] and "compare" in (c.get("check") or {})
        for side in (c["check"]["compare"]["lhs"], c["check"]["compare"]["rhs"])
    ]
    assert refs and all(
        (r["suite"], r["task"], r["metric"]) == ("ppl", "wikitext2", "ppl") for r in refs
    )
    for r in refs:
        assert f"results/runs/paper/nsds/{r['variant']}/ppl.json" in outputs
    rc, out = dry_run(snakemake, ROOT, "-F", "reproduce_all", "--config", "scale=tiny")
    assert rc == 0 and "eval_ppl" not in out


@pytest.mark.slow
def test_gpu_smoke_cpu(tmp_path):
    """The evaluation area of ``make gpu-smoke`` on CPU in bf16 (lm-eval and perplexity)."""
    from benchmarks.smoke import gpu_smoke

    lines = gpu_smoke("cpu", "bfloat16", tmp_path)
    assert sum("perplexity" in line for line in lines) == 2, lines
    assert sum("lm-eval hf" in line for line in lines) == 2, lines
