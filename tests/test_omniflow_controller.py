"""OMNIFLOW PG-CoT controller, backends (rule / hf / openai) and the physics tools."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from methods.omniflow import backends as B
from methods.omniflow import controller as K
from methods.omniflow import fields as F
from methods.omniflow import physics as P


def vortex_item(kind="vortex_count", n=48):
    x, y = F.grid(n)
    w = np.zeros((n, n))
    for x0, y0, s in ((0.25, 0.25, 1), (0.75, 0.3, -1), (0.5, 0.75, 1)):
        dx, dy = (x - x0 + 0.5) % 1 - 0.5, (y - y0 + 0.5) % 1 - 0.5
        w += s * np.exp(-(dx**2 + dy**2) / (2 * 0.05**2))
    return {
        "id": f"{kind}-0",
        "kind": kind,
        "question": "How many vortices?",
        "fields": {"omega": w},
        "meta": {},
    }


class Scripted(B.Backend):
    name = "scripted"

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def generate(self, prompt, max_new_tokens=256):
        self.prompts.append(prompt)
        if "### step: regime" in prompt:
            return '{"regime": "ns2d_forced"}'
        return self.replies.pop(0) if self.replies else "nothing"


def test_rule_backend_correct_without_faults():
    rep = K.pg_cot(vortex_item(), B.RuleBackend(), K.PGCoTConfig())
    assert rep["status"] == "verified" and rep["answer"] == 3 and rep["n_rounds"] == 1
    assert rep["regime"] == "ns2d_forced" and rep["constraints"][0]["id"] == "vortex_count"
    stmt = rep["constraints"][0]["statement"]
    assert "Okubo-Weiss" in stmt and "3" not in stmt  # the law, not the detector's count


@pytest.mark.parametrize("kind", ["vortex_count", "vortex_rotation"])
def test_controller_converges_after_injected_faults(kind):
    be = B.RuleBackend(fault_rate=1.0, heed_feedback=1.0, seed=3)
    rep = K.pg_cot(vortex_item(kind), be, K.PGCoTConfig(rounds=3))
    assert rep["violated_first"] and rep["rounds"][0].get("feedback")
    assert rep["status"] == "verified" and not rep["violated"] and rep["n_rounds"] == 2
    # without verification the same faulty first answer is final and counted as a violation
    rep1 = K.pg_cot(vortex_item(kind), be, K.PGCoTConfig(verify=False))
    assert rep1["n_rounds"] == 1 and rep1["violated"] and rep1["status"] in ("unverified", "failed")


def test_bad_answers_are_failed_rounds_not_dropped():
    be = Scripted(
        ["not json", '{"answer": 3, "constraints_checked": ["made_up"]}', '{"answer": 3}']
    )
    rep = K.pg_cot(vortex_item(), be, K.PGCoTConfig(rounds=3))
    errs = [r.get("error", "") for r in rep["rounds"]]
    assert "no JSON" in errs[0] and "unknown constraint" in errs[1] and rep["status"] == "verified"
    assert "### feedback: round 2 failed: unknown constraint" in be.prompts[-1]
    rep = K.pg_cot(vortex_item(), Scripted(["x"] * 3), K.PGCoTConfig(rounds=3))
    assert (
        rep["status"] == "failed"
        and rep["violated"]
        and rep["n_rounds"] == 3
        and rep["answer"] is None
    )


def test_wrong_answer_repaired_by_projection():
    rep = K.pg_cot(
        vortex_item(), Scripted(['{"answer": 7}'] * 3), K.PGCoTConfig(rounds=2, repair=True)
    )
    assert rep["status"] == "repaired" and rep["answer"] == 3 and not rep["violated"]
    assert rep["rounds"][0]["residuals"]["vortex_count"] == pytest.approx(4 / 3)


def test_nan_field_is_failed_item():
    item = vortex_item()
    item["fields"]["omega"][0, 0] = np.inf
    rep = K.pg_cot(item, B.RuleBackend(), K.PGCoTConfig())
    assert rep["status"] == "failed" and "non-finite" in rep["error"]


def test_raw_number_ablation_has_no_descriptors():
    be = Scripted(['{"answer": 3}'])
    K.pg_cot(vortex_item(), be, K.PGCoTConfig(descriptors=False))
    assert "### raw:" in be.prompts[-1] and "### descriptors" not in be.prompts[-1]
    assert "detector count" not in be.prompts[-1]


def _forced_frames(n=32, T=3, dt=0.2, nu=2e-3):
    rng = np.random.default_rng(1)
    k = np.abs(np.fft.fftfreq(n) * n)
    w0 = np.real(
        np.fft.ifft2(
            np.fft.fft2(rng.standard_normal((n, n))) * ((k[:, None] < 5) & (k[None, :] < 5))
        )
    )
    w0 -= w0.mean()
    w0 *= 2 / w0.std()
    f = 0.1 * P.forcing_field("fno", n)
    fr = [w0]
    for _ in range(T - 1 + 2):
        fr.append(P.simulate(fr[-1], dt, nu=nu, alpha=0.02, forcing=f))
    return np.stack(fr), dt


def test_fit_recovers_parameters_and_forecast_loop():
    frames, dt = _forced_frames()
    fit = P.fit_vorticity_equation(frames[:3], dt)
    assert fit["nu"] == pytest.approx(2e-3, rel=0.3) and fit["forcing"]["fno"] == pytest.approx(
        0.1, rel=0.2
    )
    item = {
        "id": "f0",
        "kind": "forecast",
        "fields": {"omega": frames[:3]},
        "meta": {"dt": dt, "n_rollout": 2},
    }
    rep = K.pg_cot(
        item,
        B.RuleBackend(fault_rate=1.0, faults=["wrong_value"], seed=0),
        K.PGCoTConfig(budget_tol=0.2),
    )
    assert rep["rounds"][0]["violated"] and rep["status"] == "verified"
    pred = rep["_forecast"]
    truth = frames[3:5]
    assert np.linalg.norm(pred - truth) / np.linalg.norm(truth) < 0.1


def test_taylor_green_solver_exact():
    x, y = F.grid(32)
    w = 4 * np.pi * np.sin(2 * np.pi * x) * np.sin(2 * np.pi * y)
    out = P.simulate(w, 0.5, nu=1e-2)
    np.testing.assert_allclose(out, w * np.exp(-2 * 1e-2 * (2 * np.pi) ** 2 * 0.5), atol=1e-10)


class _Stub(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["temperature"] == 0 and body["messages"][0]["role"] == "user"
        reply = (
            '{"regime": "ns2d_forced"}'
            if "step: regime" in body["messages"][0]["content"]
            else '{"answer": 3}'
        )
        out = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_openai_backend_stub_and_unreachable():
    srv = HTTPServer(("127.0.0.1", 0), _Stub)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        be = B.make_backend(
            {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{srv.server_port}/v1",
                "model": "stub",
            }
        )
        rep = K.pg_cot(vortex_item(), be, K.PGCoTConfig())
        assert rep["status"] == "verified" and rep["answer"] == 3
    finally:
        srv.shutdown()
    with pytest.raises(B.BackendError, match="unreachable"):
        B.OpenAIBackend(f"http://127.0.0.1:{srv.server_port}/v1", "stub", timeout_s=2).generate(
            "hi"
        )


def test_hf_backend_loads_tiny_local_model_offline(tmp_path, monkeypatch):
    from tests.posttrain_fixtures import save_micro_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_micro_model(tmp_path / "m")
    be = B.make_backend({"kind": "hf", "path": str(tmp_path / "m")})
    h = be.weights_hash()
    out = be.generate("### task: vortex_count\n### answer:", 8)
    assert isinstance(out, str) and be.weights_hash() == h  # frozen: weights unchanged
    rep = K.pg_cot(vortex_item(), be, K.PGCoTConfig(rounds=2, max_new_tokens=8, regime_step=False))
    assert rep["status"] in ("failed", "verified", "unverified") and rep["n_rounds"] >= 1
    with pytest.raises(B.BackendError, match="not a local model folder"):
        B.make_backend({"kind": "hf", "path": str(tmp_path / "missing")})
