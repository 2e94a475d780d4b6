"""Spectral field operations on the periodic box [0, L)^2 (README, (E1)).

Array convention, fixed once for the whole package: ``field[i, j]`` is the value at
x = i * dx, y = j * dy (axis 0 is x, axis 1 is y). Swapping the axes flips every rotation label.
"""

from __future__ import annotations

import numpy as np


class FieldError(ValueError):
    """A field the descriptors or solvers cannot use (NaN/inf, wrong shape or grid)."""


def check_field(a, name: str = "field", ndim: int = 2, min_size: int = 8) -> np.ndarray:
    """Return ``a`` as float64 after checking finiteness and grid shape; raise FieldError."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != ndim:
        raise FieldError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if any(s < min_size for s in a.shape[-2:]):
        raise FieldError(f"{name}: grid {a.shape[-2:]} is smaller than {min_size}x{min_size}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise FieldError(f"{name}: {int(bad.sum())} non-finite values (NaN or inf)")
    return a


def wavenumbers(shape: tuple[int, int], L: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Angular wavenumbers kx (axis 0) and ky (axis 1), broadcast to ``shape``."""
    nx, ny = shape
    kx = 2 * np.pi * np.fft.fftfreq(nx, d=L / nx)
    ky = 2 * np.pi * np.fft.fftfreq(ny, d=L / ny)
    return np.meshgrid(kx, ky, indexing="ij")


def derivative_wavenumbers(shape: tuple[int, int], L: float = 1.0):
    """kx, ky for FIRST derivatives: the Nyquist mode (index n/2 of an even axis) is zeroed in
    both directions (README, (E1)); second derivatives (Laplacian, psi) keep it. With one
    convention for u = psi_y, v = -psi_x and for div u, a derived velocity has div u = 0."""
    kx, ky = (k.copy() for k in wavenumbers(shape, L))
    nx, ny = shape
    if nx % 2 == 0:
        kx[nx // 2, :] = 0.0
    if ny % 2 == 0:
        ky[:, ny // 2] = 0.0
    return kx, ky


def ddx(f: np.ndarray, L: float = 1.0) -> np.ndarray:
    kx, _ = derivative_wavenumbers(f.shape, L)
    return np.real(np.fft.ifft2(1j * kx * np.fft.fft2(f)))


def ddy(f: np.ndarray, L: float = 1.0) -> np.ndarray:
    _, ky = derivative_wavenumbers(f.shape, L)
    return np.real(np.fft.ifft2(1j * ky * np.fft.fft2(f)))


def streamfunction(omega: np.ndarray, L: float = 1.0) -> np.ndarray:
    """psi_hat = omega_hat / |k|^2 (psi_hat_0 = 0), i.e. -Laplacian(psi) = omega."""
    kx, ky = wavenumbers(omega.shape, L)
    k2 = kx**2 + ky**2
    k2[0, 0] = 1.0
    psi_hat = np.fft.fft2(omega) / k2
    psi_hat[0, 0] = 0.0
    return np.real(np.fft.ifft2(psi_hat))


def velocity_from_vorticity(omega: np.ndarray, L: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """u = d(psi)/dy, v = -d(psi)/dx, so that omega = dv/dx - du/dy."""
    psi = streamfunction(omega, L)
    return ddy(psi, L), -ddx(psi, L)


def vorticity(u: np.ndarray, v: np.ndarray, L: float = 1.0) -> np.ndarray:
    return ddx(v, L) - ddy(u, L)


def divergence(u: np.ndarray, v: np.ndarray, L: float = 1.0) -> np.ndarray:
    return ddx(u, L) + ddy(v, L)


def divergence_residual(u: np.ndarray, v: np.ndarray, L: float = 1.0) -> float:
    """r_div = ||div u||_2 / ||grad u||_F (dimensionless; README, (E2))."""
    grads = [ddx(u, L), ddy(u, L), ddx(v, L), ddy(v, L)]
    den = np.sqrt(sum(float(np.sum(g**2)) for g in grads))
    num = np.sqrt(float(np.sum(divergence(u, v, L) ** 2)))
    return num / den if den > 0 else 0.0


def leray_projection(u: np.ndarray, v: np.ndarray, L: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """u_hat <- u_hat - k (k . u_hat) / |k|^2: the divergence-free part (repair of 4.2)."""
    kx, ky = derivative_wavenumbers(u.shape, L)
    k2 = kx**2 + ky**2
    k2[k2 == 0] = 1.0
    uh, vh = np.fft.fft2(u), np.fft.fft2(v)
    kdotu = (kx * uh + ky * vh) / k2
    return np.real(np.fft.ifft2(uh - kx * kdotu)), np.real(np.fft.ifft2(vh - ky * kdotu))


def laplacian(f: np.ndarray, L: float = 1.0) -> np.ndarray:
    kx, ky = wavenumbers(f.shape, L)
    return np.real(np.fft.ifft2(-(kx**2 + ky**2) * np.fft.fft2(f)))


def grid(n: int, L: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Cell coordinates x[i, j] = i*dx, y[i, j] = j*dy."""
    x = np.arange(n) * (L / n)
    return np.meshgrid(x, x, indexing="ij")
