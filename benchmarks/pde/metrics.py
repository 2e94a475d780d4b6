"""PDE-consistency metrics (table in benchmarks/pde/README.md), reimplemented from their definitions (PDEBench / The Well
conventions; no code copied). Arrays: any leading axes, the grid on the last two axes
(``field[..., i, j]`` at x = i/N, y = j/N); time, where needed, is the axis just before the grid.

Accuracy: ``rmse``, ``nrmse``, ``max_error``, ``crmse``, ``brmse``, ``frmse_bands``, ``vrmse``.
Physical consistency (lower is better, dimensionless): ``divergence_residual``, ``mean_drift``,
``energy_budget_error``, ``enstrophy_budget_error``, ``pde_residual``, ``log_spectral_distance``,
``high_band_ratio``, ``spectral_slope_error``; rollout ``stable_steps``.
"""

from __future__ import annotations

import numpy as np

from benchmarks.pde.spectral import (
    PDEInputError,
    check_field,
    ddx,
    ddy,
    dealias_mask,
    energy,
    energy_spectrum,
    enstrophy,
    palinstrophy,
    same_shape,
    spectral_slope,
    streamfunction,
    velocity_from_vorticity,
)

EPS = 1e-12
FRMSE_BANDS = {"low": (0, 4), "mid": (4, 12), "high": (12, None)}  # PDEBench iLow=4, iHigh=12


def _pair(pred, true, names=("pred", "true")):
    p = check_field(names[0], pred)
    t = check_field(names[1], true)
    same_shape(names[0], p, names[1], t)
    return p, t


def rmse(pred, true) -> np.ndarray:
    """RMSE over the grid, per leading index."""
    p, t = _pair(pred, true)
    return np.sqrt(np.mean((p - t) ** 2, axis=(-2, -1)))


def nrmse(pred, true) -> np.ndarray:
    """RMSE / RMS(true) over the grid, per leading index."""
    p, t = _pair(pred, true)
    return np.sqrt(np.mean((p - t) ** 2, axis=(-2, -1)) / (np.mean(t**2, axis=(-2, -1)) + EPS))


def max_error(pred, true) -> np.ndarray:
    p, t = _pair(pred, true)
    return np.max(np.abs(p - t), axis=(-2, -1))


def crmse(pred, true) -> np.ndarray:
    """Conserved-quantity error: |Σ_x pred − Σ_x true| / N_points (= difference of grid means)."""
    p, t = _pair(pred, true)
    return np.abs(np.mean(p, axis=(-2, -1)) - np.mean(t, axis=(-2, -1)))


def brmse(pred, true) -> np.ndarray:
    """RMSE on the boundary cells (first/last row and column); meaningless on a torus."""
    p, t = _pair(pred, true)
    mask = np.zeros(p.shape[-2:], dtype=bool)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return np.sqrt(np.mean(((p - t) ** 2)[..., mask], axis=-1))


def frmse_bands(pred, true, length: float = 1.0, quadrant: bool = False, bands=None) -> dict:
    """Fourier RMSE per band {low, mid, high}, per leading index.

    Squared error of the (unnormalised) 2-D FFT coefficients summed on integer radial shells
    floor(|k|), square-rooted, scaled by L_x L_y/(N_x N_y), averaged over the shells of a band
    (bands [0,4), [4,12), [12, N/2) in shell units). ``quadrant=True`` reproduces PDEBench's 2-D
    loop, which only visits i < N_x/2, j < N_y/2; the default uses every mode.
    (PDEBench takes sqrt of the batch mean; here the value is per sample, the suite averages.)
    """
    p, t = _pair(pred, true)
    n = p.shape[-1]
    err = np.abs(np.fft.fft2(p - t)) ** 2
    i = np.fft.fftfreq(n, d=1.0 / n)
    shells = np.floor(np.sqrt(i[:, None] ** 2 + i[None, :] ** 2)).astype(int)
    keep = shells < n // 2
    if quadrant:
        keep &= (i[:, None] >= 0) & (i[None, :] >= 0)
    n_shells = n // 2
    flat = err.reshape(err.shape[:-2] + (-1,))
    sh, kp = shells.ravel(), keep.ravel()
    per_shell = np.stack([flat[..., kp & (sh == s)].sum(-1) for s in range(n_shells)], -1)
    per_shell = np.sqrt(per_shell) * length * length / (n * n)
    out = {}
    for name, (lo, hi) in (bands or FRMSE_BANDS).items():
        hi = n_shells if hi is None else min(hi, n_shells)
        out[name] = per_shell[..., lo:hi].mean(-1) if hi > lo else np.full(p.shape[:-2], np.nan)
    return out


