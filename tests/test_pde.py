"""benchmarks/pde: solvers against exact solutions/invariants, metrics on hand-made arrays, the
data generator and the suite on a micro spec (whole file: a few seconds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.pde import metrics as M
from benchmarks.pde import solvers as S
from benchmarks.pde.generate import generate
from benchmarks.pde.generate import main as generate_main
from benchmarks.pde.questions import gaussian_vortices
from benchmarks.pde.spectral import (
    PDEInputError,
    dealias_mask,
    energy,
    energy_spectrum,
    enstrophy,
    palinstrophy,
    velocity_from_vorticity,
    vorticity_from_velocity,
)
from benchmarks.pde.suite import main as suite_main
from claimbench.config import ROOT, SCHEMA_DIR, fill_defaults, read_yaml
from claimbench.errors import ConfigError
from claimbench.records import load_run_record

N = 32


def grid(n=N):
    x = np.arange(n) / n
    return np.meshgrid(x, x, indexing="ij")


def band_limited_grf(seed, n=N, k=2):
    w = S.grf_vorticity(np.random.default_rng(seed), k, n)
    m = dealias_mask(n)
    return np.fft.irfft2(np.fft.rfft2(w) * m, s=(n, n))


# ---------------------------------------------------------------- conventions


def test_counter_clockwise_vortex_has_positive_vorticity_and_ccw_velocity():
    w, centres, signs, _ = gaussian_vortices(np.random.default_rng(0), 64, 1)
    if signs[0] < 0:
        w = -w
    u, v = velocity_from_vorticity(w)
    i, j = np.unravel_index(np.argmax(w), w.shape)
    n = 64
    # east of the centre the flow goes north (v > 0); north of it the flow goes west (u < 0)
    assert v[(i + 3) % n, j] > 0 and u[i, (j + 3) % n] < 0
    np.testing.assert_allclose(vorticity_from_velocity(u, v), w - w.mean(), atol=1e-8)


# ---------------------------------------------------------------- solvers


def test_taylor_green_decays_at_the_exact_rate():
    xx, yy = grid()
    k = 2 * np.pi * 2
    w0 = 2 * k * np.sin(k * xx) * np.sin(k * yy)
    nu, t = 5e-3, 1.5
    w = S.VorticitySolver(N, nu, 0.01).run(w0, [0.0, t])
    np.testing.assert_allclose(w[-1], w0 * np.exp(-2 * nu * k**2 * t), atol=1e-10)


def test_inviscid_unforced_run_conserves_energy_and_enstrophy():
    w0 = band_limited_grf(1) * 5
    w = S.VorticitySolver(N, 0.0, 0.005).run(w0, [0.0, 0.5])
    u, v = velocity_from_vorticity(w)
    e, z = energy(u, v), enstrophy(w)
    assert np.abs(w[:, 1] - w[:, 0]).max() > 1e-3  # the flow did evolve
    np.testing.assert_allclose(e[:, 1], e[:, 0], rtol=1e-7)
    np.testing.assert_allclose(z[:, 1], z[:, 0], rtol=1e-7)
    np.testing.assert_allclose(w.mean(axis=(-2, -1)), 0.0, atol=1e-12)  # mean vorticity


def test_forced_run_closes_the_energy_and_enstrophy_budgets():
    f = S.forcing_field("fno", N)
    w0 = band_limited_grf(2)
    solver = S.VorticitySolver(N, 1e-2, 0.001, alpha=0.05, forcing=f)
    errs = {}
    for spacing in (0.004, 0.002):  # trapezoid budgets close to O(spacing²)
        w = solver.run(w0, np.arange(int(round(0.2 / spacing)) + 1) * spacing)
        errs[spacing] = (
            M.energy_budget_error(w, spacing, 1e-2, 0.05, f).max(),
            M.enstrophy_budget_error(w, spacing, 1e-2, 0.05, f).max(),
        )
    assert max(errs[0.002]) < 1.5e-3
    for a, b in zip(errs[0.004], errs[0.002], strict=True):
        assert 3.0 < a / b < 5.0  # second-order convergence of the closure
    # the same frames with the wrong viscosity do not close
    assert M.energy_budget_error(w, 0.002, 5e-2, 0.05, f).mean() > 0.1


def test_beta_plane_mode_follows_the_rossby_dispersion_relation():
    xx, yy = grid()
    mx, my, beta, t = 1, 2, 20.0, 0.7
    phase = 2 * np.pi * (mx * xx + my * yy)
    w0 = 1e-6 * np.cos(phase)
    w = S.VorticitySolver(N, 0.0, 0.01, beta=beta).run(w0, [0.0, t])
    k2 = (2 * np.pi) ** 2 * (mx**2 + my**2)
    omega_r = -beta * 2 * np.pi * mx / k2
    np.testing.assert_allclose(w[-1], 1e-6 * np.cos(phase - omega_r * t), atol=1e-15)
    # and the wave really moved (westward for beta > 0)
    assert np.abs(w[-1] - w0).max() > 1e-7


def test_burgers_matches_cole_hopf():
    x = np.arange(256) * 2 * np.pi / 256
    nu = 0.05
    u = S.burgers_run(np.sin(x), nu, [0.0, 1.0], 1e-3)
    exact = S.burgers_cole_hopf(x, 1.0, nu)
    np.testing.assert_allclose(S.burgers_cole_hopf(x, 0.0, nu), np.sin(x), atol=1e-7)
    assert np.abs(u[-1] - exact).max() < 1e-6


def test_heat_exact_mode_decay_and_maximum_principle():
    xx, yy = grid()
    u0 = np.sin(2 * np.pi * 3 * xx) + 2.0
    nu, t = 0.01, 0.3
    u = S.heat_exact(u0, nu, t)
    np.testing.assert_allclose(
        u, np.sin(2 * np.pi * 3 * xx) * np.exp(-nu * (6 * np.pi) ** 2 * t) + 2.0, atol=1e-12
    )
    one_d = S.heat_exact(np.cos(2 * np.pi * np.arange(64) / 64), nu, t)
    np.testing.assert_allclose(
        one_d,
        np.cos(2 * np.pi * np.arange(64) / 64) * np.exp(-nu * (2 * np.pi) ** 2 * t),
        atol=1e-12,
    )
    assert u.max() <= u0.max() and u.mean() == pytest.approx(u0.mean())


def test_tracer_is_shifted_exactly_and_conserves_mass():
    xx, yy = grid()
    q0 = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.01)
    q0 = np.fft.irfft2(np.fft.rfft2(q0) * dealias_mask(N), s=(N, N))
    U, t = 0.25, 1.0  # one full cell-width multiple: shift by 0.25 = 8 cells
    q = S.tracer_run(q0, np.full((N, N), U), np.zeros((N, N)), 0.0, [t], 0.01)[0]
    np.testing.assert_allclose(q, np.roll(q0, 8, axis=0), atol=1e-6)  # RK4 error only
    u, v = velocity_from_vorticity(band_limited_grf(3)[0] * 20)
    q = S.tracer_run(q0, u, v, 1e-3, [0.5], 0.01)[0]
    assert q.sum() == pytest.approx(q0.sum(), rel=1e-12)
    src = np.zeros((N, N))
    src[5, 5] = 2.0
    q = S.tracer_run(q0, u, v, 1e-3, [0.5], 0.01, source=src)[0]
    assert q.sum() - q0.sum() == pytest.approx(2.0 * 0.5, rel=1e-10)


def test_solvers_reject_bad_fields():
    solver = S.VorticitySolver(N, 1e-3, 0.01)
    bad = np.zeros((N, N))
    bad[3, 4] = np.nan
    with pytest.raises(PDEInputError, match=r"omega0: 1 NaN or infinite values .*\(3, 4\)"):
        solver.run(bad, [0.0, 0.1])
    with pytest.raises(PDEInputError, match=r"omega0: expected grid 32, got shape \(16, 16\)"):
        solver.run(np.zeros((16, 16)), [0.0])
    with pytest.raises(PDEInputError, match="forcing: expected shape"):
        S.VorticitySolver(N, 1e-3, 0.01, forcing=np.zeros((8, 8)))
    with pytest.raises(PDEInputError, match="square"):
        velocity_from_vorticity(np.zeros((32, 16)))


# ---------------------------------------------------------------- metrics


def test_zero_error_and_constant_offset():
    t = band_limited_grf(4)
    assert M.nrmse(t, t).max() == 0 and M.crmse(t, t).max() == 0
    assert all(b.max() == 0 for b in M.frmse_bands(t, t).values())
    np.testing.assert_allclose(M.crmse(t + 0.3, t), 0.3)
    np.testing.assert_allclose(M.rmse(t + 0.3, t), 0.3)
    np.testing.assert_allclose(M.nrmse(2 * t, t), 1.0)
    np.testing.assert_allclose(M.mean_drift(t + 0.1, t), 0.1 * N * N / np.abs(t).sum(axis=(-2, -1)))
    np.testing.assert_allclose(M.vrmse(t + t.std(axis=(-2, -1), keepdims=True), t), 1.0, rtol=1e-6)
    # a single-mode offset lands in the zero shell: low band only
    f = M.frmse_bands(t + 1.0, t)
    assert f["low"].min() > 0 and f["mid"].max() < 1e-12 and f["high"].max() < 1e-12


def test_single_mode_error_lands_in_its_fourier_band():
    xx, _ = grid()
    a = 0.5
    for m, band in ((2, "low"), (6, "mid"), (13, "high")):
        err = a * np.cos(2 * np.pi * m * xx)
        f = M.frmse_bands(err, np.zeros_like(err))
        assert {k for k, v in f.items() if v > 1e-12} == {band}
    # exact values: full spectrum shell 2 = a/√2, averaged over the 4 low shells; the PDEBench
    # quadrant variant sees only the (+2, 0) coefficient: a/2
    err = a * np.cos(2 * np.pi * 2 * xx)
    assert M.frmse_bands(err, 0 * err)["low"] == pytest.approx(a / math.sqrt(2) / 4)
    assert M.frmse_bands(err, 0 * err, quadrant=True)["low"] == pytest.approx(a / 2 / 4)


def test_brmse_reads_only_the_boundary():
    t = np.zeros((8, 8))
    p = t.copy()
    p[3:5, 3:5] = 7.0
    assert M.brmse(p, t) == 0
    p[0, 0] = 2.0
    assert M.brmse(p, t) == pytest.approx(math.sqrt(4.0 / 28))


def test_divergence_residual_potential_vs_solenoidal():
    xx, yy = grid()
    phi = np.sin(2 * np.pi * xx) * np.cos(4 * np.pi * yy)
    from benchmarks.pde.spectral import ddx, ddy

    assert M.divergence_residual(ddx(phi), ddy(phi)) > 0.5
    u, v = velocity_from_vorticity(band_limited_grf(5)[0])
    assert M.divergence_residual(u, v) < 1e-12


def test_spectral_metrics():
    w = band_limited_grf(6)[0]
    u, v = velocity_from_vorticity(w)
    e = energy_spectrum(u, v)
    assert e.sum() == pytest.approx(energy(u, v), rel=1e-10)  # Parseval: E(k) sums to E
    assert M.log_spectral_distance(e, e) == 0
    assert M.log_spectral_distance(100 * e, e) == pytest.approx(2.0)
    assert M.high_band_ratio(3 * e, e) == pytest.approx(3.0)
    assert M.spectral_slope_error(e, e) == 0
    ks = np.arange(17, dtype=float)
    ks[0] = 1.0
    assert M.spectral_slope_error(ks**-3.0, ks**-5.0 / 3) == pytest.approx(2.0)


def test_pde_residual_of_the_truth_is_small_and_of_persistence_is_one():
    f = S.forcing_field("fno", N)
    w = S.VorticitySolver(N, 1e-2, 0.001, forcing=f).run(
        band_limited_grf(7)[0], np.arange(4) * 0.001
    )
    assert M.pde_residual(w, 0.001, 1e-2, 0.0, 0.0, f).max() < 1e-3
    assert M.pde_residual(w, 0.001, 2e-2, 0.0, 0.0, f).max() > 1e-2  # wrong viscosity
    frozen = np.repeat(w[:1], 3, axis=0)
    np.testing.assert_allclose(M.pde_residual(frozen, 0.004, 1e-2, 0.0, 0.0, f), 1.0)


def test_stable_steps():
    assert M.stable_steps([0.1, 0.2, 0.6, 0.1]) == 2
    assert M.stable_steps([0.1, np.nan, 0.1]) == 1
    assert M.stable_steps([0.1, 0.2]) == 2


def test_metrics_reject_nan_and_wrong_grids():
    t = np.zeros((3, N, N))
    p = t.copy()
    p[1, 2, 3] = np.inf
    with pytest.raises(
        PDEInputError, match=r"pred: 1 NaN or infinite values \(shape \(3, 32, 32\)"
    ):
        M.nrmse(p, t)
    with pytest.raises(
        PDEInputError, match=r"pred has shape \(3, 16, 16\) but true has shape \(3, 32, 32\)"
    ):
        M.nrmse(np.zeros((3, 16, 16)), t)


# ---------------------------------------------------------------- generator + suite (micro)

MICRO = {
    "grid": 16,
    "dt": 0.05,
    "dt_record": 0.5,
    "n_snapshots": 4,
    "precision": "single",
    "forecast": {"n_input": 1, "n_rollout": 3},
    "source": "src",
    "regimes": {
        "src": {"equation": "ns2d", "nu": 1e-3, "forcing": "fno", "n_train": 2, "n_test": 3},
        "beta": {
            "equation": "beta_plane",
            "nu": 1e-3,
            "beta": 5.0,
            "forcing": "kolmogorov",
            "alpha": 0.1,
            "n_train": 1,
            "n_test": 2,
        },
    },
    "questions": {
        "grid": 32,
        "sim_grid": 16,
        "dt": 0.05,
        "trend_dt": 0.5,
        "n_per_kind": 6,
        "kinds": [
            "divergence_free",
            "vortex_count",
            "vortex_rotation",
            "saddle_count",
            "energy_trend",
            "enstrophy_trend",
            "equation",
            "mass_conserved",
        ],
    },
}


def micro_spec() -> dict:
    """MICRO with the schema's defaults filled in, as the job layer hands it to ``generate``."""
    return fill_defaults(json.loads(json.dumps(MICRO)), read_yaml(PDE_SCHEMA))


