"""The workflow through a real one-node SLURM cluster (slurmctld + slurmd + munged on loopback).

Every non-local job of the reduced tiny workflow goes through ``sbatch`` with
``--workflow-profile profiles/slurm`` (the profile a site edits: partitions, account, GPUs,
memory, runtime), plus the overlay below; the DuckDB numbers must equal those of the local run
of the same workflow (the session fixture ``reduced_run``). A failing job must end the run with
the job's log path; a missing ``sbatch`` must be named in one line.

Without a cluster: the sbatch line of every job of the paper-scale dry run under the profile,
built by the plugin's own functions (partition selection, submit string, GPU request), puts
every job that declares a GPU on the GPU partition with CPUs per GPU, and every other job on
the CPU partition.

The cluster is installed (apt-get, as root) when missing and skipped with a one-line reason
where that is impossible; its daemons live only for this module and are stopped by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import metric_values, run_workflow, tail
from tests.system import SLURM_EXES, SlurmCluster, Unavailable, ensure_slurm

PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "slurm"

# What a cluster without accounting (no slurmdbd) and a quick test need on top of
# profiles/slurm. Given on the command line because the CLI overrides the workflow profile key by
# key (a second --profile would lose to it).
OVERLAY = [
    # The plugin's default status command is sacct, which fails without slurmdbd (Snakemake
    # then waits forever); squeue works because MinJobAge keeps finished jobs listed.
    "--slurm-status-command",
    "squeue",
    # 40 s in the profile (sensible on a busy site); 3 x this must stay <= MinJobAge (3600 s).
    # The plugin adds 10 s to the wait after every poll that finds no finished job.
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "2",
    "--latency-wait",
    "5",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if sys.platform != "linux":
        pytest.skip("slurm: the single-node cluster test runs on Linux only")
    try:
        ensure_slurm()
    except Unavailable as e:
        pytest.skip(str(e))
    if os.geteuid() != 0:
        pytest.skip("slurm: the single-node cluster runs its daemons as root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def slurm_jobs(cluster: SlurmCluster, run_id: str) -> list[tuple[str, str, str]]:
    """(comment, state, partition) of the jobs of one Snakemake run (job name = its SLURM run
    ID) that slurmctld still knows (MinJobAge=3600, since a run on a loaded machine can outlast
    the 300 s default); the comment is ``rule_<name>_...``."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%j|%k|%T|%P"],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        if line.strip():
            job_id, name, comment, state, partition = line.split("|")
            if name == run_id:
                jobs.append((int(job_id), comment, state, partition))
    return [j[1:] for j in sorted(jobs)]


@pytest.mark.e2e
def test_slurm_run_equals_local_run(slurm, failing_run, reduced_run, root, tmp_path):
    # failing_run: only started here, so it shares the cluster's time with this run.
    local = reduced_run["proc"]
    assert local.returncode == 0, "the local reduced run failed:\n" + tail(local)
    scale_file = reduced_run["scale_file"]
    threads = yaml.safe_load(scale_file.read_text())["threads"]
    work = tmp_path / "slurm-work"
    t0 = time.time()
    proc = run_workflow(
        root,
        work,
        scale_file,
        "--workflow-profile",
        str(root / "profiles" / "slurm"),
        *OVERLAY,
        # The tiny scale declares no GPU; ask one for eval_lm so that the GPU partition and
        # its --gpus / --cpus-per-gpu request go through a real sbatch too (the job itself
        # still runs on the CPU: --device comes from the scale, cpu at tiny).
        "--set-resources",
        "eval_lm:gpu=1",
        # Same threads as the local run (CPU float sums depend on them): same numbers.
        "--set-threads",
        f"eval_lm={threads}",
        cores=None,
        env=slurm.env,
        timeout=600,
    )
    wall = time.time() - t0
    assert proc.returncode == 0, tail(proc)
    print(f"\nSLURM run of the reduced workflow: {wall:.0f} s")

    run_id = re.search(r"SLURM run ID: (\S+)", proc.stdout + proc.stderr).group(1)
    jobs = slurm_jobs(slurm, run_id)
    names = [j[0] for j in jobs]
    assert all(state == "COMPLETED" for _, state, _ in jobs), jobs
    # Every job that is not a localrule went through sbatch (fetch_text_source only when the
    # shared PyPI cache lacked the file).
    for rule, count in {"arith_data": 1, "text_data": 1, "tokenizer": 1}.items():
        assert sum(n.startswith(f"rule_{rule}") for n in names) == count, names
    assert sum(n.startswith("rule_base_tiny") for n in names) == 2, names
    evals = [j for j in jobs if j[0].startswith("rule_eval_lm")]
    # partitions.yaml: a job with a GPU goes to the GPU partition, every other to the CPU one
    assert len(evals) == 2 and all(p == "gpu" for _, _, p in evals), jobs
    assert all(p == "cpu" for n, _, p in jobs if not n.startswith("rule_eval_lm")), jobs
    assert not any(r in n for n in names for r in ("ingest", "report")), names  # localrules

    db = "results/claimbench.duckdb"
    local_values = metric_values(reduced_run["work"] / db)
    assert local_values, "the local store holds no metrics"
    assert metric_values(work / db) == local_values