def vrmse(pred, true) -> np.ndarray:
    """The Well's variance-scaled RMSE: sqrt(mean (p−y)² / (var(y) + ε))."""
    p, t = _pair(pred, true)
    return np.sqrt(np.mean((p - t) ** 2, axis=(-2, -1)) / (np.var(t, axis=(-2, -1)) + EPS))


def divergence_residual(u, v) -> np.ndarray:
    """r_div = ‖∇·u‖₂ / ‖∇u‖_F (spectral derivatives, periodic)."""
    u, v = _pair(u, v, ("u", "v"))
    ux, uy, vx, vy = ddx(u), ddy(u), ddx(v), ddy(v)
    num = np.sqrt(np.sum((ux + vy) ** 2, axis=(-2, -1)))
    den = np.sqrt(np.sum(ux**2 + uy**2 + vx**2 + vy**2, axis=(-2, -1)))
    return num / (den + EPS)


def mean_drift(pred, true) -> np.ndarray:
    """Mass / mean-vorticity drift |Σ pred − Σ true| / Σ|true|."""
    p, t = _pair(pred, true)
    return np.abs(p.sum(axis=(-2, -1)) - t.sum(axis=(-2, -1))) / (
        np.abs(t).sum(axis=(-2, -1)) + EPS
    )


def _budget_terms(omega, forcing, u=None, v=None):
    omega = check_field("omega", omega, ndim_min=3)
    if u is None or v is None:
        u, v = velocity_from_vorticity(omega)
    else:
        u, v = _pair(u, v, ("u", "v"))
        same_shape("u", u, "omega", omega)
    f = np.zeros(omega.shape[-2:]) if forcing is None else check_field("forcing", forcing)
    if f.shape != omega.shape[-2:]:
        raise PDEInputError(
            f"forcing: shape {f.shape} does not match the grid of omega {omega.shape}"
        )
    psi = streamfunction(omega)
    return {
        "E": energy(u, v),
        "Z": enstrophy(omega),
        "P": palinstrophy(omega),
        "psi_f": np.mean(psi * f, axis=(-2, -1)),
        "omega_f": np.mean(omega * f, axis=(-2, -1)),
    }


def _trap(x):
    return 0.5 * (x[..., 1:] + x[..., :-1])


def energy_budget_error(
    omega, dt: float, nu: float, alpha: float = 0.0, forcing=None, u=None, v=None
):
    """Per step of a sequence (…, T, N, N): |ΔE/Δt − (⟨ψf⟩ − 2νZ̄ − 2αĒ)| / (|⟨ψf⟩| + 2νZ̄ + 2αĒ + ε).

    Bars are trapezoid means over the step; returns (…, T−1). The drag term is in the
    normaliser too (the textbook form omits it; with drag-dominated dynamics it would blow up).
    """
    c = _budget_terms(omega, forcing, u, v)
    de = np.diff(c["E"], axis=-1) / dt
    src, diss, drag = _trap(c["psi_f"]), 2 * nu * _trap(c["Z"]), 2 * alpha * _trap(c["E"])
    return np.abs(de - (src - diss - drag)) / (np.abs(src) + diss + drag + EPS)


def enstrophy_budget_error(omega, dt: float, nu: float, alpha: float = 0.0, forcing=None):
    """Per step: |ΔZ/Δt − (⟨ωf⟩ − 2νP̄ − 2αZ̄)| / (|⟨ωf⟩| + 2νP̄ + 2αZ̄ + ε)."""
    c = _budget_terms(omega, forcing)
    dz = np.diff(c["Z"], axis=-1) / dt
    src, diss, drag = _trap(c["omega_f"]), 2 * nu * _trap(c["P"]), 2 * alpha * _trap(c["Z"])
    return np.abs(dz - (src - diss - drag)) / (np.abs(src) + diss + drag + EPS)


