"""Symbolic tools of PG-CoT (README, PG-CoT step 4): fit the vorticity equation, run the fitted
program.

The method keeps its own small pseudo-spectral solver: methods/ and benchmarks/ never import
each other, so the ground-truth solvers of benchmarks/pde are not reused here.

  d(omega)/dt + J(psi, omega) = nu Lap(omega) + sum_m c_m f_m - alpha omega - beta v  (README, (E7))
"""

from __future__ import annotations

import numpy as np

from methods.omniflow import fields as F

FORCING_LIBRARY = ("fno", "kolmogorov4_sin", "kolmogorov4_cos")


def forcing_field(name: str, n: int, L: float = 1.0) -> np.ndarray:
    x, y = F.grid(n, L)
    if name == "fno":  # FNO data generator: 0.1 (sin 2pi(x+y) + cos 2pi(x+y)), coefficient fitted
        return np.sin(2 * np.pi * (x + y) / L) + np.cos(2 * np.pi * (x + y) / L)
    if name == "kolmogorov4_sin":
        return np.sin(4 * 2 * np.pi * y / L)
    if name == "kolmogorov4_cos":
        return np.cos(4 * 2 * np.pi * y / L)
    raise ValueError(f"unknown forcing {name!r}; known: {', '.join(FORCING_LIBRARY)}")


def _spectral(n: int, L: float):
    kx, ky = F.wavenumbers((n, n), L)
    k2 = kx**2 + ky**2
    kmax = np.abs(kx).max()
    dealias = (np.abs(kx) < 2 / 3 * kmax) & (np.abs(ky) < 2 / 3 * kmax)
    kx, ky = F.derivative_wavenumbers((n, n), L)  # first derivatives: Nyquist zeroed
    k2i = np.where(k2 == 0, 0.0, 1.0 / np.where(k2 == 0, 1.0, k2))
    return kx, ky, k2, k2i, dealias


def advection(w: np.ndarray, L: float = 1.0) -> np.ndarray:
    """u . grad(omega) with u from omega (spectral, de-aliased by the 2/3 rule)."""
    n = w.shape[-1]
    kx, ky, _, k2i, dealias = _spectral(n, L)
    wh = np.fft.fft2(w)
    psih = wh * k2i
    u = np.real(np.fft.ifft2(1j * ky * psih))
    v = np.real(np.fft.ifft2(-1j * kx * psih))
    wx = np.real(np.fft.ifft2(1j * kx * wh))
    wy = np.real(np.fft.ifft2(1j * ky * wh))
    return np.real(np.fft.ifft2(np.fft.fft2(u * wx + v * wy) * dealias))


