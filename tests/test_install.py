"""What ``make venv`` installs: the torch build per kind of machine, the extras, and the
dependencies of the paper scale's math task.

The install itself is not run here (minutes, and the CUDA build needs a package index this
machine may not reach): the Makefile's recipe is read with ``make -n -B`` (print, run nothing).
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib

import pytest

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make: not installed")


def recipe(root, *variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", "-C", str(root), "venv", *variables],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cpu_install_uses_a_configured_wheel_or_pytorchs_cpu_index(root):
    proc = recipe(root)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # A wheel that pip's configuration supplies without an index (find-links) is used as it is;
    # otherwise PyTorch's CPU index, never a bare `torch` from the stock index.
    assert "--dry-run --no-index --no-deps torch==2.13.0" in out
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in out
    assert "-e '.[dev]'" in out
    assert "assert torch.version.cuda is None" in out


def test_cuda_install_takes_the_stock_build_with_the_gpu_extra(root):
    proc = recipe(root, "TORCH=cuda", "EXTRAS=gpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "download.pytorch.org/whl/cpu" not in out and "--no-index" not in out
    assert "-e '.[dev,gpu]'" in out
    # The build has CUDA; nothing asks for a visible GPU (a login node has none).
    assert "assert torch.version.cuda," in out and "is None" not in out
    assert "cuda.is_available" not in out
    index = "https://download.pytorch.org/whl/cu126"
    proc = recipe(root, "TORCH=cuda", f"TORCH_CUDA_INDEX={index}")
    assert f"--index-url {index} torch==2.13.0" in proc.stdout


def test_an_unknown_torch_build_is_one_line(root):
    proc = recipe(root, "TORCH=rocm")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "TORCH=rocm is not one of cpu, cuda" in proc.stderr
    assert not proc.stdout  # nothing would have run


def test_extras_named_by_the_makefile_exist(root):
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert {"dev", "gpu"} <= set(project["optional-dependencies"])
    # minerva_math500 (paper scale) imports math-verify, sympy and antlr4 4.11 from lm-eval's
    # `math` extra: it is a base dependency, not an optional one.
    assert any(d.startswith("lm-eval[") and "math" in d for d in project["dependencies"])


def test_the_math_task_dependencies_import_and_score():
    # lm-eval's own minerva_math utils: importing it checks sympy, math_verify and
    # antlr4-python3-runtime 4.11 (it raises when one is missing or another antlr4 is there).
    from lm_eval.tasks.minerva_math import utils

    assert utils.is_equiv(r"\frac{1}{2}", "0.5")  # sympy's LaTeX parser runs on antlr4
    assert not utils.is_equiv(r"\frac{1}{2}", "0.6")
    doc = {"answer": r"\frac{1}{2}", "solution": r"So $x = \boxed{\frac{1}{2}}$."}
    right = utils.process_results(doc, [r"Hence the answer is $\boxed{0.5}$."])
    wrong = utils.process_results(doc, [r"Final Answer: The final answer is $3$."])
    assert right["math_verify"] == 1 and wrong == {"exact_match": 0, "math_verify": 0}