def pde_residual(omega, dt: float, nu: float, alpha: float = 0.0, beta: float = 0.0, forcing=None):
    """Vorticity-equation residual with a central time difference over 3 frames, per middle frame:
    ‖∂ₜω − R(ω)‖ / (‖∂ₜω‖ + ‖R(ω)‖), ∂ₜω = (ω₊−ω₋)/2Δt, R = −u·∇ω + νΔω − αω − βv + f;
    all three projected on the 2/3-rule band; returns (…, T−2) in [0, 1]. (Dividing by ‖∂ₜω‖
    alone would be infinite for a frozen forecast such as persistence; this normaliser gives it
    exactly 1.)"""
    omega = check_field("omega", omega, ndim_min=3)
    if omega.shape[-3] < 3:
        raise PDEInputError(
            f"omega: need at least 3 frames for the PDE residual, got shape {omega.shape}"
        )
    f = np.zeros(omega.shape[-2:]) if forcing is None else check_field("forcing", forcing)
    w = omega[..., 1:-1, :, :]
    dwdt = (omega[..., 2:, :, :] - omega[..., :-2, :, :]) / (2 * dt)
    u, v = velocity_from_vorticity(w)
    wx, wy = ddx(w), ddy(w)
    lap = ddx(wx) + ddy(wy)
    rhs = -(u * wx + v * wy) + nu * lap - alpha * w - beta * v + f
    n = w.shape[-1]
    mask = dealias_mask(n)  # project on the resolved band, as the de-aliased solvers do

    def norm(a):
        return np.sqrt(
            np.sum(np.abs(np.fft.irfft2(np.fft.rfft2(a) * mask, s=(n, n))) ** 2, axis=(-2, -1))
        )

    return norm(dwdt - rhs) / (norm(dwdt) + norm(rhs) + EPS)


def spectra(omega=None, u=None, v=None) -> np.ndarray:
    if u is None or v is None:
        u, v = velocity_from_vorticity(omega)
    return energy_spectrum(u, v)


def log_spectral_distance(e_pred, e_true, k_cut: int | None = None) -> np.ndarray:
    """sqrt(mean_k (log10 E_pred − log10 E_true)²) over 1 ≤ k ≤ k_cut (default the 2/3 rule)."""
    e_pred, e_true = np.asarray(e_pred), np.asarray(e_true)
    kmax = e_true.shape[-1] - 1
    k_cut = k_cut or (2 * kmax) // 3
    lp = np.log10(np.maximum(e_pred[..., 1 : k_cut + 1], 1e-30))
    lt = np.log10(np.maximum(e_true[..., 1 : k_cut + 1], 1e-30))
    return np.sqrt(np.mean((lp - lt) ** 2, axis=-1))


def high_band_ratio(e_pred, e_true, k_cut: int | None = None) -> np.ndarray:
    """Energy in the top third of resolved shells (2k_cut/3 < k ≤ k_cut), predicted / true."""
    e_pred, e_true = np.asarray(e_pred), np.asarray(e_true)
    kmax = e_true.shape[-1] - 1
    k_cut = k_cut or (2 * kmax) // 3
    lo = (2 * k_cut) // 3 + 1
    den = e_true[..., lo : k_cut + 1].sum(-1) + EPS * e_true.sum(-1) + 1e-300
    return e_pred[..., lo : k_cut + 1].sum(-1) / den


def spectral_slope_error(e_pred, e_true, k_lo: int = 2, k_hi: int | None = None) -> np.ndarray:
    return np.abs(spectral_slope(e_pred, k_lo, k_hi) - spectral_slope(e_true, k_lo, k_hi))


def stable_steps(nrmse_by_step, threshold: float = 0.5) -> np.ndarray:
    """Number of leading rollout steps before nRMSE first exceeds ``threshold`` (or is NaN)."""
    x = np.asarray(nrmse_by_step, dtype=np.float64)
    bad = ~(x <= threshold)
    first = np.where(bad.any(-1), bad.argmax(-1), x.shape[-1])
    return first
