"""OMNIFLOW Semantic-Symbolic Alignment on analytic fields (issue 6 acceptance)."""

import numpy as np
import pytest

from methods.omniflow import descriptors as Dm
from methods.omniflow import fields as F


def gaussian_vortex(n, x0, y0, sigma, sign=1.0):
    x, y = F.grid(n)
    dx = (x - x0 + 0.5) % 1.0 - 0.5
    dy = (y - y0 + 0.5) % 1.0 - 0.5
    return sign * np.exp(-(dx**2 + dy**2) / (2 * sigma**2))


def cellular(n, m, k):
    x, y = F.grid(n)
    psi = np.sin(2 * np.pi * m * x) * np.sin(2 * np.pi * k * y)
    return F.ddy(psi), -F.ddx(psi)


def test_velocity_convention_ccw():
    # u = -(y - y0), v = (x - x0) near the centre is counter-clockwise: omega = dv/dx - du/dy > 0
    w = gaussian_vortex(64, 0.5, 0.5, 0.08)
    u, v = F.velocity_from_vorticity(w)
    i = j = 32
    assert u[i, j + 3] < 0 < u[i, j - 3]  # above the centre (larger y) the flow goes to -x
    assert v[i + 3, j] > 0 > v[i - 3, j]  # right of the centre the flow goes to +y
    np.testing.assert_allclose(F.vorticity(u, v), w - w.mean(), atol=1e-10)


def test_single_ccw_vortex_sign_and_centroid():
    D = Dm.describe_vorticity(gaussian_vortex(64, 0.3, 0.7, 0.05))
    assert D["n_vortices"] == 1
    vx = D["vortices"][0]
    assert vx["sign"] == 1 and vx["circulation"] > 0
    assert abs(vx["x"] - 0.3) < 1 / 64 and abs(vx["y"] - 0.7) < 1 / 64
    assert D["incompressible"]
    assert "1 vortices (1 counter-clockwise, 0 clockwise)" in Dm.verbalize(D)


def test_vortex_across_periodic_edge_is_one():
    D = Dm.describe_vorticity(gaussian_vortex(64, 0.0, 0.99, 0.05, sign=-1.0))
    assert D["n_vortices"] == 1 and D["vortices"][0]["sign"] == -1
    vx = D["vortices"][0]
    assert min(vx["x"], 1 - vx["x"]) < 1 / 64 and abs(vx["y"] - 0.99) < 1 / 64


@pytest.mark.parametrize("m,k", [(1, 1), (2, 1), (2, 3)])
def test_cellular_flow_counts_and_poincare_hopf(m, k):
    u, v = cellular(64, m, k)
    D = Dm.describe_velocity(u, v)
    assert D["n_vortices"] == 4 * m * k
    assert D["n_ccw"] == D["n_cw"] == 2 * m * k
    assert D["critical_points"]["centre"] == 4 * m * k
    assert D["critical_points"]["saddle"] == 4 * m * k
    assert D["poincare_hopf_ok"] and D["poincare_hopf_index_sum"] == 0


def test_potential_flow_flagged_divergent():
    x, y = F.grid(64)
    phi = np.sin(2 * np.pi * x) * np.cos(4 * np.pi * y)
    D = Dm.describe_velocity(F.ddx(phi), F.ddy(phi))
    assert not D["incompressible"] and D["divergence_residual"] > 0.5
    assert "divergent" in Dm.verbalize(D)
    # sources and sinks, no centres, index sum still 0 on the torus
    assert D["critical_points"]["centre"] == 0 and D["poincare_hopf_index_sum"] == 0
    pu, pv = F.leray_projection(F.ddx(phi), F.ddy(phi))
    assert F.divergence_residual(pu + 1e-3, pv) < 1e-10 or np.abs(pu).max() < 1e-10


def test_taylor_green_spectrum_single_shell_and_trend():
    x, y = F.grid(32)
    w = 2 * 4 * np.pi * np.sin(4 * np.pi * x) * np.sin(4 * np.pi * y)  # |k| = sqrt(8) shell 3
    u, v = F.velocity_from_vorticity(w)
    E = Dm.energy_spectrum(u, v)
    assert np.argmax(E) == 3 and E.sum() == pytest.approx(0.5 * np.mean(u**2 + v**2), rel=1e-12)
    frames = np.stack([w * np.exp(-0.1 * t) for t in range(3)])
    D = Dm.describe_sequence(frames, dt=1.0)
    assert D["dE_dt"] < 0 and D["dZ_dt"] < 0 and "energy falling" in Dm.verbalize(D)


def test_bad_fields_raise_named_errors():
    w = gaussian_vortex(32, 0.5, 0.5, 0.1)
    w[3, 4] = np.nan
    with pytest.raises(F.FieldError, match="omega: 1 non-finite"):
        Dm.describe_vorticity(w)
    with pytest.raises(F.FieldError, match="expected a 2-D array"):
        Dm.describe_vorticity(np.zeros((4, 32, 32)))
    with pytest.raises(F.FieldError, match="smaller than"):
        Dm.describe_vorticity(np.zeros((4, 4)))


def test_verbalizer_deterministic():
    D = Dm.describe_vorticity(
        gaussian_vortex(32, 0.2, 0.4, 0.06) - gaussian_vortex(32, 0.7, 0.4, 0.06)
    )
    assert Dm.verbalize(D) == Dm.verbalize(
        Dm.describe_vorticity(
            gaussian_vortex(32, 0.2, 0.4, 0.06) - gaussian_vortex(32, 0.7, 0.4, 0.06)
        )
    )
    assert D["n_ccw"] == 1 and D["n_cw"] == 1
