"""One first-derivative convention (Nyquist zeroed in both directions) in solver and metric.

A grid field's Nyquist mode cos(pi N x) has the derivative -pi N sin(pi N x), which is 0 on
every grid point, so zeroing it is exact for sampled data; keeping it in one direction only (the
former rfft2 layout kept it in d/dx for ky != 0 and dropped it in d/dy) is not.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.pde import metrics as M
from benchmarks.pde import spectral as S
from methods.omniflow import fields as F

N = 16


def _grid(n=N):
    x = np.arange(n) / n
    return np.meshgrid(x, x, indexing="ij")


def _known_field(n=N):
    """(u, v, div) with Nyquist content in both directions, mixed with ky, kx != 0."""
    x, y = _grid(n)
    nyq_x = np.cos(np.pi * n * x)  # (-1)^i
    nyq_y = np.cos(np.pi * n * y)
    u = np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y) + nyq_x * np.cos(2 * np.pi * y)
    v = np.cos(4 * np.pi * y) + nyq_y * np.sin(2 * np.pi * x)
    div = 2 * np.pi * np.cos(2 * np.pi * x) * np.cos(2 * np.pi * y) - 4 * np.pi * np.sin(
        4 * np.pi * y
    )
    return u, v, div


@pytest.mark.parametrize("impl", ["benchmarks", "methods"])
def test_divergence_of_a_known_field_with_nyquist_content(impl):
    u, v, div = _known_field()
    if impl == "benchmarks":
        got = S.ddx(u) + S.ddy(v)
    else:
        got = F.divergence(u, v)
    np.testing.assert_allclose(got, div, atol=1e-10)


def test_both_directions_follow_the_same_convention():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((N, N))
    np.testing.assert_allclose(S.ddy(f), S.ddx(f.T).T, atol=1e-12)
    np.testing.assert_allclose(F.ddy(f), F.ddx(f.T).T, atol=1e-12)
    np.testing.assert_allclose(S.ddx(f), F.ddx(f), atol=1e-10)
    np.testing.assert_allclose(S.ddy(f), F.ddy(f), atol=1e-10)


def test_velocity_from_full_spectrum_vorticity_is_divergence_free_in_both_packages():
    """White-noise vorticity fills the Nyquist modes: the metric must read 0 for the velocity
    that either package derives."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((N, N))
    for u, v in (S.velocity_from_vorticity(w), F.velocity_from_vorticity(w)):
        assert float(M.divergence_residual(u, v)) < 1e-12
        assert F.divergence_residual(u, v) < 1e-12
    ub, vb = S.velocity_from_vorticity(w)
    um, vm = F.velocity_from_vorticity(w)
    np.testing.assert_allclose(ub, um, atol=1e-10)
    np.testing.assert_allclose(vb, vm, atol=1e-10)


def test_leray_projection_is_divergence_free_under_the_metric():
    rng = np.random.default_rng(2)
    u, v = rng.standard_normal((2, N, N))
    pu, pv = F.leray_projection(u, v)
    assert float(M.divergence_residual(pu, pv)) < 1e-12
    assert float(M.divergence_residual(u, v)) > 0.3


def test_injected_question_constraints_never_state_the_answer_or_the_deciding_value():
    """Each statement is built from a context whose facts and measurements carry sentinel
    values; none may appear (nor the answer word), so 'full' cannot be answered by copying."""
    from methods.omniflow import constraints as C

    facts = {
        "divergence_free": "no",
        "vortex_count": 7777,
        "vortex_rotation": "cw",
        "strongest_circulation": -0.4321,
        "saddle_count": 6666,
        "energy_trend": "down",
        "enstrophy_trend": "up",
        "mass_conserved": "no",
        "mass_drift": 0.05432,
        "equation": "burgers",
        "equation_residuals": {"heat": 0.9876, "burgers": 0.0123},
    }
    ctx = {
        "facts": facts,
        "div_tol": 0.01,
        "mass_tol": 1e-4,
        "D": {
            "divergence_residual": 0.3456,
            "n_vortices": 7777,
            "n_ccw": 5555,
            "n_cw": 2222,
            "energy": 0.8765,
            "enstrophy": 0.6543,
            "palinstrophy": 0.4567,
        },
        "budget": {
            "dE_dt": -0.2468,
            "dZ_dt": 0.1357,
            "injection_E": 0.9753,
            "injection_Z": 0.8642,
            "nu": 0.001,
            "alpha": 0.1,
        },
    }
    sentinels = ["7777", "6666", "5555", "2222", "0.432", "0.0543", "0.346", "0.988", "0.0123"]
    sentinels += ["0.247", "0.136", "0.975", "0.864", "0.877", "0.654", "0.457"]
    for c in C.QA_CONSTRAINTS:
        stmt = c.statement(ctx)
        for s in sentinels:
            assert s not in stmt, (c.id, s, stmt)
        assert "=>" not in stmt and "answer" not in stmt.lower(), (c.id, stmt)
        for kind in c.kinds:
            ans = str(facts[kind])
            if ans in ("no", "cw", "down", "up", "burgers"):
                assert f"'{ans}'" not in stmt and f" {ans}." not in stmt, (c.id, stmt)
