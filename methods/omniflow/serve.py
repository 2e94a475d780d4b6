"""A workflow-managed OpenAI-compatible model server for the multimodal backend (README
"Backends").

``python -m methods.omniflow.serve <job options> --backend mllm --url-file F -- CMD ...``
starts ``vllm serve <model>`` as a child process inside the job's allocation (its GPU), polls
``GET {url}/models`` until the server lists the backend's model, writes ``F`` (one line: the base
URL, ``http://host:port/v1``), runs ``CMD`` (the QA job, which reads the URL from ``F`` with
``--server-url-file`` and checks readiness the same way) and stops the server when ``CMD`` ends,
exiting with its status. Without ``CMD`` the server stays up until the job is stopped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_text
from claimbench.job import Job, job_parser, run_job


class ServerError(ClaimbenchError):
    """The model server cannot be started or does not become ready."""


def models_ready(base_url: str, timeout_s: float = 5.0) -> list[str] | None:
    """The served model ids when ``GET {base_url}/models`` answers 200 with a model list,
    else None (not up yet, or not an OpenAI-compatible server)."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout_s) as r:
            if r.status != 200:
                return None
            obj = json.loads(r.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return None
    return [str(m.get("id")) for m in data if isinstance(m, dict)]


def wait_ready(
    base_url: str,
    timeout_s: float,
    interval_s: float = 2.0,
    proc: subprocess.Popen | None = None,
    model: str | None = None,
) -> list[str]:
    """Poll until the server lists its models (and ``model`` among them when given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = models_ready(base_url)
        if ids is not None and (model is None or model in ids):
            return ids
        if proc is not None and proc.poll() is not None:
            raise ServerError(
                f"model server exited with code {proc.returncode} before it was ready"
            )
        if time.monotonic() >= deadline:
            seen = f"; it lists {ids}" if ids is not None else ""
            raise ServerError(
                f"model server {base_url} not ready after {timeout_s:g} s "
                f"(GET {base_url.rstrip('/')}/models{seen})"
            )
        time.sleep(interval_s)


def wait_for_url_file(
    path: str | os.PathLike, timeout_s: float, interval_s: float = 2.0, model: str | None = None
) -> str:
    """Consumer side: wait for the server job's URL file, then for the server itself."""
    p = Path(path)
    deadline = time.monotonic() + timeout_s
    while not (p.is_file() and p.read_text().strip()):
        if time.monotonic() >= deadline:
            raise ServerError(f"{p}: no server URL after {timeout_s:g} s (is the server job up?)")
        time.sleep(interval_s)
    url = p.read_text().strip().splitlines()[0]
    wait_ready(url, max(1.0, deadline - time.monotonic()), interval_s, model=model)
    return url


def vllm_executable() -> str | None:
    """The ``vllm`` command: ``$VLLM_BIN``, else the project's own vLLM venv (``make vllm-venv``:
    ``.venv-vllm/bin/vllm``, apart because no vLLM release installs next to the project's pins),
    else ``vllm`` on PATH; None when there is none."""
    for cand in (os.environ.get("VLLM_BIN"), str(Path(".venv-vllm") / "bin" / "vllm")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return shutil.which("vllm")


def vllm_command(model: str, host: str, port: int, args: list[str] | None = None) -> list[str]:
    """``vllm serve`` with the model, host and port (vLLM's OpenAI-compatible server)."""
    exe = vllm_executable()
    base = [exe, "serve"] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    return [*base, model, "--host", host, "--port", str(port), *(args or [])]


def check_vllm() -> None:
    if vllm_executable() is None and importlib.util.find_spec("vllm") is None:
        raise ServerError(
            "vllm is not installed: the multimodal backend's server needs it on the GPU node "
            "(`make vllm-venv` builds .venv-vllm; or set VLLM_BIN to a vllm executable)"
        )


def run(job: Job) -> None:
    a = job.args
    spec = (job.config.get("backends") or {}).get(a.backend)
    if not spec or not spec.get("serve"):
        raise ServerError(
            f"papers.omniflow.backends.{a.backend}.serve is not set in the {job.scale} scale file"
        )
    serve = spec["serve"]
    check_vllm()
    host, port = serve.get("host", "127.0.0.1"), int(serve.get("port", 8000))
    url = f"http://{host}:{port}/v1"
    cmd = vllm_command(serve.get("model", spec["model"]), host, port, serve.get("args"))
    if serve.get("model", spec["model"]) != spec["model"]:
        cmd += ["--served-model-name", spec["model"]]
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd)

    def stop(signum, frame):  # SLURM / Snakemake end a job with SIGTERM: take the server along
        raise SystemExit(128 + signum)  # the finally block below stops the server

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ids = wait_ready(url, float(serve.get("startup_timeout_s", 1800)), proc=proc)
        atomic_write_text(a.url_file, url + "\n")
        print(f"ready: {url} serves {ids}", flush=True)
        if a.command:
            rc = subprocess.call(a.command)
            if rc != 0:
                raise SystemExit(rc)
            return
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        Path(a.url_file).unlink(missing_ok=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if rc not in (0, -signal.SIGTERM):
        raise ServerError(f"model server exited with code {rc}")


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["omniflow"], out="a folder for the server's files")
    ap.add_argument("--backend", required=True, help="a key of papers.omniflow.backends")
    ap.add_argument("--url-file", required=True, help="written with the base URL once ready")
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:  # everything after -- is the consumer's command line, untouched
        i = args.index("--")
        args, cmd = args[:i], args[i + 1 :]
    else:
        cmd = []
    ap.set_defaults(command=cmd)  # after --: run this while the server is up
    run_job(ap, run, args)


if __name__ == "__main__":
    main()
