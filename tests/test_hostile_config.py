"""Hostile and damaged input, table-driven: a scale file, a claims file or a job's input mutated,
the one-line error it must give (file, key and value), exit status 2, and no write.

Each case runs through a real entry point: :func:`claimbench.config.load_scale` (what the
workflow and every job call first), :func:`claimbench.claims.load_claim_files` (ingest),
``snakemake -n`` on a copy of the repository (a bad claims file stops every workflow call), and
the job entry points ``methods.posttrain.cli`` and ``methods.omniflow.run`` (in process, and once
as ``python -m``). Every case asserts that the results folder it uses is byte-identical after
the failure; the checkout's own ``results/`` is compared before and after the whole module.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from claimbench.claims import load_claim_files, load_claims_file
from claimbench.config import SEED_MAX, load_scale
from claimbench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((ROOT / "config/scales/tiny.yaml").read_text(encoding="utf-8"))


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tree_stat(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file (cheap enough for the checkout's whole results/)."""
    if not folder.is_dir():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module", autouse=True)
def checkout_results_untouched():
    before = tree_stat(ROOT / "results")
    yield
    assert tree_stat(ROOT / "results") == before


def results_folder(tmp_path: Path) -> Path:
    """A results folder holding a previous run's record, which a failing case must not touch."""
    folder = tmp_path / "results"
    (folder / "runs").mkdir(parents=True)
    (folder / "runs" / "previous.json").write_text('{"run_id": "previous"}\n')
    return folder


# --------------------------------------------------------------------- scale files


def _set(path: str, value):
    def mutate(d):
        *parents, last = path.split(".")
        node = d
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return mutate


def _first_float(section: str):
    """Set the first float of ``papers.<section>`` (whatever it is called) to NaN."""

    def mutate(d):
        def walk(node):
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(v, float):
                    node[k] = float("nan")
                    return True
                if isinstance(v, dict | list) and walk(v):
                    return True
            return False

        assert walk(d["papers"][section]), f"papers.{section} holds no float"

    return mutate


SCALE_CASES = [
    (
        "lr-nan",
        _set("models.lm-s.train.lr", float("nan")),
        r"models\.lm-s\.train\.lr: nan: not a finite number",
    ),
    (
        "lr-inf",
        _set("models.lm-s.train.lr", float("inf")),
        r"models\.lm-s\.train\.lr: inf: not a finite",
    ),
    ("z-neg-inf", _set("claims.z", float("-inf")), r"claims\.z: -inf: not a finite number"),
    (
        "fraction-nan",
        _set("data.arith.long_fraction", float("nan")),
        r"data\.arith\.long_fraction: nan",
    ),
    ("paper-float-nan", _first_float("psft"), r"papers\.psft\.[\w.]+: nan: not a finite number"),
    (
        "chars-huge-float",
        _set("data.text.max_train_chars", 1.0e30),
        r"data\.text\.max_train_chars: 1e\+30 is not of type 'integer'",
    ),
    (
        "steps-integral-float",
        _set("models.lm-s.train.steps", 40.0),
        r"models\.lm-s\.train\.steps: 40\.0 is not of type 'integer'",
    ),
    (
        "threads-huge-int",
        _set("threads", 10**30),
        r"threads: 10{30}: does not fit a signed 64-bit integer",
    ),
    ("seed-2^31", _set("seed", SEED_MAX), r": seed: 2147483648: a seed must lie in \[0, 2\^31\)"),
    ("seed-2^32", _set("seed", 2**32 + 5), r": seed: 4294967301: a seed must lie in \[0, 2\^31\)"),
    ("seed-negative", _set("seed", -1), r": seed: -1: a seed must lie in \[0, 2\^31\)"),
    ("seed-float", _set("seed", 1.0), r": seed: 1\.0 is not of type 'integer'"),
    (
        "paper-seeds-item",
        _set("papers.psft.seeds", [0, 2**40]),
        r"papers\.psft\.seeds\.1: 1099511627776: a seed must lie",
    ),
]


@pytest.mark.parametrize(
    "mutate, message", [c[1:] for c in SCALE_CASES], ids=[c[0] for c in SCALE_CASES]
)
def test_bad_scale_value_is_one_line(tmp_path, mutate, message):
    data = copy.deepcopy(TINY)
    mutate(data)
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(data))  # NaN / inf are written as YAML's .nan / .inf
    with pytest.raises(ConfigError, match=message) as err:
        load_scale("tiny", path)
    text = str(err.value)
    assert text.startswith(str(path) + ": ") and "\n" not in text