PDE_SCHEMA = SCHEMA_DIR / "benchmarks" / "pde.schema.yaml"


def micro_scale_file(folder) -> str:
    """The tiny scale file with MICRO as its ``benchmarks.pde`` section."""
    import yaml

    data = yaml.safe_load((ROOT / "config" / "scales" / "tiny.yaml").read_text())
    data["benchmarks"]["pde"] = json.loads(json.dumps(MICRO))
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The data set written by the generator's job (``python -m benchmarks.pde.generate``)."""
    root = tmp_path_factory.mktemp("pde")
    out = root / "data"
    generate_main(
        [
            "--scale",
            "tiny",
            "--scale-file",
            micro_scale_file(root),
            "--paper",
            "omniflow",
            "--variant",
            "pde",
            "--out",
            str(out),
        ]
    )
    return out, json.loads((out / "manifest.json").read_text())


def _args(data, out, variant="v"):
    return [
        "--data",
        str(data),
        "--scale",
        "tiny",
        "--paper",
        "omniflow",
        "--method",
        variant,
        "--variant",
        variant,
        "--out",
        str(out),
    ]


def test_generator_layout_and_determinism(micro, tmp_path):
    out, manifest = micro
    with np.load(out / "src" / "test.npz") as z:
        assert z["omega"].shape == (3, 4, 16, 16) and z["u"].shape == (3, 4, 16, 16)
        assert z["t"].tolist() == [0.0, 0.5, 1.0, 1.5] and z["forcing"].shape == (16, 16)
    meta = json.loads((out / "beta" / "regime.json").read_text())
    assert meta["role"] == "shifted" and meta["params"]["beta"] == 5.0
    # schema defaults reached the solver: src has no drag, the default init and precision
    src = json.loads((out / "src" / "regime.json").read_text())["params"]
    assert (
        src["alpha"] == 0.0 and src["init"] == "grf" and manifest["spec"]["precision"] == "single"
    )
    job_meta = json.loads((out / "meta.json").read_text())
    assert job_meta["kind"] == "pde_data" and job_meta["name"] == "pde"
    assert job_meta["paper"] == "omniflow" and job_meta["seed"] == 0 and "provenance" in job_meta
    # the job's data equal the library function's on the same spec and seed, file by file
    again = generate(micro_spec(), 0, tmp_path / "again")
    assert again["files"] == manifest["files"]


