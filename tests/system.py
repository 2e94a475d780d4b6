"""Machine set-up for the tests that need real system software: a one-node SLURM cluster
(Debian ``slurm-wlm`` + ``munge``) and a headless Chromium (Debian ``chromium`` driven by the
pip ``playwright`` package).

Missing pieces are installed when the machine allows it (root and ``apt-get``; pip for
playwright), as on CI; otherwise :class:`Unavailable` carries a one-line reason and the test
skips with it. The cluster's daemons run in the foreground under ``subprocess.Popen`` (real
PIDs) with every file under a temporary folder, and are stopped by PID. Recipe and traps:
the README's SLURM section.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAYWRIGHT = "playwright==1.65.2"  # also pinned in pyproject.toml (dev)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SLURM_EXES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
SLURM_PACKAGES = ("slurm-wlm", "munge")
CHROMIUM_PACKAGES = ("chromium", "fonts-dejavu-core")


class Unavailable(Exception):
    """This machine cannot provide the piece (the message is the one-line skip reason)."""


_apt_updated = False


def apt_install(packages: tuple[str, ...], why: str) -> None:
    """``apt-get install`` the packages (after one ``apt-get update``), or raise Unavailable."""
    global _apt_updated
    if os.geteuid() != 0:
        raise Unavailable(
            f"{why}: not installed and not root (apt-get install {' '.join(packages)})"
        )
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{why}: not installed and no apt-get on this machine")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [] if _apt_updated else [["apt-get", "update", "-q"]]
    steps.append(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages])
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
            raise Unavailable(f"{why}: `{' '.join(cmd[:2])}` failed: {last[0]}")
        if cmd[1] == "update":
            _apt_updated = True


def ensure_slurm() -> None:
    if all(shutil.which(e) for e in SLURM_EXES):
        return
    apt_install(SLURM_PACKAGES, "slurm")
    missing = [e for e in SLURM_EXES if not shutil.which(e)]
    if missing:
        raise Unavailable(f"slurm: still missing after apt-get install: {', '.join(missing)}")


def ensure_browser() -> str:
    """Path of the system Chromium, with the playwright package importable."""
    if not Path(CHROMIUM).exists():
        apt_install(CHROMIUM_PACKAGES, "chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        # Only the Python package: its own browser download (`playwright install`) is not used.
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        proc = subprocess.run([*cmd, PLAYWRIGHT], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            raise Unavailable(f"playwright: pip install {PLAYWRIGHT} failed: {tail}") from None
        import importlib

        importlib.invalidate_caches()
        import playwright.sync_api  # noqa: F401
    return CHROMIUM


# --------------------------------------------------------------------------- SLURM

SLURM_CONF = """\
ClusterName=claimbenchtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=5
GresTypes=gpu
# The node is declared as big as the resources profiles/slurm requests (8 CPUs and 64 GB per
# GPU job, two typed a100 GPUs as count-only GRES); config_overrides keeps it from draining on
# a smaller machine. The jobs themselves run on the CPU (device: cpu at tiny scale).
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 RealMemory=160000 Gres=gpu:a100:2 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
"""

# slurmd drops GPUs without File=; two empty files stand in for the device nodes.
GRES_CONF = "AutoDetect=off\nNodeName={host} Name=gpu Type=a100 File={d}/dev/gpu[0-1]\n"


def _die_with_parent() -> None:
    """In the daemon's child process: SIGTERM it when the test process dies (even when pytest
    itself is killed and never reaches the fixture's teardown)."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, log: Path) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}; see {log}")


class SlurmCluster:
    """munged + slurmctld + slurmd on loopback, every file under ``folder``."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        self.procs: list[subprocess.Popen] = []
        self.sockdir = Path(tempfile.mkdtemp(prefix="cb-munge-"))
        self.conf = self.dir / "etc" / "slurm.conf"
        self.env: dict[str, str] = {}
        self._out = None

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)

    def _start(self, *cmd: str) -> None:
        self.procs.append(
            subprocess.Popen(
                cmd,
                env=self.env,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        )

    def start(self) -> SlurmCluster:
        d = self.dir
        for sub in ("etc", "munge", "state", "spool", "run", "log", "bin"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o700)
        # munged refuses a socket whose folder (or any parent) lacks o+x; pytest's are 0700.
        self.sockdir.chmod(0o755)
        sock = self.sockdir / "munge.socket.2"
        subprocess.run(
            ["mungekey", "-c", "-f", "-k", str(d / "munge/munge.key")],
            check=True,
            capture_output=True,
        )
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(
            SLURM_CONF.format(
                host=host, d=d, sock=sock, ctld_port=_free_port(), d_port=_free_port()
            )
        )
        (d / "dev").mkdir(exist_ok=True)
        for i in range(2):
            (d / "dev" / f"gpu{i}").touch()
        (self.conf.parent / "gres.conf").write_text(GRES_CONF.format(host=host, d=d))
        # The slurm-jobstep plugin drops SLURM_CONF before its nested srun: a shim restores it.
        shim = d / "bin" / "srun"
        srun = shutil.which("srun") or "/usr/bin/srun"
        shim.write_text(f'#!/bin/sh\nexport SLURM_CONF="{self.conf}"\nexec {srun} "$@"\n')
        shim.chmod(0o755)
        self.env = dict(
            os.environ,
            SLURM_CONF=str(self.conf),
            PATH=f"{d / 'bin'}{os.pathsep}{os.environ['PATH']}",
        )
        self._out = open(d / "log" / "daemons.out", "ab")  # noqa: SIM115 (closed in stop)
        log = d / "log"
        try:
            self._start(
                "munged",
                "-F",
                "-S",
                str(sock),
                f"--key-file={d}/munge/munge.key",
                f"--pid-file={d}/run/munged.pid",
                f"--log-file={d}/log/munged.log",
                f"--seed-file={d}/munge/munged.seed",
            )
            _wait(sock.exists, 15, "munged", log)
            self._start("slurmctld", "-D", "-c", "-f", str(self.conf))
            _wait(lambda: "UP" in self._run("scontrol", "ping").stdout, 30, "slurmctld", log)
            self._start("slurmd", "-D", "-f", str(self.conf))
            _wait(
                lambda: self._run("sinfo", "-h", "-o", "%T").stdout.split()[:1] == ["idle"],
                60,
                "the node to become idle",
                log,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):  # slurmd, slurmctld, munged
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
        if self._out is not None:
            self._out.close()
            self._out = None
        shutil.rmtree(self.sockdir, ignore_errors=True)