def test_the_seed_bound_is_what_every_consumer_accepts(tmp_path):
    """[0, 2^31): numpy seeds below 2^32 with room for the jobs' offsets (``seed + 1``), torch
    and the store's BIGINT column take all of it; the largest seed below the bound passes."""
    import torch

    np.random.seed(SEED_MAX - 1 + 1000)
    torch.manual_seed(SEED_MAX - 1)
    with pytest.raises(ValueError):
        np.random.seed(2**32)
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(TINY) | {"seed": SEED_MAX - 1}))
    assert load_scale("tiny", path)["seed"] == SEED_MAX - 1


# --------------------------------------------------------------------- claims files

BASE_CLAIMS = {
    "paper": "demo",
    "title": "Demo",
    "claims": [
        {
            "id": "c1",
            "statement": "a beats b",
            "scales": ["tiny"],
            "check": {
                "compare": {
                    "lhs": {"variant": "a", "task": "t", "metric": "m"},
                    "op": ">",
                    "rhs": {"variant": "b", "task": "t", "metric": "m"},
                }
            },
        }
    ],
}


def _claims(mutate):
    def make():
        data = copy.deepcopy(BASE_CLAIMS)
        return mutate(data) or data

    return make


def _cmp(d):
    return d["claims"][0]["check"]["compare"]


CLAIMS_CASES = [
    (
        "top-level-list",
        _claims(lambda d: [d]),
        r": <top level>: a list: a claims file is a mapping",
    ),
    (
        "top-level-empty",
        _claims(lambda d: "just text"),
        r": <top level>: a str: a claims file is a mapping",
    ),
    (
        "unknown-check-kind",
        _claims(lambda d: d["claims"][0].update(check={"comprae": _cmp(d)})),
        r": claim 'c1' \(claims\.0\): check: "
        r"Additional properties are not allowed \('comprae' was unexpected\)",
    ),
    (
        "typo-in-check",
        _claims(lambda d: _cmp(d).update(margn=0.1)),
        r": claim 'c1' \(claims\.0\): check\.compare: .*'margn' was unexpected",
    ),
    (
        "typo-in-claim",
        _claims(lambda d: d["claims"][0].update(statment="x")),
        r": claim 'c1' \(claims\.0\): Additional .*'statment' was unexpected",
    ),
    (
        "bad-op",
        _claims(lambda d: _cmp(d).update(op="<<")),
        r": claim 'c1' \(claims\.0\): check\.compare\.op: '<<' is not one of",
    ),
    (
        "nan-margin",
        _claims(lambda d: _cmp(d).update(margin=float("nan"))),
        r": claim 'c1' \(claims\.0\): check\.compare\.margin: nan: not a finite number",
    ),
    (
        "inf-paper-value",
        _claims(lambda d: d["claims"][0].update(paper_value={"value": float("inf")})),
        r": claim 'c1' \(claims\.0\): paper_value\.value: inf: not a finite",
    ),
    (
        "ref-seed-too-big",
        _claims(lambda d: _cmp(d)["lhs"].update(seed=2**31)),
        r": claim 'c1' \(claims\.0\): check\.compare\.lhs\.seed: 2147483648: a seed must lie",
    ),
    (
        "ref-seed-float",
        _claims(lambda d: _cmp(d)["lhs"].update(seed=1.0)),
        r": claim 'c1' \(claims\.0\): check\.compare\.lhs\.seed: 1\.0 is not of type 'integer'",
    ),
    (
        "duplicate-id",
        _claims(lambda d: d["claims"].append(copy.deepcopy(d["claims"][0]))),
        r": claims: duplicate id\(s\) \['c1'\]",
    ),
    (
        "claim-without-id",
        _claims(lambda d: d["claims"][0].pop("id") and None),
        r": claims\.0: 'id' is a required property",
    ),
]


@pytest.mark.parametrize(
    "make, message", [c[1:] for c in CLAIMS_CASES], ids=[c[0] for c in CLAIMS_CASES]
)
def test_bad_claims_file_is_one_line(tmp_path, make, message):
    path = tmp_path / "methods" / "demo" / "claims.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(make()))
    with pytest.raises(ConfigError, match=message) as err:
        load_claim_files(tmp_path / "methods")
    assert str(err.value).startswith(str(path) + ": ") and "\n" not in str(err.value)


def test_two_claims_files_for_one_paper_name_both(tmp_path):
    for pkg in ("demo", "demo_copy"):
        path = tmp_path / pkg / "claims.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump(BASE_CLAIMS))
    with pytest.raises(ConfigError) as err:
        load_claim_files(tmp_path)
    text = str(err.value)
    assert str(tmp_path / "demo_copy" / "claims.yaml") in text
    assert str(tmp_path / "demo" / "claims.yaml") in text and "'demo'" in text