def test_questions_answers_hold_by_construction(micro):
    out, _ = micro
    rows = [json.loads(x) for x in (out / "questions" / "questions.jsonl").read_text().splitlines()]
    f = np.load(out / "questions" / "fields.npz")
    kinds = {r["kind"] for r in rows}
    assert kinds == set(MICRO["questions"]["kinds"])
    for r in rows:
        a = {k: f[v].astype(np.float64) for k, v in r["fields"].items()}
        if r["kind"] == "divergence_free":
            rd = float(M.divergence_residual(a["u"], a["v"]))
            assert (rd < 1e-5) == (r["answer"] == "yes"), (r["id"], rd)
        elif r["kind"] == "vortex_count":  # K separated peaks of |ω|
            w = np.abs(a["omega"] - np.median(a["omega"]))
            peaks = sum(
                w[i, j] > 0.3
                and w[i, j]
                == max(w[(i + di) % 32, (j + dj) % 32] for di in (-1, 0, 1) for dj in (-1, 0, 1))
                for i in range(32)
                for j in range(32)
            )
            assert peaks == r["answer"], r["id"]
        elif r["kind"] == "vortex_rotation":
            c = r["meta"]["strongest_centre"]
            w = a["omega"][int(round(c[0] * 32)) % 32, int(round(c[1] * 32)) % 32]
            assert (w > 0) == (r["answer"] == "ccw")
        elif r["kind"] in ("energy_trend", "enstrophy_trend"):
            assert (r["meta"]["delta"] > 0) == (r["answer"] == "up")
        elif r["kind"] == "mass_conserved":
            change = abs(a["q1"].sum() - a["q0"].sum()) / a["q0"].sum()
            assert (change < 1e-4) == (r["answer"] == "yes"), (r["id"], change)
        elif r["kind"] == "equation":
            assert (a["q0"].ndim == 1) == (r["answer"] == "burgers")
        elif r["kind"] == "viscosity":  # answerable: the enstrophy budget dZ/dt = -2 nu P
            dt = r["meta"]["dt"]
            z = enstrophy(np.stack([a["q0"], a["q1"]]))
            p = palinstrophy(np.stack([a["q0"], a["q1"]])).mean()
            assert -(z[1] - z[0]) / dt / (2 * p) == pytest.approx(r["answer"], rel=r["tolerance"])


