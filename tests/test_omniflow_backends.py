"""OMNIFLOW backends at paper scale: the hf backend's chat path and hub-id resolution on micro
models, the multimodal request (rendered PNG as an image content part) and the model server's
readiness wait against a local HTTP stub (our client code, not vLLM)."""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from methods.omniflow import backends as B
from methods.omniflow import controller as K
from methods.omniflow import render as R
from methods.omniflow import serve as S
from tests.micro_hub import fill_hub_cache, hub_artifact, use_cache


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    from claimbench.micro import micro_lm

    return micro_lm(tmp_path_factory.mktemp("m") / "qwen2", arch="qwen2")


def test_hf_backend_chat_template_path_generates_text(qwen2):
    be = B.make_backend({"kind": "hf", "path": str(qwen2), "chat_template": True})
    ids = be.encode("how many vortices?")
    assert all(isinstance(i, int) for i in ids)
    text = be.tok.decode(ids)  # the ChatML template was applied, generation prompt included
    assert text.startswith("<|im_start|>user") and text.endswith("<|im_start|>assistant\n")
    out = be.generate("how many vortices?", 6)
    assert isinstance(out, str)
    plain = B.make_backend({"kind": "hf", "path": str(qwen2)})
    assert plain.encode("how many vortices?") == plain.tok("how many vortices?")["input_ids"]