def test_every_repository_claims_file_passes_the_strict_schema():
    papers, claims = load_claim_files(ROOT / "methods")
    assert len(papers) >= 10 and all(c["file"].endswith("claims.yaml") for c in claims)
    for path in sorted((ROOT / "methods").glob("*/claims.yaml")):
        load_claims_file(path)


# --------------------------------------------------------------------- the workflow


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The checkout's tracked and new files (no results, artifacts or data) in a temp folder."""
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("results/", "artifacts/", "data/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.mark.parametrize(
    "text, message",
    [
        ("- paper: psft\n", r"methods/psft/claims\.yaml: <top level>: a list: a claims file is"),
        (
            yaml.safe_dump(
                BASE_CLAIMS
                | {"paper": "psft", "claims": [BASE_CLAIMS["claims"][0] | {"check": {"al": []}}]}
            ),
            r"methods/psft/claims\.yaml: claim 'c1' \(claims\.0\): check: .*'al' was unexpected",
        ),
    ],
    ids=["list", "unknown-check-kind"],
)
def test_snakemake_stops_on_a_bad_claims_file(repo_copy, snakemake_bin, text, message):
    claims = repo_copy / "methods" / "psft" / "claims.yaml"
    good = claims.read_text(encoding="utf-8")
    claims.write_text(text, encoding="utf-8")
    try:
        proc = subprocess.run(
            [snakemake_bin, "-n", "--cores", "1", "reproduce_all"],
            cwd=repo_copy,
            env=dict(os.environ, PYTHONPATH=str(repo_copy)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        claims.write_text(good, encoding="utf-8")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if "invalid configuration:" in ln]
    assert len(lines) == 1 and __import__("re").search(message, lines[0]), out[-2000:]
    assert "AttributeError" not in out and "Traceback" not in out
    assert not (repo_copy / "results").exists()


# --------------------------------------------------------------------- job inputs


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """A micro start model, its training problems and a tiny scale file for a G-OPD SFT job,
    and a PDE source regime folder for the OMNIFLOW baseline job (fresh-clone safe)."""
    from tests.posttrain_fixtures import problems, save_micro_model, scale_file, write_problems

    folder = tmp_path_factory.mktemp("inputs")
    save_micro_model(folder / "start")
    write_problems(folder / "train.jsonl", problems(16))
    scale_file(folder / "scale.yaml", "gopd", {})
    np.savez(folder / "states.npz", **{k: np.zeros((2, 3, 8, 8)) for k in ("omega", "u", "v")})
    return folder


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _case_truncated_safetensors(w, tmp):
    shutil.copytree(w / "start", tmp / "start")
    _truncate(tmp / "start" / "model.safetensors")
    message = str(tmp / "start" / "model.safetensors") + r": not a readable safetensors file"
    return "posttrain", {"start": tmp / "start"}, message


def _case_truncated_config_json(w, tmp):
    shutil.copytree(w / "start", tmp / "start")
    _truncate(tmp / "start" / "config.json", 0.3)
    message = str(tmp / "start" / "config.json") + r": .*not a valid JSON file"
    return "posttrain", {"start": tmp / "start"}, message


def _case_truncated_jsonl(w, tmp):
    rows = (w / "train.jsonl").read_text().splitlines(keepends=True)
    train = tmp / "train.jsonl"
    train.write_text("".join(rows[:5]) + rows[5][:30] + "\n" + "".join(rows[6:]))
    return "posttrain", {"train": train}, str(train) + r": line 6 column 30: not valid JSON"


def _case_missing_train(w, tmp):
    train = tmp / "nope.jsonl"
    return "posttrain", {"train": train}, r"arithmetic data not found: " + str(train)


def _case_missing_start(w, tmp):
    message = str(tmp / "gone") + r": not a causal-LM artifact \(no config\.json\)"
    return "posttrain", {"start": tmp / "gone"}, message


def _case_scale_nan(w, tmp):
    data = yaml.safe_load((w / "scale.yaml").read_text())
    data["models"]["lm-s"]["train"]["lr"] = float("nan")
    (tmp / "scale.yaml").write_text(yaml.safe_dump(data))
    message = str(tmp / "scale.yaml") + r": models\.lm-s\.train\.lr: nan: not a finite number"
    return "posttrain", {"scale-file": tmp / "scale.yaml"}, message


def _baseline_data(w, tmp, damage):
    source = TINY["benchmarks"]["pde"]["source"]
    (tmp / "pde" / source).mkdir(parents=True)
    npz = tmp / "pde" / source / "train.npz"
    shutil.copy(w / "states.npz", npz)
    damage(npz)
    return npz


def _case_truncated_npz(w, tmp):
    npz = _baseline_data(w, tmp, _truncate)
    return "baseline", {}, str(npz) + r": truncated or not a valid archive"


def _case_missing_npz(w, tmp):
    npz = _baseline_data(w, tmp, Path.unlink)
    return "baseline", {}, str(npz) + r": No such file or directory"


JOB_CASES = [
    ("truncated-safetensors", _case_truncated_safetensors),
    ("truncated-config-json", _case_truncated_config_json),
    ("truncated-jsonl", _case_truncated_jsonl),
    ("missing-jsonl", _case_missing_train),
    ("missing-start-model", _case_missing_start),
    ("scale-file-nan", _case_scale_nan),
    ("truncated-npz", _case_truncated_npz),
    ("missing-npz", _case_missing_npz),
]


def _job_argv(kind: str, w: Path, tmp: Path, out: Path, over: dict) -> tuple:
    if kind == "posttrain":
        from methods.posttrain.cli import main

        argv = [
            "sft",
            *("--scale", "tiny", "--paper", "gopd", "--variant", "v", "--out", str(out)),
            *("--settings", "student_sft"),
        ]
        files = {"scale-file": w / "scale.yaml", "start": w / "start", "train": w / "train.jsonl"}
        for key, path in (files | over).items():
            argv += [f"--{key}", str(path)]
        return main, argv
    from methods.omniflow.run import main

    argv = ["train-baseline", "--scale", "tiny", "--paper", "omniflow", "--variant", "fno"]
    return main, [*argv, "--out", str(out), "--arch", "fno", "--data", str(tmp / "pde")]


@pytest.mark.parametrize("case", [c[1] for c in JOB_CASES], ids=[c[0] for c in JOB_CASES])
def test_damaged_job_input_is_one_line(job_inputs, tmp_path, capsys, case):
    import re

    kind, over, message = case(job_inputs, tmp_path)
    results = results_folder(tmp_path)
    main, argv = _job_argv(kind, job_inputs, tmp_path, results / "runs" / "previous.json", over)
    before = tree_digest(results)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), err[-2000:]
    assert "Traceback" not in err
    assert tree_digest(results) == before