def test_forecast_suite_truth_persistence_failed_and_bad_files(micro, tmp_path, capsys):
    data, _ = micro
    for kind in ("truth", "persistence", "zero"):
        suite_main(
            [
                "reference",
                "--data",
                str(data),
                "--regimes",
                "src,beta",
                "--kind",
                kind,
                "--scale",
                "tiny",
                "--paper",
                "omniflow",
                "--variant",
                kind,
                "--out",
                str(tmp_path / kind),
            ]
        )
    recs, per_doc = {}, {}
    for kind in ("truth", "persistence", "zero"):
        out = tmp_path / "runs" / kind / "pde_forecast.json"
        suite_main(
            [
                "forecast",
                *_args(data, out, kind),
                "--regimes",
                "src,beta",
                "--predictions",
                str(tmp_path / kind),
            ]
        )
        rec = load_run_record(out)
        recs[kind] = {(m["task"], m["metric"]): m["value"] for m in rec["metrics"]}
        rows = [
            json.loads(line)
            for line in (out.parent / "pde_forecast.samples.jsonl").read_text().splitlines()
        ]
        per_doc[kind] = {(r["task"], r["doc_id"]): r["metrics"]["nrmse"] for r in rows}
        # the job's identity, and the scoring settings of benchmarks.pde.eval (schema defaults)
        assert (rec["paper"], rec["variant"], rec["method"], rec["seed"]) == (
            "omniflow",
            kind,
            kind,
            0,
        )
        assert rec["config"]["stable_threshold"] == 0.5 and rec["config"]["slope_band"] == [2, None]
    for task in ("src", "beta"):
        assert recs["truth"][(task, "nrmse")] == 0 and recs["truth"][(task, "lsd")] == 0
        assert (
            recs["truth"][(task, "energy_budget_error")]
            == recs["truth"][(task, "energy_budget_error_truth")]
        )
        assert recs["persistence"][(task, "nrmse")] > 0.05
        assert recs["persistence"][(task, "pde_residual")] == pytest.approx(1.0)
        assert recs["zero"][(task, "nrmse")] == pytest.approx(1.0)  # the zero-field reference
    # a failed sample is counted, the rest scored; NaN elsewhere is an error naming the array
    with np.load(tmp_path / "truth" / "src.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["omega"][1, 0, 2, 2] = np.nan
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    np.savez(bad_dir / "src.npz", **arrays)
    out = tmp_path / "runs" / "bad" / "pde_forecast.json"
    with pytest.raises(SystemExit):
        suite_main(
            ["forecast", *_args(data, out), "--regimes", "src", "--predictions", str(bad_dir)]
        )
    assert (
        "array 'omega' (shape (3, 3, 16, 16)) has 1 NaN or infinite values"
        in capsys.readouterr().err
    )
    np.savez(bad_dir / "src.npz", **arrays, failed=np.array([False, True, False]))
    suite_main(["forecast", *_args(data, out), "--regimes", "src", "--predictions", str(bad_dir)])
    rec = {(m["task"], m["metric"]): m for m in load_run_record(out)["metrics"]}
    # ... and scored as the persistence forecast in every mean (n = 3, not 2)
    assert rec[("src", "failed_rate")]["value"] == pytest.approx(1 / 3)
    assert rec[("src", "nrmse")]["n"] == 3
    assert rec[("src", "nrmse")]["value"] == pytest.approx(per_doc["persistence"][("src", 1)] / 3)
    assert per_doc["persistence"][("src", 1)] > 0.05
    np.savez(bad_dir / "src.npz", omega=arrays["omega"][:, :2])
    with pytest.raises(SystemExit):
        suite_main(
            ["forecast", *_args(data, out), "--regimes", "src", "--predictions", str(bad_dir)]
        )
    assert (
        "array 'omega' has shape (3, 2, 16, 16), expected (3, 3, 16, 16)" in capsys.readouterr().err
    )


def test_question_suite_scores_answers(micro, tmp_path, capsys):
    data, _ = micro
    rows = [
        json.loads(x) for x in (data / "questions" / "questions.jsonl").read_text().splitlines()
    ]
    answers = []
    for i, r in enumerate(rows):
        if r["kind"] == "saddle_count" and i % 2:
            continue  # missing
        ans = r["answer"]
        if r["kind"] == "vortex_count":
            ans = ans + 1  # all wrong by one
        row = {"id": r["id"], "answer": ans, "rounds": 2}
        if r["kind"] == "equation" and r["sample"] == 0:
            row = {"id": r["id"], "failed": True, "error": "not JSON"}
        answers.append(row)
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(json.dumps(a) for a in answers) + "\n")
    out = tmp_path / "runs" / "pde_qa.json"
    suite_main(
        ["questions", *_args(data, out), "--answers", str(path), "--extra-metrics", "rounds"]
    )
    rec = {(m["task"], m["metric"]): m["value"] for m in load_run_record(out)["metrics"]}
    assert rec[("divergence_free", "accuracy")] == 1.0
    assert rec[("vortex_count", "accuracy")] == 0.0 and rec[("vortex_count", "mae")] == 1.0
    n_sc = sum(r["kind"] == "saddle_count" for r in rows)
    n_missing = sum(1 for i, r in enumerate(rows) if r["kind"] == "saddle_count" and i % 2)
    assert rec[("saddle_count", "missing_rate")] == pytest.approx(n_missing / n_sc)
    assert rec[("equation", "failed_rate")] == pytest.approx(1 / 6)
    assert rec[("equation", "accuracy")] == pytest.approx(5 / 6)
    assert rec[("energy_trend", "rounds")] == 2.0
    samples = [
        json.loads(x) for x in (out.parent / "pde_qa.samples.jsonl").read_text().splitlines()
    ]
    assert samples[0]["output"] == {"rounds": 2} and "correct" in samples[0]["metrics"]
    path.write_text(json.dumps({"id": "nope", "answer": 1}) + "\n")
    with pytest.raises(SystemExit):
        suite_main(["questions", *_args(data, out), "--answers", str(path)])
    assert "unknown question id 'nope'" in capsys.readouterr().err


