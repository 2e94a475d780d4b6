"""Spectral helpers on the periodic unit square (conventions in benchmarks/pde/README.md).

``field[..., i, j]`` is the value at ``x = i/N, y = j/N``; the last two axes are the grid.
"""

from __future__ import annotations

import numpy as np


class PDEInputError(ValueError):
    """A field or grid that a solver or metric cannot take (names the array and shape)."""


def check_field(name: str, arr, ndim_min: int = 2, square: bool = True) -> np.ndarray:
    """Finite float array with at least ``ndim_min`` axes and a square grid on the last two."""
    arr = np.asarray(arr)
    if arr.ndim < ndim_min:
        raise PDEInputError(f"{name}: expected at least {ndim_min} axes, got shape {arr.shape}")
    if square and arr.ndim >= 2 and arr.shape[-1] != arr.shape[-2]:
        raise PDEInputError(
            f"{name}: expected a square N x N grid on the last two axes, got shape {arr.shape}"
        )
    if arr.shape[-1] < 4:
        raise PDEInputError(
            f"{name}: grid of {arr.shape[-1]} points is too small (shape {arr.shape})"
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise PDEInputError(f"{name}: expected numbers, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise PDEInputError(
            f"{name}: {int(bad.sum())} NaN or infinite values (shape {arr.shape}, first at index "
            f"{tuple(int(i) for i in np.argwhere(bad)[0])})"
        )
    return arr.astype(np.float64, copy=False)


def same_shape(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise PDEInputError(f"{a_name} has shape {a.shape} but {b_name} has shape {b.shape}")


def wavenumbers(n: int, length: float = 1.0):
    """Angular wavenumbers for ``rfft2`` layout: kx (n, 1), ky (1, n//2+1), k² with k²[0,0] = 1."""
    kx = 2 * np.pi / length * np.fft.fftfreq(n, d=1.0 / n)[:, None]
    ky = 2 * np.pi / length * np.fft.rfftfreq(n, d=1.0 / n)[None, :]
    k2 = kx**2 + ky**2
    k2_safe = k2.copy()
    k2_safe[0, 0] = 1.0
    return kx, ky, k2, k2_safe


def derivative_wavenumbers(n: int, length: float = 1.0):
    """kx (n, 1), ky (1, n//2+1) for FIRST derivatives: the Nyquist mode (index n/2, n even) is
    zeroed in both directions, the usual convention (its derivative is not a real field). Every
    first derivative here (metrics, velocity from vorticity, the solvers) uses this, so a
    velocity derived from a vorticity has zero spectral divergence (README, conventions)."""
    kx, ky, _, _ = wavenumbers(n, length)
    kx, ky = kx.copy(), ky.copy()
    if n % 2 == 0:
        kx[n // 2, 0] = 0.0
        ky[0, n // 2] = 0.0
    return kx, ky


def dealias_mask(n: int) -> np.ndarray:
    """2/3-rule mask in ``rfft2`` layout (keeps integer |kx|, |ky| < n/3)."""
    ix = np.abs(np.fft.fftfreq(n, d=1.0 / n))[:, None]
    iy = np.abs(np.fft.rfftfreq(n, d=1.0 / n))[None, :]
    return (ix < n / 3) & (iy < n / 3)


def velocity_hat(w_hat: np.ndarray, n: int):
    """(û, v̂) from ω̂: ψ̂ = ω̂/|k|², u = ∂ψ/∂y, v = −∂ψ/∂x."""
    _, _, _, k2s = wavenumbers(n)
    kx, ky = derivative_wavenumbers(n)
    psi = w_hat / k2s
    psi[..., 0, 0] = 0.0
    return 1j * ky * psi, -1j * kx * psi


def velocity_from_vorticity(omega) -> tuple[np.ndarray, np.ndarray]:
    omega = check_field("omega", omega)
    n = omega.shape[-1]
    uh, vh = velocity_hat(np.fft.rfft2(omega), n)
    return np.fft.irfft2(uh, s=(n, n)), np.fft.irfft2(vh, s=(n, n))


def streamfunction(omega) -> np.ndarray:
    omega = check_field("omega", omega)
    n = omega.shape[-1]
    _, _, _, k2s = wavenumbers(n)
    psi = np.fft.rfft2(omega) / k2s
    psi[..., 0, 0] = 0.0
    return np.fft.irfft2(psi, s=(n, n))


def ddx(f: np.ndarray) -> np.ndarray:
    n = f.shape[-1]
    kx, _ = derivative_wavenumbers(n)
    return np.fft.irfft2(1j * kx * np.fft.rfft2(f), s=(n, n))


def ddy(f: np.ndarray) -> np.ndarray:
    n = f.shape[-1]
    _, ky = derivative_wavenumbers(n)
    return np.fft.irfft2(1j * ky * np.fft.rfft2(f), s=(n, n))


def vorticity_from_velocity(u, v) -> np.ndarray:
    return ddx(np.asarray(v, dtype=np.float64)) - ddy(np.asarray(u, dtype=np.float64))


def energy(u, v) -> np.ndarray:
    """E = ½⟨u² + v²⟩ over the last two axes."""
    return 0.5 * np.mean(np.asarray(u) ** 2 + np.asarray(v) ** 2, axis=(-2, -1))


def enstrophy(omega) -> np.ndarray:
    """Z = ½⟨ω²⟩ over the last two axes."""
    return 0.5 * np.mean(np.asarray(omega) ** 2, axis=(-2, -1))


def palinstrophy(omega) -> np.ndarray:
    """P = ½⟨|∇ω|²⟩."""
    omega = np.asarray(omega, dtype=np.float64)
    return 0.5 * np.mean(ddx(omega) ** 2 + ddy(omega) ** 2, axis=(-2, -1))


def shell_index(n: int) -> np.ndarray:
    """Integer radial shell of each full-fft2 mode: round(sqrt(ix² + iy²))."""
    i = np.fft.fftfreq(n, d=1.0 / n)
    return np.rint(np.sqrt(i[:, None] ** 2 + i[None, :] ** 2)).astype(int)


def energy_spectrum(u, v) -> np.ndarray:
    """Shell-summed E(k) = ½ Σ_{shell k} |û|²+|v̂|² (fft normalised by N²), k = 0..N/2."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    n = u.shape[-1]
    dens = 0.5 * (np.abs(np.fft.fft2(u)) ** 2 + np.abs(np.fft.fft2(v)) ** 2) / n**4
    shells = shell_index(n)
    kmax = n // 2
    out = np.zeros(u.shape[:-2] + (kmax + 1,))
    flat = dens.reshape(dens.shape[:-2] + (-1,))
    sh = shells.ravel()
    keep = sh <= kmax
    for k in range(kmax + 1):
        sel = keep & (sh == k)
        out[..., k] = flat[..., sel].sum(axis=-1)
    return out


def spectral_slope(spectrum: np.ndarray, k_lo: int = 2, k_hi: int | None = None) -> np.ndarray:
    """Least-squares slope of log E vs log k over k_lo <= k <= k_hi.

    Default k_hi = the 2/3-rule cutoff N/3 (spectrum has N/2 + 1 shells); a 4..k_max/3
    band is empty on the tiny 32² grid, so the band is a parameter.
    """
    spectrum = np.asarray(spectrum, dtype=np.float64)
    kmax = spectrum.shape[-1] - 1
    k_hi = max(k_hi or (2 * kmax) // 3, k_lo + 1)
    ks = np.arange(k_lo, k_hi + 1)
    e = np.maximum(spectrum[..., ks], 1e-300)
    x = np.log(ks)
    x = x - x.mean()
    y = np.log(e)
    y = y - y.mean(axis=-1, keepdims=True)
    return (y * x).sum(axis=-1) / (x**2).sum()