def test_job_seed_beyond_the_bound_exits_2(job_inputs, tmp_path, capsys):
    main, argv = _job_argv("posttrain", job_inputs, tmp_path, tmp_path / "out", {})
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--seed", str(2**32)])
    assert exc.value.code == 2
    assert "argument --seed: '4294967296' must lie in [0, 2^31)" in capsys.readouterr().err


def test_damaged_npz_through_python_m(job_inputs, tmp_path):
    """The same as a rule runs it: a separate process, its exit status and its last line."""
    npz = _baseline_data(job_inputs, tmp_path, lambda p: _truncate(p, 0.9))
    results = results_folder(tmp_path)
    _, argv = _job_argv("baseline", job_inputs, tmp_path, results / "runs" / "previous.json", {})
    before = tree_digest(results)
    proc = subprocess.run(
        [sys.executable, "-m", "methods.omniflow.run", *argv],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {npz}: truncated or not a valid archive (File is not a zip file)"
    )
    assert "Traceback" not in proc.stderr and tree_digest(results) == before


def _run_entry(run, tmp_path, capsys) -> tuple[int, str]:
    from claimbench.job import job_parser, run_job

    argv = ["--scale", "tiny", "--paper", "base", "--variant", "v", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        run_job(job_parser("t"), run, argv)
    return exc.value.code, capsys.readouterr().err


def test_the_job_layer_names_the_file_only_for_a_library_error(tmp_path, capsys):
    """A library's ValueError (numpy reading a truncated .npy) gets the file it was reading; the
    entry's own ValueError keeps its message; Ctrl-C exits 130; a bug keeps its traceback."""
    npy = tmp_path / "x.npy"
    np.save(npy, np.arange(1000.0))
    _truncate(npy)

    def library(job):
        np.load(npy)

    def own(job):
        path = npy  # a readable file in scope must not be blamed for the entry's own error
        raise ValueError(f"papers.x.k: 3 is odd ({path.suffix})")

    def interrupted(job):
        raise KeyboardInterrupt

    def bug(job):
        return {}["missing"]

    code, err = _run_entry(library, tmp_path, capsys)
    assert code == 2 and err.startswith(f"error: {npy}: Failed to read all data"), err
    code, err = _run_entry(own, tmp_path, capsys)
    assert (code, err) == (2, "error: papers.x.k: 3 is odd (.npy)\n")
    code, err = _run_entry(interrupted, tmp_path, capsys)
    assert (code, err) == (130, "error: interrupted\n")
    with pytest.raises(KeyError):
        _run_entry(bug, tmp_path, capsys)