def test_scale_files_validate_the_pde_section(tmp_path):
    import yaml

    from claimbench.config import ROOT, load_scale

    for scale in ("tiny", "small", "paper"):
        assert "ns_forced" in load_scale(scale)["benchmarks"]["pde"]["regimes"]
    data = yaml.safe_load((ROOT / "config" / "scales" / "tiny.yaml").read_text())
    data["benchmarks"]["pde"]["regimes"]["ns_forced"]["forcing"] = "wind"
    bad = tmp_path / "tiny.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=r"benchmarks\.pde: regimes\.ns_forced\.forcing: 'wind' is not one of"
    ):
        load_scale("tiny", bad)
    data["benchmarks"]["pde"]["regimes"]["ns_forced"]["forcing"] = "fno"
    data["benchmarks"]["unknown"] = {}
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="benchmarks.unknown: no schema"):
        load_scale("tiny", bad)


# ---------------------------------------------------------------------- real data (HDF5)


def _taylor_green(n_samples: int, frames: int, s: int, nu: float = 1e-3, dt: float = 1.0):
    """Decaying Taylor-Green vorticity, amplitude per sample: omega(t) = A_b 2k sin sin e^{-2 nu k^2 t}."""
    x = np.arange(s) / s
    X, Y = np.meshgrid(x, x, indexing="ij")
    k = 2 * np.pi
    t = np.arange(frames) * dt
    amp = 1.0 + np.arange(n_samples)[:, None, None, None]
    base = 2 * k * np.sin(k * X) * np.sin(2 * k * Y)
    return amp * base[None, None] * np.exp(-2 * nu * k**2 * t)[None, :, None, None], t