def test_hf_backend_loads_a_hub_base_artifact_from_the_local_cache(qwen2, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = fill_hub_cache(cache, "org/micro-qwen2", qwen2)
    use_cache(monkeypatch, cache)
    art = hub_artifact(tmp_path / "base" / "micro-qwen2", "org/micro-qwen2")
    assert not (art / "config.json").exists()  # a hub base artifact: meta.json only
    be = B.make_backend({"kind": "hf", "path": str(art), "chat_template": True})
    assert be.path.resolve() == snap.resolve()
    ref = B.make_backend({"kind": "hf", "path": str(qwen2), "chat_template": True})
    assert be.weights_hash() == ref.weights_hash()
    assert be.generate("flow?", 4) == ref.generate("flow?", 4)
    missing = hub_artifact(tmp_path / "base" / "other", "org/not-cached")
    with pytest.raises(B.BackendError, match="'org/not-cached' is not available locally"):
        B.make_backend({"kind": "hf", "path": str(missing)})


def _png_pixels(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        crc = struct.unpack(">I", png[pos + 8 + n : pos + 12 + n])[0]
        assert crc == zlib.crc32(kind + data)
        if kind == b"IHDR":
            size = struct.unpack(">II", data[:8])
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    w, h = size
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_render_png_colours_and_orientation():
    f = np.zeros((4, 3))  # field[i, j] at (x_i, y_j)
    f[3, 2] = 2.0  # largest x, largest y: top-right pixel, red
    f[0, 0] = -1.0  # smallest x and y: bottom-left pixel, half-way to blue
    px = _png_pixels(R.render_png(f, scale=2))
    assert px.shape == (6, 8, 3)  # height = ny * 2, width = nx * 2
    assert tuple(px[0, -1]) == (255, 0, 0)
    assert tuple(px[-1, 0]) == (128, 128, 255)
    assert tuple(px[2, 2]) == (255, 255, 255)
    with pytest.raises(ValueError, match="2-D field"):
        R.render_png(np.zeros(5))


class _Server(BaseHTTPRequestHandler):
    """An OpenAI-compatible stub: /v1/models answers 503 until ``ready``; chat bodies kept."""

    ready = threading.Event()
    bodies: list = []
    polls = 0

    def _send(self, code: int, obj: dict) -> None:
        out = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        type(self).polls += 1
        if self.path == "/v1/models" and self.ready.is_set():
            self._send(200, {"object": "list", "data": [{"id": "org/vl", "object": "model"}]})
        else:
            self._send(503, {"error": "loading"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        text = body["messages"][0]["content"][0]["text"]
        self._send(
            200,
            {
                "choices": [
                    {
                        "message": {
                            "content": '{"regime": "ns2d_forced"}'
                            if "step: regime" in text
                            else '{"answer": 3}'
                        }
                    }
                ]
            },
        )

    def log_message(self, *a):
        pass


def test_served_multimodal_backend_waits_for_the_server_and_sends_the_field_as_png(tmp_path):
    from tests.test_omniflow_controller import vortex_item

    srv = HTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/v1"
    url_file = tmp_path / "mllm.url"
    try:
        assert S.models_ready(url) is None  # up, but still loading: 503
        with pytest.raises(S.ServerError, match="no server URL"):
            S.wait_for_url_file(url_file, timeout_s=0.3, interval_s=0.05)
        url_file.write_text(url + "\n")
        threading.Timer(0.3, _Server.ready.set).start()
        t0 = time.monotonic()
        spec = {"kind": "openai", "model": "org/vl", "images": True, "serve": {"port": 1}}
        be = B.make_backend({**spec, "base_url_file": str(url_file), "server_wait_s": 10})
        assert time.monotonic() - t0 >= 0.25 and _Server.polls >= 2  # it polled until ready
        item = vortex_item()
        rep = K.pg_cot(item, be, K.PGCoTConfig())
        assert rep["status"] == "verified" and rep["answer"] == 3
        content = _Server.bodies[-1]["messages"][0]["content"]
        assert [c["type"] for c in content] == ["text", "image_url"]
        head, b64 = content[1]["image_url"]["url"].split(",", 1)
        assert head == "data:image/png;base64"
        import base64

        png = base64.b64decode(b64)
        assert png == R.render_png(item["fields"]["omega"])  # the item's own field
        assert _png_pixels(png).shape == (48 * 4, 48 * 4, 3)
        # the server lists other models only: not ready for this backend
        with pytest.raises(S.ServerError, match="lists"):
            S.wait_ready(url, 0.2, 0.05, model="org/other")
    finally:
        srv.shutdown()
        _Server.ready.clear()


def test_serve_without_vllm_is_one_line(tmp_path, monkeypatch, capsys):
    import importlib.util

    import yaml

    from claimbench.config import CONFIG_DIR

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a)
    )
    monkeypatch.setattr(S, "vllm_executable", lambda: None)
    scale = yaml.safe_load((CONFIG_DIR / "scales" / "tiny.yaml").read_text())
    scale["papers"]["omniflow"]["backends"]["mllm"] = {
        "kind": "openai",
        "model": "org/vl",
        "serve": {"port": 8001},
    }
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(scale))
    opts = ["--scale", "tiny", "--scale-file", str(path), "--paper", "omniflow"]
    opts += ["--variant", "qa-mllm-full", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        S.main([*opts, "--backend", "mllm", "--url-file", str(tmp_path / "u"), "--", "true"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vllm is not installed" in err[0]
    cmd = S.vllm_command("org/vl", "127.0.0.1", 8001, ["--max-model-len", "8192"])
    assert "serve" in cmd[:4]
    assert cmd[cmd.index("serve") + 1 :] == [
        "org/vl",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--max-model-len",
        "8192",
    ]


@pytest.mark.slow
def test_gpu_smoke_cpu(tmp_path):
    from methods.omniflow.smoke import gpu_smoke

    lines = gpu_smoke("cpu", "bfloat16", tmp_path)
    assert len(lines) == 1 and "rule backend: 3 = truth 3" in lines[0]


def test_paper_dry_run_serves_the_multimodal_model_and_evaluates_the_steered_model(tmp_path):
    """Wiring at paper scale: each served QA job starts the server and runs PG-CoT against the
    URL file; the MI contrast exports a steer file that lm-eval's steered model evaluates."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "-p", "--forceall"]
        + ["--cores", "4", "-s", str(root / "Snakefile"), "--directory", str(tmp_path)]
        + ["omniflow_all", "mi_steer_all", "--config", "scale=paper"]
        + ["papers=[omniflow,mi_steer]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cmds = [ln for ln in proc.stdout.splitlines() if "python -m" in ln]
    served = [c for c in cmds if "methods.omniflow.serve" in c]
    assert len(served) == 4  # one per ablation of the served backend
    for c in served:
        url = c.split("--url-file ")[1].split()[0]
        server, qa = c.split(" -- ", 1)
        assert qa.startswith("python -m methods.omniflow.run qa") and "--backend mllm" in qa
        assert f"--server-url-file {url}" in qa and "--device cuda" in server
    assert not any("--backend mllm" in c and "serve" not in c for c in cmds)
    contrast = next(c for c in cmds if "methods.mi_steer.contrast" in c)
    steer = contrast.split("--steer-out ")[1].split()[0]
    steered = next(c for c in cmds if "benchmarks.lm_eval_suite" in c and "--steer" in c)
    assert f"--steer {steer}" in steered and "--backend hf" in steered
    assert "--tasks arc_easy,hellaswag,gsm8k" in steered


def test_serve_job_starts_the_server_runs_the_consumer_and_stops_it(tmp_path, monkeypatch):
    """The server's lifecycle with a stand-in for ``vllm serve`` (a stub OpenAI server process):
    URL file written only once /v1/models answers, consumer run, server stopped, file removed."""
    import socket
    import sys

    import yaml

    from claimbench.config import CONFIG_DIR

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stub = tmp_path / "stub_server.py"
    stub.write_text(
        "import json, sys, time\n"
        "from http.server import BaseHTTPRequestHandler, HTTPServer\n"
        "time.sleep(0.5)  # loading the model\n"
        "class H(BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        out = json.dumps({'data': [{'id': 'org/vl'}]}).encode()\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(out)\n"
        "    def log_message(self, *a): pass\n"
        "HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
    )
    monkeypatch.setattr(S, "check_vllm", lambda: None)
    monkeypatch.setattr(
        S, "vllm_command", lambda model, host, p, args=None: [sys.executable, str(stub), str(p)]
    )
    scale = yaml.safe_load((CONFIG_DIR / "scales" / "tiny.yaml").read_text())
    scale["papers"]["omniflow"]["backends"]["mllm"] = {
        "kind": "openai",
        "model": "org/vl",
        "serve": {"port": port, "startup_timeout_s": 30},
    }
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(scale))
    url_file, seen = tmp_path / "mllm.url", tmp_path / "seen.txt"
    consumer = [sys.executable, "-c"]
    consumer += [f"import shutil; shutil.copy({str(url_file)!r}, {str(seen)!r})"]
    opts = ["--scale", "tiny", "--scale-file", str(path), "--paper", "omniflow"]
    opts += ["--variant", "qa-mllm-full", "--out", str(tmp_path / "out")]
    S.main([*opts, "--backend", "mllm", "--url-file", str(url_file), "--", *consumer])
    url = f"http://127.0.0.1:{port}/v1"
    assert seen.read_text().strip() == url  # the consumer ran while the URL file existed
    assert not url_file.exists()  # removed with the server
    assert S.models_ready(url, timeout_s=1) is None  # the server was stopped
    with pytest.raises(SystemExit) as e:  # a failing consumer fails the job with its code
        S.main([*opts, "--backend", "mllm", "--url-file", str(url_file), "--", "false"])
    assert e.value.code == 1