def simulate(
    w0: np.ndarray,
    t_total: float,
    *,
    nu: float,
    alpha: float = 0.0,
    beta: float = 0.0,
    forcing: np.ndarray | None = None,
    dt: float | None = None,
    cfl: float = 0.5,
    max_dt: float = 0.1,
    L: float = 1.0,
) -> np.ndarray:
    """Integrating-factor RK4 (Lawson) for the vorticity equation on real FFTs.

    ``w0`` may be (n, n) or (B, n, n). ``dt=None``: dt = min(max_dt, cfl * dx / max|u(w0)|).
    """
    w0 = np.asarray(w0, dtype=np.float64)
    n = w0.shape[-1]
    kx = 2 * np.pi * np.fft.fftfreq(n, d=L / n)[:, None]
    ky = 2 * np.pi * np.fft.rfftfreq(n, d=L / n)[None, :]
    k2 = kx**2 + ky**2
    k2i = np.where(k2 == 0, 0.0, 1.0 / np.where(k2 == 0, 1.0, k2))
    kmax = 2 * np.pi * (n // 2) / L
    dealias = (np.abs(kx) < 2 / 3 * kmax) & (np.abs(ky) < 2 / 3 * kmax)
    lin = -(nu * k2 + alpha)
    if n % 2 == 0:  # first derivatives below: Nyquist zeroed in both directions (fields.py)
        kx, ky = kx.copy(), ky.copy()
        kx[n // 2, 0] = 0.0
        ky[0, n // 2] = 0.0
    fh = np.zeros(k2.shape, complex) if forcing is None else np.fft.rfft2(forcing) * (k2 > 0)
    irf = lambda a: np.fft.irfft2(a, s=(n, n))  # noqa: E731

    def rhs(wh):
        psih = wh * k2i
        u, v = irf(1j * ky * psih), irf(-1j * kx * psih)
        wx, wy = irf(1j * kx * wh), irf(1j * ky * wh)
        return -np.fft.rfft2(u * wx + v * wy) * dealias + fh + beta * 1j * kx * psih  # -beta v

    wh = np.fft.rfft2(w0)
    if dt is None:
        psih = wh * k2i
        umax = max(
            float(np.abs(irf(1j * ky * psih)).max()),
            float(np.abs(irf(-1j * kx * psih)).max()),
            1e-12,
        )
        dt = min(max_dt, cfl * (L / n) / umax)
    steps = max(1, int(np.ceil(t_total / dt - 1e-9)))
    h = t_total / steps
    e1, e2 = np.exp(lin * h / 2), np.exp(lin * h)
    for _ in range(steps):
        a = rhs(wh)
        b = rhs(e1 * (wh + h / 2 * a))
        c = rhs(e1 * wh + h / 2 * b)
        d = rhs(e2 * wh + h * e1 * c)
        wh = e2 * wh + h / 6 * (e2 * a + 2 * e1 * (b + c) + d)
    return irf(wh)


def fit_vorticity_equation(
    frames: np.ndarray, dt: float, L: float = 1.0, use_beta: bool = True
) -> dict:
    """Linear least squares for (nu, c_m, alpha, beta) on consecutive frames (trapezoid in time).

    (w1 - w0)/dt + mean(J) = nu mean(Lap w) + sum_m c_m f_m - alpha mean(w) - beta mean(v).
    """
    frames = F.check_field(frames, "frames", ndim=3)
    if frames.shape[0] < 2:
        raise F.FieldError("frames: the fit needs at least 2 frames")
    n = frames.shape[-1]
    fs = [forcing_field(m, n, L) for m in FORCING_LIBRARY]
    rows, targets = [], []
    for w0, w1 in zip(frames[:-1], frames[1:], strict=True):
        wm = 0.5 * (w0 + w1)
        adv = 0.5 * (advection(w0, L) + advection(w1, L))
        _, v = F.velocity_from_vorticity(wm, L)
        cols = [F.laplacian(wm, L)] + fs + [-wm] + ([-v] if use_beta else [])
        rows.append(np.stack([c.ravel() for c in cols], axis=1))
        targets.append(((w1 - w0) / dt + adv).ravel())
    A, b = np.concatenate(rows), np.concatenate(targets)
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    coef, *_ = np.linalg.lstsq(A / scale, b, rcond=None)
    coef = coef / scale
    resid = float(np.linalg.norm(A @ coef - b) / max(np.linalg.norm(b), 1e-30))
    out = {
        "nu": float(coef[0]),
        "forcing": {m: float(c) for m, c in zip(FORCING_LIBRARY, coef[1:4], strict=True)},
    }
    out["drag"] = float(coef[4])
    out["beta"] = float(coef[5]) if use_beta else 0.0
    out["fit_residual"] = resid
    return out


def run_program(
    program: dict,
    w0: np.ndarray,
    steps: int,
    dt_frame: float,
    L: float = 1.0,
    inner_dt: float = 5e-3,
) -> np.ndarray:
    """Execute a physics program {"pde": "ns2d_vorticity", nu, forcing{}, drag, beta}: (steps, n, n)."""
    if program.get("pde") != "ns2d_vorticity":
        raise ValueError(f"unknown pde {program.get('pde')!r} in physics program")
    n = w0.shape[-1]
    f = sum(float(c) * forcing_field(m, n, L) for m, c in (program.get("forcing") or {}).items())
    kw = {
        "nu": max(float(program.get("nu", 0.0)), 0.0),
        "alpha": max(float(program.get("drag", 0.0)), 0.0),
        "beta": float(program.get("beta", 0.0)),
        "forcing": f if isinstance(f, np.ndarray) else None,
        "dt": inner_dt,
        "L": L,
    }
    out, w = [], w0
    for _ in range(steps):
        w = simulate(w, dt_frame, **kw)
        out.append(w)
    return np.stack(out)


def combine_fits(fits: list[dict]) -> dict:
    """Median of each fitted coefficient over the query and exemplar fits (few-shot calibration)."""

    def med(key):
        return float(np.median([float(f.get(key, 0.0)) for f in fits]))

    names = sorted({m for f in fits for m in f.get("forcing", {})})
    forcing = {m: float(np.median([f.get("forcing", {}).get(m, 0.0) for f in fits])) for m in names}
    return {
        "pde": "ns2d_vorticity",
        "nu": med("nu"),
        "drag": med("drag"),
        "beta": med("beta"),
        "forcing": forcing,
    }