FAILING = """\
rule all:
    input:
        "done.txt",


rule fails:
    output:
        "done.txt",
    log:
        "logs/fails.log",
    resources:
        runtime=2,
    shell:
        "echo 'about to fail on purpose' > {log}; echo from-the-job >&2; exit 3"
"""


@pytest.fixture(scope="module")
def failing_run(slurm, root, tmp_path_factory):
    """A workflow whose one SLURM job exits 3, started in the background as soon as the cluster
    is up, so that it runs beside the (much longer) end-to-end run instead of after it."""
    work = tmp_path_factory.mktemp("failing")
    (work / "Snakefile").write_text(FAILING)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--directory", str(work)]
    cmd += ["--workflow-profile", str(root / "profiles" / "slurm"), *OVERLAY, "--retries", "0"]
    out = open(work / "snakemake.out", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        ["timeout", "-s", "INT", "-k", "30", "300", *cmd],
        cwd=work,
        env=slurm.env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield {"proc": proc, "work": work, "out": out, "t0": time.time()}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


@pytest.mark.e2e
def test_failing_slurm_job_ends_with_its_log(failing_run):
    proc, work = failing_run["proc"], failing_run["work"]
    rc = proc.wait(timeout=330)
    failing_run["out"].seek(0)
    out = failing_run["out"].read()
    report = f"rc={rc}\n{out[-4000:]}"
    assert rc not in (0, 124, 137), report  # it failed, and did not hang
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", out), report
    logs = re.findall(r"(\S*logs/slurm/\S+\.log)", out)
    assert logs, "no SLURM log path in the output:\n" + report
    log = Path(logs[0]) if Path(logs[0]).is_absolute() else work / logs[0]
    assert log.is_file(), logs[0]
    assert "from-the-job" in log.read_text()  # the job's own stderr is in that file
    assert "logs/fails.log" in out  # and the rule's log is named too


@pytest.mark.e2e
def test_slurm_profile_without_sbatch_says_what_is_missing(root, tmp_path):
    # A PATH with everything of this machine's PATH except the SLURM client tools.
    nobin = tmp_path / "bin"
    nobin.mkdir()
    hidden = {*SLURM_EXES, "srun", "sacct", "sacctmgr", "sshare", "scancel", "salloc"}
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name not in hidden and not (nobin / name).exists():
                (nobin / name).symlink_to(Path(folder) / name)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{nobin}")
    assert shutil.which("sbatch", path=env["PATH"]) is None
    scale = root / "config" / "scales" / "tiny.yaml"
    proc = run_workflow(
        root,
        tmp_path / "work",
        scale,
        "--workflow-profile",
        str(root / "profiles" / "slurm"),
        cores=None,
        env=env,
        timeout=120,
    )
    assert proc.returncode not in (0, 124, 137), tail(proc)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "needs sbatch" in ln]
    assert lines == [
        "the slurm executor (--workflow-profile profiles/slurm) needs sbatch and squeue on PATH: "
        "run on a SLURM login node, or install the SLURM client tools (Debian: slurm-client)"
    ], tail(proc)
    assert not (tmp_path / "work" / "logs" / "slurm").exists()  # nothing was submitted


# --------------------------------------------------------------------------- paper-scale dry run


class _Resources(dict):
    """A job's resources as the plugin reads them (``.get`` and attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _DryJob:
    """The part of a Snakemake job that the plugin's submit functions read."""

    def __init__(self, rule: str, wildcards: str, resources: dict):
        self.name = rule
        self.wildcards = wildcards
        self.resources = _Resources(resources)
        self.threads = resources["_cores"]

    def is_group(self) -> bool:
        return False


