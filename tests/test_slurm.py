"""The workflow through a real one-node SLURM cluster (slurmctld + slurmd + munged on loopback).

Every non-local job of the reduced tiny workflow goes through ``sbatch`` with
``--workflow-profile profiles/slurm`` (the profile a site edits: partitions, account, GPUs,
memory, runtime), plus the overlay below; the DuckDB numbers must equal those of the local run
of the same workflow (the session fixture ``reduced_run``). A failing job must end the run with
the job's log path; a missing ``sbatch`` must be named in one line.

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

pytestmark = pytest.mark.e2e

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
        # The profile gives eval_lm 8 threads (a GPU node); the local run used the scale's
        # thread count, and CPU float sums depend on it: same threads, same numbers.
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
    assert len(evals) == 2 and all(p == "gpu" for _, _, p in evals), jobs  # set-resources
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