def test_fno_mat_layout_reads_back_the_trajectories(tmp_path):
    """FNO's NavierStokes_*.mat (MATLAB v7.3): h5py sees a (s, s, n), u (T, s, s, n), t (T, 1),
    i.e. MATLAB's (n, s, s) / (n, s, s, T) with every axis reversed (neuraloperator MatReader)."""
    h5py = pytest.importorskip("h5py")
    from benchmarks.pde.real import read_trajectories, transpose_xy

    w, t = _taylor_green(5, 4, 16)  # (n, T, s, s), frame 0 = the initial condition
    path = tmp_path / "NavierStokes_V1e-3_N5_T3.mat"
    with h5py.File(path, "w") as f:
        f["a"] = w[:, 0].transpose(2, 1, 0)  # MATLAB (n, x, y) seen reversed
        f["u"] = w[:, 1:].transpose(0, 2, 3, 1).transpose(3, 2, 1, 0)  # MATLAB (n, x, y, T)
        f["t"] = t[1:].reshape(1, -1).T
    got = read_trajectories(path, "fno_mat", start=1, count=3)
    assert got["omega"].shape == (3, 4, 16, 16) and got["omega"].dtype == np.float32
    np.testing.assert_allclose(got["omega"], w[1:4], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got["t"], t)
    u_ref, v_ref = velocity_from_vorticity(w[1:4])
    np.testing.assert_allclose(got["u"], u_ref, atol=1e-4)
    np.testing.assert_allclose(got["v"], v_ref, atol=1e-4)
    sw = transpose_xy(got)  # a reflection: vorticity changes sign, u and v swap
    np.testing.assert_allclose(sw["omega"], -np.swapaxes(got["omega"], -1, -2))
    with pytest.raises(PDEInputError, match="holds 5"):
        read_trajectories(path, "fno_mat", start=3, count=3)
    with pytest.raises(PDEInputError, match="layout 'fno'"):
        read_trajectories(path, "fno")


