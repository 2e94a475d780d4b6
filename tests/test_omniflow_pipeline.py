"""OMNIFLOW pipeline on a micro data folder laid out like benchmarks/pde writes it (README there)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from claimbench.records import load_run_record
from methods.omniflow import fields as F
from methods.omniflow import physics as P
from methods.omniflow import run


def _traj(rng, n, T, nu, forcing):
    k = np.abs(np.fft.fftfreq(n) * n)
    w = np.real(
        np.fft.ifft2(
            np.fft.fft2(rng.standard_normal((n, n))) * ((k[:, None] < 4) & (k[None, :] < 4))
        )
    )
    w -= w.mean()
    w *= 1.0 / w.std()
    out = [w]
    for _ in range(T - 1):
        out.append(P.simulate(out[-1], 0.5, nu=nu, forcing=forcing))
    return np.stack(out)


def make_data(root, n=16, T=4):
    rng = np.random.default_rng(0)
    f = 0.1 * P.forcing_field("fno", n)
    for regime, nu in (("src", 2e-3), ("shift", 5e-3)):
        d = root / regime
        d.mkdir(parents=True)
        for split, m in (("train", 3), ("test", 2)):
            om = np.stack([_traj(rng, n, T, nu, f) for _ in range(m)])
            uv = [[F.velocity_from_vorticity(w) for w in tr] for tr in om]
            u = np.array([[a for a, _ in tr] for tr in uv])
            v = np.array([[b for _, b in tr] for tr in uv])
            np.savez(
                d / f"{split}.npz",
                omega=om.astype(np.float32),
                u=u.astype(np.float32),
                v=v.astype(np.float32),
                forcing=f,
            )
        meta = {
            "regime": regime,
            "grid": {"N": n, "L": 1.0},
            "dt_record": 0.5,
            "forecast": {"n_input": 1, "n_rollout": T - 1},
        }
        (d / "regime.json").write_text(json.dumps(meta))
    q = root / "questions"
    q.mkdir()
    x, y = F.grid(32)
    w = np.exp(
        -(((x - 0.3 + 0.5) % 1 - 0.5) ** 2 + ((y - 0.6 + 0.5) % 1 - 0.5) ** 2) / (2 * 0.06**2)
    )
    u, v = F.velocity_from_vorticity(w)
    fields = {
        "q0__omega": w,
        "q1__u": u,
        "q1__v": v,
        "q2__u": u + 0.3 * np.sin(2 * np.pi * x),
        "q2__v": v,
    }
    rows = [
        {
            "id": "q0",
            "kind": "vortex_count",
            "question": "How many?",
            "answer": 1,
            "fields": {"omega": "q0__omega"},
            "meta": {},
        },
        {
            "id": "q1",
            "kind": "divergence_free",
            "question": "div?",
            "answer": "yes",
            "fields": {"u": "q1__u", "v": "q1__v"},
            "meta": {},
        },
        {
            "id": "q2",
            "kind": "divergence_free",
            "question": "div?",
            "answer": "no",
            "fields": {"u": "q2__u", "v": "q2__v"},
            "meta": {},
        },
    ]
    np.savez(q / "fields.npz", **{k: a.astype(np.float32) for k, a in fields.items()})
    (q / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def micro_scale_file(folder) -> str:
    """The tiny scale file with an OMNIFLOW section and a PDE data set that fit the micro data."""
    import yaml

    from claimbench.config import ROOT

    data = yaml.safe_load((ROOT / "config" / "scales" / "tiny.yaml").read_text())
    data["papers"]["omniflow"] = {
        "backends": {
            "rule": {"kind": "rule"},
            "rule1": {"kind": "rule", "fault_rate": 1.0, "label": "rule(1.0)"},
        },
        "pgcot": {},
        "qa": {
            "ablations": {"full": {}, "noverify": {"verify": False}},
            "method_names": {"full": "omniflow", "noverify": "omniflow-noverify"},
            "runs": {"rule1": {"variants": ["full", "noverify"]}},
        },
        "forecast": {"backend": "rule", "shots": [0, 1]},
        "baselines": {
            "archs": {
                "fno": {
                    "model": {"width": 4, "modes": 4, "layers": 1},
                    "steps": 3,
                    "lr": 1e-3,
                    "batch": 4,
                }
            },
            "shots": [0, 1],
            "finetune": {"steps": 2, "lr": 0.001, "batch": 2},
        },
    }
    regime = {"equation": "ns2d", "nu": 2e-3, "forcing": "fno", "n_train": 3, "n_test": 2}
    data["benchmarks"]["pde"] = {
        "grid": 16,
        "dt": 0.05,
        "dt_record": 0.5,
        "n_snapshots": 4,
        "forecast": {"n_input": 1, "n_rollout": 3},
        "source": "src",
        "regimes": {"src": regime, "shift": dict(regime, nu=5e-3)},
        "questions": {
            "grid": 32,
            "sim_grid": 16,
            "dt": 0.05,
            "trend_dt": 0.5,
            "n_per_kind": 2,
            "kinds": ["vortex_count", "divergence_free"],
        },
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _job(scale_file, variant, out):
    return [
        "--scale",
        "tiny",
        "--scale-file",
        scale_file,
        "--paper",
        "omniflow",
        "--variant",
        variant,
        "--out",
        str(out),
    ]


def test_pipeline_micro(tmp_path):
    data = tmp_path / "pde"
    make_data(data)
    scale = micro_scale_file(tmp_path)
    art, runs = tmp_path / "art", tmp_path / "runs"
    for ablation in ("full", "noverify"):
        variant = f"qa-{ablation}"
        run.main(
            [
                "qa",
                *_job(scale, variant, art / variant),
                "--data",
                str(data),
                "--backend",
                "rule1",
                "--ablation",
                ablation,
                "--record",
                str(runs / variant / "pgcot.json"),
            ]
        )
    answers = [json.loads(x) for x in (art / "qa-full" / "answers.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers] == [1, "yes", "no"]
    full = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(runs / "qa-full" / "pgcot.json")["metrics"]
    }
    nover = {
        (m["task"], m["metric"]): m["value"]
        for m in load_run_record(runs / "qa-noverify" / "pgcot.json")["metrics"]
    }
    assert full[("all", "violation_rate")] == 0.0 and nover[("all", "violation_rate")] == 1.0
    rec = load_run_record(runs / "qa-full" / "pgcot.json")
    assert rec["base_model"] == "rule(1.0)"
    assert (rec["variant"], rec["method"], rec["paper"]) == ("qa-full", "omniflow", "omniflow")
    assert load_run_record(runs / "qa-noverify" / "pgcot.json")["method"] == "omniflow-noverify"
    # the config object of the record: the merged PG-CoT fields, the backend, the limit (0 = all)
    assert rec["config"]["pgcot"] == {} and rec["config"]["limit_per_kind"] == 0
    assert rec["config"]["backend"]["fault_rate"] == 1.0
    meta = json.loads((art / "qa-full" / "meta.json").read_text())
    assert (meta["name"], meta["paper"], meta["scale"], meta["method"]) == (
        "qa-full",
        "omniflow",
        "tiny",
        "omniflow",
    )
    assert meta["config"] == rec["config"] and "provenance" in meta

    run.main(
        [
            "forecast",
            *_job(scale, "fc-k1", art / "fc-k1"),
            "--data",
            str(data),
            "--k",
            "1",
            "--record",
            str(runs / "fc-k1" / "pgcot_forecast.json"),
        ]
    )
    pred = np.load(art / "fc-k1" / "predictions" / "shift.npz")
    truth = np.load(data / "shift" / "test.npz")["omega"][:, 1:]
    assert pred["omega"].shape == truth.shape and not pred["failed"].any()
    assert np.linalg.norm(pred["omega"] - truth) / np.linalg.norm(truth) < 0.05
    rec = load_run_record(runs / "fc-k1" / "pgcot_forecast.json")
    rows = [json.loads(x) for x in (runs / "fc-k1" / rec["samples"]).read_text().splitlines()]
    assert {"forecast", "figure", "figure_forecast", "figure_truth"} <= {r["task"] for r in rows}
    # k > 0: the shifted regimes only, calibrated on k target trajectories
    assert rec["config"]["regimes"] == ["shift"] and rec["config"]["source"] == "src"
    assert not (art / "fc-k1" / "predictions" / "src.npz").exists()

    run.main(
        [
            "train-baseline",
            *_job(scale, "fno-src", art / "fno-src"),
            "--arch",
            "fno",
            "--data",
            str(data),
        ]
    )
    meta = json.loads((art / "fno-src" / "meta.json").read_text())
    assert meta["config"]["steps"] == 3 and meta["name"] == "fno-src" and meta["dtype"] == "float32"
    run.main(
        [
            "baseline-forecast",
            *_job(scale, "fno-k1", art / "fno-k1"),
            "--model",
            str(art / "fno-src"),
            "--k",
            "1",
            "--data",
            str(data),
        ]
    )
    bp = np.load(art / "fno-k1" / "predictions" / "shift.npz")
    assert bp["omega"].shape == truth.shape and bp["u"].shape == truth.shape
    assert (art / "fno-k1" / "meta.json").is_file()
    assert not (art / "fno-k1" / "predictions" / "src.npz").exists()


def test_zero_shot_forecast_covers_every_regime(tmp_path):
    data = tmp_path / "pde"
    make_data(data)
    scale = micro_scale_file(tmp_path)
    out = tmp_path / "art" / "fc-k0"
    record = tmp_path / "runs" / "fc-k0" / "pgcot_forecast.json"
    run.main(["forecast", *_job(scale, "fc-k0", out), "--data", str(data), "--record", str(record)])
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["shift.npz", "src.npz"]
    assert load_run_record(record)["config"]["regimes"] == ["src", "shift"]


def test_unknown_backend_is_one_line_naming_the_key(tmp_path, capsys):
    scale = micro_scale_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        run.main(
            [
                "qa",
                *_job(scale, "qa-x", tmp_path / "x"),
                "--data",
                str(tmp_path),
                "--backend",
                "gpt9",
                "--ablation",
                "full",
                "--record",
                str(tmp_path / "x.json"),
            ]
        )
    assert e.value.code == 2
    assert "papers.omniflow.qa.runs has no entry 'gpt9' (known: rule1)" in capsys.readouterr().err


def test_hf_backend_follows_the_job_device_and_dtype():
    job = SimpleNamespace(
        config={
            "backends": {
                "lm": {"kind": "hf", "base_model": "lm-m"},
                "big": {"kind": "hf", "path": "/m", "dtype": "bfloat16", "device": "cuda"},
                "rule": {"kind": "rule", "fault_rate": 0.0},
            }
        },
        device="cpu",
        dtype="float16",
    )
    assert run.backend_spec(job, "lm", "artifacts/tiny/base/lm-m") == {
        "kind": "hf",
        "path": "artifacts/tiny/base/lm-m",
        "label": "hf:lm-m",
        "device": "cpu",
        "dtype": "float16",
    }
    big = run.backend_spec(job, "big")  # a backend's own setting wins
    assert (big["device"], big["dtype"]) == ("cuda", "bfloat16")
    assert "device" not in run.backend_spec(job, "rule")
    with pytest.raises(ValueError, match="needs --model"):
        run.backend_spec(job, "lm")


@pytest.mark.parametrize("arch", ["fno", "unet"])
def test_surrogate_trains_in_the_job_dtype(arch):
    """bfloat16 weights and activations (the FFT runs in float32), float32 numpy out."""
    from methods.omniflow.baselines import Surrogate, channel_scale

    rng = np.random.default_rng(0)
    states = rng.standard_normal((2, 3, 3, 16, 16)).astype(np.float32)
    spec = {"width": 4, "modes": 4, "layers": 1} if arch == "fno" else {"width": 4}
    s = Surrogate(arch, spec, channel_scale(states), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in s.model.parameters()} == {torch.bfloat16}
    losses = s.train(states, 2, 1e-3, 2, seed=0)
    assert len(losses) == 2 and all(np.isfinite(losses))
    out = s.rollout(states[:, 0], 2)
    assert out.shape == (2, 2, 3, 16, 16) and out.dtype == np.float32