def _value(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def local_rules(root: Path) -> set[str]:
    """Rules marked ``localrule: True`` (the dry run prints them as ``rule`` too)."""
    found = set()
    for path in [root / "Snakefile", *sorted((root / "rules").glob("*.smk"))]:
        blocks = re.split(r"^\s*(?:rule|checkpoint) (\w+):", path.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            if re.search(r"^\s+localrule: True", body, re.M):
                found.add(name)
    return found


def dry_run_jobs(root: Path, workdir: Path, *extra: str) -> list[_DryJob]:
    """Every job that ``--profile profiles/slurm`` would submit for the paper scale, with the
    resources and threads the dry run prints (the profile's defaults and set-resources applied).
    ``--cores`` is as unbounded as on a cluster (a dry run would otherwise cap threads at 1)."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--forceall", "--cores", "1024"]
        + ["--profile", str(root / "profiles" / "slurm"), "-s", str(root / "Snakefile")]
        + ["--directory", str(workdir), "reproduce_all", "--config", "scale=paper", *extra],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local = local_rules(root)
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule \w+:)", proc.stdout):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m or m.group(1) in local:  # localrules never reach sbatch
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M).group(1)
        resources = dict(kv.split("=", 1) for kv in res.split(", "))
        resources = {k: _value(v) for k, v in resources.items()}
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        resources["_cores"] = int(threads.group(1)) if threads else 1
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        jobs.append(_DryJob(m.group(1), wildcards.group(1) if wildcards else "", resources))
    return jobs


def sbatch_line(job: _DryJob, partitions: list) -> str:
    """The plugin's own sbatch command for the job (its ``run_job``, without submitting):
    partition as ``get_partition_arg`` picks it, submit string, GPU request."""
    import logging

    from snakemake_executor_plugin_slurm.partitions import get_best_partition
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    partition = job.resources.get("slurm_partition") or get_best_partition(
        partitions, job, logging.getLogger("slurm-dry-run")
    )
    params = {
        "run_uuid": "dry-run",
        "slurm_logfile": f"logs/slurm/rule_{job.name}/%j.log",
        "comment_str": f"rule_{job.name}",
        "account": f" -A {job.resources.get('slurm_account')}",
        "partition": f" -p {partition}" if partition else "",
        "workdir": "",
    }
    return get_submit_command(job, params) + set_gres_string(job)


def misplaced(lines: dict[str, list[str]], gpu_partitions: set[str]) -> list[str]:
    """Jobs of ``{rule/wildcards: [sbatch line, ...]}`` on the wrong kind of partition, or
    with a GPU but CPUs per task instead of per GPU."""
    bad = []
    for job, line in lines.items():
        partition = re.search(r" -p (\S+)", line)
        on_gpu = bool(partition) and partition.group(1) in gpu_partitions
        wants_gpu = bool(re.search(r"--gpus=(\w+:)?[1-9]", line))
        if wants_gpu != on_gpu:
            bad.append(f"{job}: {'GPU' if wants_gpu else 'CPU'} job on {partition}: {line}")
        elif wants_gpu and "--cpus-per-gpu=" not in line:
            bad.append(f"{job}: GPU job without --cpus-per-gpu: {line}")
    return bad


@pytest.fixture(scope="module")
def paper_sbatch(root, tmp_path_factory):
    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    partition_file = PROFILE / profile["slurm-partition-config"]
    partitions = read_partition_file(partition_file)
    jobs = dry_run_jobs(root, tmp_path_factory.mktemp("paper-dry-run"))
    return {"jobs": jobs, "partitions": partitions}


def test_paper_scale_puts_every_gpu_job_on_the_gpu_partition(paper_sbatch):
    jobs, partitions = paper_sbatch["jobs"], paper_sbatch["partitions"]
    gpu_partitions = {p.name for p in partitions if p.limits.max_gpu > 0}
    assert gpu_partitions and {p.name for p in partitions} - gpu_partitions
    lines = {f"{j.name}[{j.wildcards}]": sbatch_line(j, partitions) for j in jobs}
    assert len(lines) == len(jobs)
    gpu = [k for k, line in lines.items() if "--gpus=" in line]
    # The paper scale: 300+ jobs, most of them on a GPU (each rule's `gpu: 1` from the scale).
    assert len(jobs) > 100 and len(gpu) > 100, (len(jobs), len(gpu))
    assert misplaced(lines, gpu_partitions) == []
    for key, line in lines.items():
        assert re.search(r" --mem \d+", line) and re.search(r" -t \d+", line), line
        if key in gpu:
            assert "--cpus-per-task" not in line, line
        else:
            threads = next(j.threads for j in jobs if f"{j.name}[{j.wildcards}]" == key)
            assert f"--cpus-per-task={threads}" in line, line
    # Several GPUs: CPUs per GPU too (SLURM multiplies them), never CPUs per task.
    train = [line for key, line in lines.items() if key.startswith("mtp_d_train[")]
    assert train and all("--gpus=8" in ln and "--cpus-per-gpu=8" in ln for ln in train), train


def test_a_gpu_job_on_a_cpu_partition_is_found(paper_sbatch):
    # The check itself: the mapping before partitions.yaml (one partition for every rule but
    # eval_lm, and CPUs per task everywhere) must be reported.
    jobs, partitions = paper_sbatch["jobs"], paper_sbatch["partitions"]
    lines = {}
    for j in jobs:
        old = _DryJob(j.name, j.wildcards, dict(j.resources, cpus_per_task=2))
        old.resources["slurm_partition"] = "gpu" if j.name == "eval_lm" else "cpu"
        lines[f"{j.name}[{j.wildcards}]"] = sbatch_line(old, partitions)
    bad = misplaced(lines, {"gpu"})
    assert any(b.startswith("d2quant_quantize[") and "GPU job on" in b for b in bad), bad
    assert any(b.startswith("eval_lm[") and "without --cpus-per-gpu" in b for b in bad), bad
    # and a CPU job on the GPU partition
    cpu_job = next(j for j in jobs if not j.resources.get("gpu"))
    moved = _DryJob(cpu_job.name, cpu_job.wildcards, dict(cpu_job.resources))
    moved.resources["slurm_partition"] = "gpu"
    assert misplaced({"x": sbatch_line(moved, partitions)}, {"gpu"})