def test_pdebench_cfd2d_layout_and_the_paper_metrics_on_a_loaded_regime(tmp_path):
    """PDEBench 2-D CFD (Vx, Vy, density, pressure: (n, T, s, s); t/x/y-coordinate): vorticity
    taken spectrally; a regime read from a file gets the forecast layout and the metrics."""
    h5py = pytest.importorskip("h5py")
    from benchmarks.pde.real import load_regime

    s, n, T = 16, 4, 5
    x = np.arange(s) / s
    X, Y = np.meshgrid(x, x, indexing="ij")
    k = 2 * np.pi
    psi = np.sin(k * X) * np.sin(k * Y)  # u = psi_y, v = -psi_x, omega = -lap psi = 2k^2 psi
    decay = (
        np.exp(-0.1 * np.arange(T))[None, :, None, None] * (1 + np.arange(n))[:, None, None, None]
    )
    vx = k * np.sin(k * X) * np.cos(k * Y) * decay
    vy = -k * np.cos(k * X) * np.sin(k * Y) * decay
    path = tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_16_Train.hdf5"
    with h5py.File(path, "w") as f:
        f["Vx"], f["Vy"] = vx, vy
        f["density"] = np.ones_like(vx)
        f["pressure"] = np.ones_like(vx)
        f["t-coordinate"] = 0.5 * np.arange(T + 1)
        f["x-coordinate"] = f["y-coordinate"] = x
    raw = read_yaml(SCHEMA_DIR / "benchmarks" / "pde.schema.yaml")
    spec = {
        "grid": s,
        "dt": 0.01,
        "dt_record": 0.5,
        "n_snapshots": 4,
        "forecast": {"n_input": 1, "n_rollout": 3},
        "source": "cfd",
        "regimes": {
            "cfd": {
                "equation": "ns2d",
                "nu": 0.01,
                "n_train": 3,
                "n_test": 1,
                "file": {"path": str(path), "layout": "pdebench_cfd2d"},
            }
        },
        "questions": {
            "grid": 16,
            "sim_grid": 16,
            "dt": 0.01,
            "trend_dt": 0.5,
            "n_per_kind": 2,
            "kinds": ["vortex_count"],
        },
    }
    spec = fill_defaults(spec, raw)
    meta, train, test = load_regime(spec, "cfd", seed=0)
    assert train["omega"].shape == (3, 4, s, s) and test["omega"].shape == (1, 4, s, s)
    assert meta["dt_record"] == 0.5 and meta["grid"] == {"N": s, "L": 1.0}
    np.testing.assert_allclose(test["omega"][0], (2 * k**2 * psi) * decay[3, :4], atol=1e-3)
    assert M.divergence_residual(test["u"][0], test["v"][0]).max() < 1e-5
    # persistence forecast scored with the paper-style nRMSE: by hand, |e^{-0.1 j} - 1|
    pred = np.repeat(test["omega"][:, :1], 3, axis=1)
    got = M.nrmse(pred, test["omega"][:, 1:])
    want = np.abs(1 - np.exp(0.1 * np.arange(1, 4)))
    np.testing.assert_allclose(np.ravel(got), want, rtol=1e-4)
    spec["regimes"]["cfd"]["n_train"] = 10
    with pytest.raises(PDEInputError, match="holds 4"):
        load_regime(spec, "cfd", seed=0)
