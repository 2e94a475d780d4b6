"""OMNIFLOW pipeline on a micro data folder laid out like benchmarks/pde writes it (README there)."""

import json

import numpy as np

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
        (d / "meta.json").write_text(json.dumps(meta))
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


def test_pipeline_micro(tmp_path):
    data = tmp_path / "pde"
    make_data(data)
    art, runs = tmp_path / "art", tmp_path / "runs"
    run.main(
        [
            "qa",
            "--data",
            str(data),
            "--backend",
            json.dumps({"kind": "rule", "fault_rate": 1.0, "label": "rule(1.0)"}),
            "--variants",
            json.dumps({"qa-full": {}, "qa-noverify": {"verify": False}}),
            "--art",
            str(art),
            "--runs",
            str(runs),
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
    assert load_run_record(runs / "qa-full" / "pgcot.json")["base_model"] == "rule(1.0)"

    run.main(
        [
            "forecast",
            "--data",
            str(data),
            "--regimes",
            "src,shift",
            "--source",
            "src",
            "--k",
            "1",
            "--backend",
            '{"kind": "rule"}',
            "--pgcot",
            "{}",
            "--variant",
            "fc-k1",
            "--out",
            str(art / "fc-k1"),
            "--runs",
            str(runs / "fc-k1"),
        ]
    )
    pred = np.load(art / "fc-k1" / "predictions" / "shift.npz")
    truth = np.load(data / "shift" / "test.npz")["omega"][:, 1:]
    assert pred["omega"].shape == truth.shape and not pred["failed"].any()
    assert np.linalg.norm(pred["omega"] - truth) / np.linalg.norm(truth) < 0.05
    rec = load_run_record(runs / "fc-k1" / "pgcot_forecast.json")
    rows = [json.loads(x) for x in (runs / "fc-k1" / rec["samples"]).read_text().splitlines()]
    assert {"forecast", "figure", "figure_forecast", "figure_truth"} <= {r["task"] for r in rows}

    run.main(
        [
            "train-baseline",
            "--arch",
            "fno",
            "--spec",
            json.dumps(
                {"model": {"width": 4, "modes": 4, "layers": 1}, "steps": 3, "lr": 1e-3, "batch": 4}
            ),
            "--data",
            str(data),
            "--source",
            "src",
            "--out",
            str(art / "fno-src"),
        ]
    )
    run.main(
        [
            "baseline-forecast",
            "--model",
            str(art / "fno-src"),
            "--k",
            "1",
            "--finetune",
            '{"steps": 2, "lr": 0.001, "batch": 2}',
            "--data",
            str(data),
            "--regimes",
            "shift",
            "--out",
            str(art / "fno-k1"),
        ]
    )
    bp = np.load(art / "fno-k1" / "predictions" / "shift.npz")
    assert bp["omega"].shape == truth.shape and bp["u"].shape == truth.shape
    assert (art / "fno-k1" / "meta.json").is_file()
