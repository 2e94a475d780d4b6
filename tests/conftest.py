import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Rules run `python -m ...`: make the interpreter running the tests the one on PATH.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def snakemake_bin() -> str:
    return str(Path(sys.executable).parent / "snakemake")


@pytest.fixture(scope="session")
def reduced_run(tmp_path_factory):
    """One local run of the reduced tiny workflow (``papers=[base]``), shared by the tests that
    need a finished store and report: the e2e checks, the SLURM comparison and the browser."""
    from tests.helpers import reduced_scale, run_workflow

    base = tmp_path_factory.mktemp("reduced")
    scale_file = reduced_scale(base / "tiny-ci.yaml", ROOT)
    work = base / "work"
    proc = run_workflow(ROOT, work, scale_file)
    return {"work": work, "scale_file": scale_file, "proc": proc}
