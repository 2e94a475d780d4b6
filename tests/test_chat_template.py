"""A quantized chat model is evaluated through the same chat template as its full-precision
base (small scale, SmolLM2-135M-Instruct), and a tiny model never is: dry run."""

from __future__ import annotations

import re

from tests.helpers import dry_run


def _eval_commands(snakemake_bin, root, scale, targets):
    # -f: the targets' own jobs are listed even when a finished run left them in the tree
    rc, out = dry_run(snakemake_bin, root, "-p", "-f", "--config", f"scale={scale}", "--", *targets)
    assert rc == 0, out[-2000:]
    cmds = [line for line in out.splitlines() if "benchmarks.lm_eval_suite" in line]
    return {re.search(r"--variant (\S+)", c).group(1): c for c in cmds}


def test_quantized_smollm2_uses_its_chat_template(snakemake_bin, root):
    runs = "results/runs/small"
    cmds = _eval_commands(
        snakemake_bin,
        root,
        "small",
        [
            f"{runs}/base/smollm2/lm_eval.json",
            f"{runs}/d2quant/gptq-w2/lm_eval.json",
            f"{runs}/nsds/smollm2-nsds-b3/lm_eval.json",
            f"{runs}/nsds/planted-nsds-b3/lm_eval.json",
        ],
    )
    for variant in ("smollm2", "gptq-w2", "smollm2-nsds-b3"):
        assert "--chat-template" in cmds[variant], variant
    assert "--chat-template" not in cmds["planted-nsds-b3"]


def test_tiny_models_use_no_chat_template(snakemake_bin, root):
    cmds = _eval_commands(
        snakemake_bin, root, "tiny", ["results/runs/tiny/d2quant/gptq-w2/lm_eval.json"]
    )
    assert cmds and all("--chat-template" not in c for c in cmds.values())
