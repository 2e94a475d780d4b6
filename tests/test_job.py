"""The job layer: one parser, schema defaults, device and dtype, the only writer of meta.json and
run records; the README's "Adding a paper" example run end to end in a copy of the repo."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from claimbench.config import fill_defaults
from claimbench.job import Job, job_parser, run_job

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("claimbench", "methods", "benchmarks", "tools")
JOB_OPTIONS = {"--seed", "--out", "--threads", "--scale", "--device", "--dtype"}
# The user's CLI is not a job: its `claims`/`ls --scale` filter a query, `prefetch --scale` names
# the scale to download for, `publish`/`verify --scale` the scale to export or re-check,
# `verify --seed` picks which published runs to re-run, `report`/`publish --out` are output
# folders. Nor are the tools: `gpu_smoke.py --device/--dtype` set a smoke run's device and dtype,
# `screenshots.py --out` is the image folder. Listed so a new one fails.
USER_CLI = {
    ("claimbench/cli.py", "--scale"): 4,
    ("claimbench/cli.py", "--out"): 2,
    ("claimbench/cli.py", "--seed"): 1,
    ("tools/gpu_smoke.py", "--device"): 1,
    ("tools/gpu_smoke.py", "--dtype"): 1,
    ("tools/screenshots.py", "--out"): 1,
}
# Builders of stand-ins for a hub base artifact (micro models for tests and `make gpu-smoke`)
# write the meta.json a base artifact has; they run no job.
FIXTURE_WRITERS = {"claimbench/micro.py", "methods/mi_steer/smoke.py"}
# Localrules that rewrite one data file into another (no artifact, no record): not jobs.
DATA_CONVERTERS = {"methods.realign.world"}
WRITERS = {
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_bytes",
    "write_text",
    "write_bytes",
    "dump",
}


def _sources():
    for d in CODE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != "claimbench/job.py":
                yield rel, ast.parse(path.read_text(encoding="utf-8"), rel)


def _name(func: ast.AST) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _mentions(node: ast.AST, text: str) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == text for n in ast.walk(node))


def test_only_the_job_layer_writes_meta_and_builds_records_and_declares_job_options():
    found, cli = [], {}
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(
                a.name == "make_run_record" for a in node.names
            ):
                found.append(f"{rel}:{node.lineno}: imports make_run_record")
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            if name == "make_run_record" and rel != "claimbench/records.py":
                found.append(f"{rel}:{node.lineno}: calls make_run_record")
            if name in WRITERS and _mentions(node, "meta.json") and rel not in FIXTURE_WRITERS:
                found.append(f"{rel}:{node.lineno}: writes meta.json with {name}")
            if name == "open" and _mentions(node, "meta.json") and not _mentions(node, "r"):
                found.append(f"{rel}:{node.lineno}: opens meta.json")
            if name == "add_argument" and node.args and isinstance(node.args[0], ast.Constant):
                opt = node.args[0].value
                if opt in JOB_OPTIONS:
                    if (rel, opt) in USER_CLI:
                        cli[(rel, opt)] = cli.get((rel, opt), 0) + 1
                    else:
                        found.append(f"{rel}:{node.lineno}: declares {opt}")
    assert found == [], "\n".join(found)
    assert cli == USER_CLI
    assert not (ROOT / "claimbench/entry.py").exists()


# --------------------------------------------------------------------------- parsing


def _parse(argv, tmp_path, papers=None):
    seen = {}

    def run(job: Job) -> None:
        seen["job"] = job

    run_job(job_parser("t", papers=papers), run, argv)
    return seen["job"]


def test_a_job_gets_its_identity_the_scale_defaults_and_its_validated_section(tmp_path):
    job = _parse(["--scale", "tiny", "--paper", "pig", "--variant", "v1", "--out", "o"], tmp_path)
    tiny = yaml.safe_load((ROOT / "config/scales/tiny.yaml").read_text())
    assert (job.scale, job.paper, job.variant, job.out) == ("tiny", "pig", "v1", Path("o"))
    assert (job.seed, job.threads, job.device, job.dtype) == (
        tiny["seed"],
        tiny["threads"],
        "cpu",
        "float32",
    )
    assert job.config["seeds"] == tiny["papers"]["pig"]["seeds"]
    job = _parse(
        ["--scale", "tiny", "--paper", "pig", "--variant", "v", "--out", "o", "--seed", "7"]
        + ["--threads", "2", "--dtype", "bfloat16"],
        tmp_path,
    )
    assert (job.seed, job.threads, job.dtype) == (7, 2, "bfloat16")
    import torch

    assert job.torch_dtype is torch.bfloat16
    assert job.to(torch.zeros(2)).dtype is torch.bfloat16
    assert job.to(torch.zeros(2, dtype=torch.long)).dtype is torch.long  # ids stay integers


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--paper", "pig", "--variant", "v", "--out", "o"], "--scale"),
        (["--scale", "tiny", "--variant", "v", "--out", "o"], "--paper"),
        (["--scale", "tiny", "--paper", "pig", "--out", "o"], "--variant"),
        (["--scale", "tiny", "--paper", "pig", "--variant", "v"], "--out"),
        (["--scale", "huge", "--paper", "pig", "--variant", "v", "--out", "o"], "huge"),
        (["--scale", "tiny", "--paper", "pig", "--variant", "../x", "--out", "o"], "../x"),
        (
            [
                "--scale",
                "tiny",
                "--paper",
                "pig",
                "--variant",
                "v",
                "--out",
                "o",
                "--device",
                "tpu",
            ],
            "tpu",
        ),
        (
            [
                "--scale",
                "tiny",
                "--paper",
                "pig",
                "--variant",
                "v",
                "--out",
                "o",
                "--dtype",
                "int8",
            ],
            "int8",
        ),
        (
            ["--scale", "tiny", "--paper", "pig", "--variant", "v", "--out", "o", "--seed", "-1"],
            "-1",
        ),
        (
            [
                "--scale",
                "tiny",
                "--paper",
                "pig",
                "--variant",
                "v",
                "--out",
                "o",
                "--seed",
                "2147483648",
            ],
            "2147483648",
        ),
        (
            ["--scale", "tiny", "--paper", "pig", "--variant", "v", "--out", "o", "--threads", "0"],
            "'0'",
        ),
        (["--scale", "tiny", "--paper", "nsds", "--variant", "v", "--out", "o"], "nsds"),
    ],
)
def test_bad_job_options_exit_2_naming_the_option(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(argv, tmp_path, papers=["pig"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert needle in err


@pytest.mark.parametrize(
    "scale_text, needle",
    [
        ("scale: tiny\n", "is a required property"),  # a scale file missing its keys
        (": : :\n", "not valid YAML"),
    ],
)
def test_a_bad_scale_file_is_one_line_naming_the_file(scale_text, needle, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(scale_text)
    argv = ["--scale", "tiny", "--paper", "pig", "--variant", "v", "--out", "o"]
    with pytest.raises(SystemExit) as exc:
        _parse([*argv, "--scale-file", str(bad)], tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad.name) in err and needle in err


def test_a_gpu_that_is_not_there_is_a_user_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = ["--scale", "tiny", "--paper", "pig", "--variant", "v", "--out", "o"]
    with pytest.raises(SystemExit) as exc:
        _parse([*argv, "--device", "cuda:0"], tmp_path)
    assert exc.value.code == 2
    assert "torch sees no GPU" in capsys.readouterr().err
    assert _parse([*argv, "--device", "auto"], tmp_path).device == "cpu"


# --------------------------------------------------------------------------- schema defaults

SCHEMA = {
    "$defs": {"lr": {"type": "number", "default": 0.1}},
    "type": "object",
    "properties": {
        "steps": {"type": "integer", "default": 10},
        "lr": {"$ref": "#/$defs/lr"},
        "opt": {"type": "object", "default": {}, "properties": {"beta": {"default": 0.9}}},
        "runs": {"type": "array", "items": {"properties": {"k": {"default": 1}}}},
        "arms": {"additionalProperties": {"properties": {"w": {"default": 2}}}},
        "pick": {"oneOf": [{"properties": {"a": {"default": 1}}}]},
    },
    "allOf": [
        {
            "if": {"properties": {"kind": {"const": "x"}}, "required": ["kind"]},
            "then": {"properties": {"x_only": {"default": True}}},
        }
    ],
}


@pytest.mark.parametrize(
    "given, expected",
    [
        ({}, {"steps": 10, "lr": 0.1, "opt": {"beta": 0.9}}),
        ({"steps": 3, "lr": 0.5}, {"steps": 3, "lr": 0.5, "opt": {"beta": 0.9}}),
        ({"runs": [{}, {"k": 5}]}, {"runs": [{"k": 1}, {"k": 5}]}),
        ({"arms": {"a": {}, "b": {"w": 0}}}, {"arms": {"a": {"w": 2}, "b": {"w": 0}}}),
        ({"pick": {}}, {"pick": {}}),  # oneOf: which branch applies is not guessed
        ({"kind": "x"}, {"kind": "x", "x_only": True}),
        ({"kind": "y"}, {"kind": "y"}),
    ],
)
def test_schema_defaults_fill_what_is_missing_and_nothing_else(given, expected):
    out = fill_defaults(json.loads(json.dumps(given)), SCHEMA)
    base = {"steps": 10, "lr": 0.1, "opt": {"beta": 0.9}}
    assert out == {**base, **expected}


def test_schema_defaults_are_copies_not_shared():
    a, b = fill_defaults({}, SCHEMA), fill_defaults({}, SCHEMA)
    a["opt"]["beta"] = 0.0
    assert b["opt"]["beta"] == 0.9 and SCHEMA["properties"]["opt"]["default"] == {}


# --------------------------------------------------------------------------- meta and records


def test_write_meta_and_record_carry_the_job_identity_and_provenance(tmp_path):
    from claimbench.records import load_run_record, metric

    out = tmp_path / "art"
    argv = ["--scale", "tiny", "--paper", "pig", "--variant", "v", "--out", str(out)]
    job = _parse([*argv, "--seed", "3", "--dtype", "bfloat16"], tmp_path)
    out.mkdir()
    job.write_meta(kind="x", base_model="b")
    meta = json.loads((out / "meta.json").read_text())
    assert {k: meta[k] for k in ("name", "paper", "scale", "seed", "dtype", "kind")} == {
        "name": "v",
        "paper": "pig",
        "scale": "tiny",
        "seed": 3,
        "dtype": "bfloat16",
        "kind": "x",
    }
    assert meta["provenance"]["dtype"] == "bfloat16" and meta["provenance"]["device"] == "cpu"
    rec = job.record(suite="s", base_model="b", metrics=[metric("t", "m", 1.0)], config={"a": 1})
    path = job.write_record(rec, tmp_path / "r.json")
    back = load_run_record(path)
    assert (back["scale"], back["paper"], back["variant"], back["seed"]) == ("tiny", "pig", "v", 3)
    assert back["tasks"] == ["t"] and back["config"] == {"a": 1} and back["method"] == "pig"
    assert back["provenance"]["git_sha"] and back["provenance"]["versions"]["torch"]


# --------------------------------------------------------------------------- the workflow


def _dry_run_jobs(scale: str) -> list[dict]:
    """Every job of ``reproduce_all`` at ``scale`` as the dry run prints it (fresh workdir)."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "-p", "--forceall", "--cores", "1"]
        + ["reproduce_all", "--config", f"scale={scale}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        gpu = re.search(r"\bgpu=(\d+)", res.group(1)) if res else None
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append(
            {
                "rule": m.group(1),
                "gpu": int(gpu.group(1)) if gpu else 0,
                "shell": shell.group(1) if shell else "",
            }
        )
    return jobs


def test_every_gpu_rule_passes_the_device_to_its_job_at_paper_scale():
    jobs = _dry_run_jobs("paper")
    gpu_jobs = [j for j in jobs if j["gpu"] > 0]
    assert len(jobs) > 100 and len(gpu_jobs) > 50, (len(jobs), len(gpu_jobs))
    bad = sorted(
        {j["rule"] for j in gpu_jobs if not re.search(r"--device (cuda|auto)\b", j["shell"])}
    )
    assert bad == [], f"rules with gpu > 0 that do not pass --device cuda: {bad}"
    # and every job of a method or suite gets the whole job identity
    for j in jobs:
        # python or accelerate launch; a data converter (a localrule that rewrites a data file
        # into another, no artifact and no record) runs no job
        if j["shell"].startswith(tuple(f"python -m {m} " for m in DATA_CONVERTERS)):
            continue
        if re.search(r"-m (methods|benchmarks)\.", j["shell"]):
            for opt in ("--scale paper", "--paper ", "--variant ", "--out ", "--dtype "):
                assert opt in j["shell"], (j["rule"], opt, j["shell"])


# --------------------------------------------------------------------------- adding a paper

_BLOCK = re.compile(r"```\w*\n# file: (\S+)\n(.*?)```", re.S)


def readme_example_files() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Adding a paper") :]
    section = section[: section.index("\n## ", 3)]
    return {path: body for path, body in _BLOCK.findall(section)}


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_adding_a_paper_from_the_readme(tmp_path):
    files = readme_example_files()
    assert set(files) == {
        "methods/example/__init__.py",
        "methods/example/run.py",
        "config/schema/papers/example.schema.yaml",
        "rules/example.smk",
        "methods/example/claims.yaml",
    }
    repo = tmp_path / "repo"
    _copy_repo(repo)
    for rel, body in files.items():
        assert not (repo / rel).exists(), f"{rel} exists already: pick another example name"
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(body, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    bin_dir = Path(sys.executable).parent

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    run(str(bin_dir / "snakemake"), "--cores", "1", "example_all", "--config", "papers=[example]")
    record = json.loads((repo / "results/runs/tiny/example/mc/estimate.json").read_text())
    assert record["config"] == {"n_samples": 20000}  # the schema's default reached the job
    assert (record["paper"], record["variant"], record["scale"]) == ("example", "mc", "tiny")
    (value,) = [m["value"] for m in record["metrics"]]
    assert abs(value - 3.14159) < 0.05
    cli = [sys.executable, "-m", "claimbench.cli"]
    run(
        *cli, "ingest", "--runs", "results/runs", "--db", "results/x.duckdb", "--methods", "methods"
    )
    run(*cli, "report", "--db", "results/x.duckdb", "--out", "reports", "--methods", "methods")
    page = (repo / "reports/example.html").read_text(encoding="utf-8")
    assert "The Monte-Carlo estimate of pi exceeds 3." in page and "held" in page
    out = run(*cli, "claims", "--db", "results/x.duckdb", "--paper", "example").stdout
    assert "pi_above_3" in out and "held" in out


def test_a_job_that_imports_torch_late_still_runs_on_its_threads(tmp_path):
    """torch imported after the job's setup (lazily, inside the method) uses the job's threads."""
    code = (
        "import sys\n"
        "from claimbench.job import job_parser, run_job\n"
        "assert 'torch' not in sys.modules\n"
        "def run(job):\n"
        "    import torch\n"
        "    print(torch.get_num_threads())\n"
        "run_job(job_parser('t'), run, ['--scale', 'tiny', '--paper', 'pig', '--variant', 'v',"
        " '--out', 'o', '--threads', '1'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"
