"""Ground-truth solvers (benchmarks/pde/README.md), numpy only, periodic domains, integrating-factor RK4.

* ``VorticitySolver``: ∂ω/∂t + u·∇ω = νΔω − αω − βv + f on [0,1)² (β = 0: 2-D Navier-Stokes;
  β > 0: β-plane barotropic vorticity). Linear terms exactly through the integrating factor,
  advection pseudo-spectrally with the 2/3 rule.
* ``tracer_run``: ∂q/∂t + u·∇q = κΔq + s for a steady velocity (u, v) and source s.
* ``heat_exact``: û_k(t) = û_k(0) e^{−νk²t} (1-D or 2-D).
* ``burgers_run``: u_t + u u_x = ν u_xx on [0, 2π); ``burgers_cole_hopf``: the exact solution for
  u₀ = sin x.
* initial conditions: ``grf_vorticity`` (FNO covariance σ²(−Δ + τ²)^{−a}), ``peaked_vorticity``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ive

from benchmarks.pde.spectral import (
    PDEInputError,
    check_field,
    dealias_mask,
    derivative_wavenumbers,
    wavenumbers,
)


def _ifrk4(q, lin, nonlin, dt, e=None):
    """One integrating-factor RK4 step of q' = L q + N(q) (L diagonal, complex; numpy or torch).

    ``e`` = exp(L dt/2) when precomputed.
    """
    if e is None:
        e = np.exp(lin * dt / 2)
    e2 = e * e
    k1 = nonlin(q)
    k2 = nonlin(e * (q + dt / 2 * k1))
    k3 = nonlin(e * q + dt / 2 * k2)
    k4 = nonlin(e2 * q + dt * e * k3)
    return e2 * q + dt / 6 * (e2 * k1 + 2 * e * (k2 + k3) + k4)


def forcing_field(kind: str, n: int, amplitude: float = 0.1, wavenumber: int = 4) -> np.ndarray:
    """Vorticity forcing f(x, y) on the N² grid: 'none', 'fno', 'kolmogorov'."""
    x = np.arange(n) / n
    xx, yy = np.meshgrid(x, x, indexing="ij")
    if kind == "none":
        return np.zeros((n, n))
    if kind == "fno":  # FNO data generator: 0.1 (sin 2π(x+y) + cos 2π(x+y))
        return amplitude * (np.sin(2 * np.pi * (xx + yy)) + np.cos(2 * np.pi * (xx + yy)))
    if kind == "kolmogorov":  # body force F_x = A sin(2π m y)/(2π m) -> f = −∂F_x/∂y
        return -amplitude * np.cos(2 * np.pi * wavenumber * yy)
    raise PDEInputError(f"forcing: unknown kind {kind!r} (none, fno, kolmogorov)")


class VorticitySolver:
    def __init__(
        self,
        n: int,
        nu: float,
        dt: float,
        alpha: float = 0.0,
        beta: float = 0.0,
        forcing: np.ndarray | None = None,
        precision: str = "double",
    ):
        if n < 8 or n % 2:
            raise PDEInputError(f"grid: N = {n} must be even and >= 8")
        if dt <= 0 or nu < 0 or alpha < 0:
            raise PDEInputError(
                f"solver: need dt > 0, nu >= 0, alpha >= 0 (got {dt}, {nu}, {alpha})"
            )
        self.n, self.nu, self.dt, self.alpha, self.beta = n, nu, dt, alpha, beta
        _, _, k2, k2s = wavenumbers(n)
        kx, ky = derivative_wavenumbers(n)  # Nyquist zeroed in first derivatives
        self.kx, self.ky = kx, ky
        beta_term = 1j * beta * kx / k2s  # −βv̂ = iβ kx ω̂/|k|²
        beta_term[0, 0] = 0.0
        self.lin = -nu * k2 - alpha + beta_term
        self.mask = dealias_mask(n)
        f = np.zeros((n, n)) if forcing is None else check_field("forcing", forcing)
        if f.shape != (n, n):
            raise PDEInputError(f"forcing: expected shape {(n, n)}, got {f.shape}")
        self.forcing = f
        self.f_hat = np.fft.rfft2(f)

        # torch FFTs (float64) are ~4x faster than numpy's on one CPU thread
        # (single precision halves the cost again; the generator uses it, tests use double)
        self.cdtype = {"double": np.complex128, "single": np.complex64}[precision]
        self._t = {
            name: torch.from_numpy(np.ascontiguousarray(arr).astype(self.cdtype))
            for name, arr in (
                ("e", np.exp(self.lin * dt / 2)),
                ("ikx", 1j * kx),
                ("iky", 1j * ky),
                ("k2s", k2s),
                ("mask", self.mask),
                ("lin", self.lin),
                ("f_hat", self.f_hat),
            )
        }
        self._e = self._t["e"]

    def nonlinear(self, w_hat):
        t, n = self._t, self.n
        psi = w_hat / t["k2s"]
        psi[..., 0, 0] = 0.0
        ikx, iky = t["ikx"], t["iky"]
        u, v, wx, wy = torch.fft.irfft2(
            torch.stack((iky * psi, -ikx * psi, ikx * w_hat, iky * w_hat)), s=(n, n)
        )
        adv = torch.fft.rfft2(u * wx + v * wy) * t["mask"]
        return -adv + t["f_hat"]

    def step_hat(self, w_hat):
        return _ifrk4(w_hat, self._t["lin"], self.nonlinear, self.dt, self._e)

    def run(self, omega0, t_record) -> np.ndarray:
        """Vorticity at each time of ``t_record`` (multiples of dt, starting at 0): (..., T, N, N)."""
        omega0 = check_field("omega0", omega0)
        if omega0.shape[-1] != self.n:
            raise PDEInputError(f"omega0: expected grid {self.n}, got shape {omega0.shape}")
        steps = np.rint(np.asarray(t_record) / self.dt).astype(int)
        if np.any(np.abs(steps * self.dt - np.asarray(t_record)) > 1e-9) or np.any(
            np.diff(steps) < 0
        ):
            raise PDEInputError(
                f"t_record: {list(t_record)} must be increasing multiples of dt = {self.dt}"
            )
        rdtype = np.float64 if self.cdtype == np.complex128 else np.float32
        w_hat = torch.fft.rfft2(torch.from_numpy(np.ascontiguousarray(omega0, dtype=rdtype)))
        out = np.empty(omega0.shape[:-2] + (len(steps), self.n, self.n))
        done = 0
        with torch.no_grad():
            for i, s in enumerate(steps):
                for _ in range(s - done):
                    w_hat = self.step_hat(w_hat)
                done = s
                out[..., i, :, :] = torch.fft.irfft2(w_hat, s=(self.n, self.n)).numpy()
        if not np.isfinite(out).all():
            raise PDEInputError(
                f"solver blew up (nu={self.nu}, dt={self.dt}, N={self.n}): reduce dt or raise nu"
            )
        return out


def grf_vorticity(rng, n_samples: int, n: int, alpha: float = 2.5, tau: float = 7.0) -> np.ndarray:
    """FNO initial vorticity: Gaussian field with covariance σ²(−Δ + τ²)^{−α}, σ = τ^{α−1}."""
    sigma = tau ** (alpha - 1.0)
    i = np.fft.fftfreq(n, d=1.0 / n)
    k2 = i[:, None] ** 2 + i[None, :] ** 2
    sqrt_eig = n * n * np.sqrt(2.0) * sigma * (4 * np.pi**2 * k2 + tau**2) ** (-alpha / 2)
    sqrt_eig[0, 0] = 0.0
    xi = rng.standard_normal((n_samples, n, n)) + 1j * rng.standard_normal((n_samples, n, n))
    return np.fft.ifft2(sqrt_eig * xi).real


def peaked_vorticity(rng, n_samples: int, n: int, k0: float = 6.0, rms: float = 3.0) -> np.ndarray:
    """Random-phase vorticity with |ω̂(k)| ∝ k^{1.5} exp(−(k/k0)²), scaled to rms vorticity ``rms``."""
    i = np.fft.fftfreq(n, d=1.0 / n)
    k = np.sqrt(i[:, None] ** 2 + i[None, :] ** 2)
    amp = k**1.5 * np.exp(-((k / k0) ** 2))
    phase = rng.uniform(0, 2 * np.pi, (n_samples, n, n))
    w = np.fft.ifft2(amp * np.exp(1j * phase)).real
    w -= w.mean(axis=(-2, -1), keepdims=True)
    return w * rms / np.sqrt(np.mean(w**2, axis=(-2, -1), keepdims=True))


def tracer_run(q0, u, v, kappa: float, t_record, dt: float, source=None) -> np.ndarray:
    """Passive scalar ∂q/∂t + u·∇q = κΔq + s, steady (u, v, s); returns (..., T, N, N)."""
    q0 = check_field("q0", q0)
    n = q0.shape[-1]
    u = check_field("u", u)
    v = check_field("v", v)
    if u.shape[-2:] != (n, n) or v.shape[-2:] != (n, n):
        raise PDEInputError(f"u, v: expected grid {(n, n)}, got {u.shape} and {v.shape}")
    _, _, k2, _ = wavenumbers(n)
    kx, ky = derivative_wavenumbers(n)
    mask = dealias_mask(n)
    s_hat = 0.0 if source is None else np.fft.rfft2(check_field("source", source))
    lin = -kappa * k2 + 0j

    def nonlin(q_hat):
        qx = np.fft.irfft2(1j * kx * q_hat, s=(n, n))
        qy = np.fft.irfft2(1j * ky * q_hat, s=(n, n))
        return -np.fft.rfft2(u * qx + v * qy) * mask + s_hat

    steps = np.rint(np.asarray(t_record) / dt).astype(int)
    q_hat = np.fft.rfft2(q0)
    out = np.empty(q0.shape[:-2] + (len(steps), n, n))
    done = 0
    for i, s in enumerate(steps):
        for _ in range(s - done):
            q_hat = _ifrk4(q_hat, lin, nonlin, dt)
        done = s
        out[..., i, :, :] = np.fft.irfft2(q_hat, s=(n, n))
    return out


def heat_exact(u0, nu: float, t: float, length: float = 1.0) -> np.ndarray:
    """Exact periodic heat-equation solution; 1-D (last axis) or 2-D (last two axes, square)."""
    u0 = np.asarray(u0, dtype=np.float64)
    if not np.isfinite(u0).all():
        raise PDEInputError(f"u0: NaN or infinite values (shape {u0.shape})")
    if u0.ndim == 1:
        n = u0.shape[-1]
        k = 2 * np.pi / length * np.fft.rfftfreq(n, d=1.0 / n)
        return np.fft.irfft(np.fft.rfft(u0) * np.exp(-nu * k**2 * t), n=n)
    n = u0.shape[-1]
    if u0.shape[-2] != n:
        raise PDEInputError(f"u0: expected a square grid, got shape {u0.shape}")
    kx = 2 * np.pi / length * np.fft.fftfreq(n, d=1.0 / n)[:, None]
    ky = 2 * np.pi / length * np.fft.rfftfreq(n, d=1.0 / n)[None, :]
    return np.fft.irfft2(np.fft.rfft2(u0) * np.exp(-nu * (kx**2 + ky**2) * t), s=(n, n))


def burgers_run(u0, nu: float, t_record, dt: float) -> np.ndarray:
    """Viscous Burgers on [0, 2π) (last axis), IF-RK4 + 2/3 de-aliasing: (..., T, N)."""
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim < 1 or not np.isfinite(u0).all():
        raise PDEInputError(f"u0: need a finite 1-D field, got shape {u0.shape}")
    n = u0.shape[-1]
    k = np.fft.rfftfreq(n, d=1.0 / n)  # domain 2π: integer wavenumbers
    mask = k < n / 3
    lin = -nu * k**2 + 0j

    def nonlin(u_hat):
        u = np.fft.irfft(u_hat, n=n)
        return -0.5 * 1j * k * np.fft.rfft(u * u) * mask

    steps = np.rint(np.asarray(t_record) / dt).astype(int)
    u_hat = np.fft.rfft(u0)
    out = np.empty(u0.shape[:-1] + (len(steps), n))
    done = 0
    for i, s in enumerate(steps):
        for _ in range(s - done):
            u_hat = _ifrk4(u_hat, lin, nonlin, dt)
        done = s
        out[..., i, :] = np.fft.irfft(u_hat, n=n)
    return out


def burgers_cole_hopf(x, t: float, nu: float, n_terms: int = 200) -> np.ndarray:
    """Exact Burgers solution for u₀ = sin x: u = −2ν φ_x/φ, φ = I₀(a) + 2Σ I_n(a)e^{−νn²t}cos nx.

    a = 1/(2ν); exponentially scaled Bessel functions (the common factor e^a cancels).
    """
    x = np.asarray(x, dtype=np.float64)
    a = 1.0 / (2.0 * nu)
    nn = np.arange(1, n_terms + 1)
    c = 2 * ive(nn, a) * np.exp(-nu * nn**2 * t)
    phi = ive(0, a) + (c[:, None] * np.cos(nn[:, None] * x[None, :])).sum(0)
    phi_x = -(c[:, None] * nn[:, None] * np.sin(nn[:, None] * x[None, :])).sum(0)
    return -2 * nu * phi_x / phi
