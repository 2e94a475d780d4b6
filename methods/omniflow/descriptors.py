"""Semantic-Symbolic Alignment Phi: flow tensors -> descriptor dict -> deterministic text (README, (E1)-(E4)).

Every threshold is a key of ``DescriptorConfig`` (reconstructed choices, see README).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from methods.omniflow import fields as F


@dataclass(frozen=True)
class DescriptorConfig:
    L: float = 1.0
    ow_threshold: float = 0.2  # cores: W < -ow_threshold * std(W)
    min_area: int = 4  # cells
    div_tol_spectral: float = 1e-6  # "incompressible" below this r_div on spectral data
    div_tol_observed: float = 1e-2  # ... on finite-difference / observed data
    slope_kmin: int = 4
    slope_kmax_frac: float = 1 / 3  # upper end of the slope band: k_max * frac, k_max = N/2
    centre_trace_tol: float = 1e-3  # |tr J| / sqrt(det J) below this: centre
    max_vortices_listed: int = 8
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------ global scalars and spectrum


def energy_spectrum(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shell-summed E(k) = 1/2 sum_{k-1/2 <= |k'| < k+1/2} |u_hat_k'|^2, integer k (mean-normalised FFT)."""
    n = u.shape[0] * u.shape[1]
    uh, vh = np.fft.fft2(u) / n, np.fft.fft2(v) / n
    ix = np.fft.fftfreq(u.shape[0], d=1.0 / u.shape[0])
    iy = np.fft.fftfreq(u.shape[1], d=1.0 / u.shape[1])
    kk = np.sqrt(ix[:, None] ** 2 + iy[None, :] ** 2)
    shell = np.floor(kk + 0.5).astype(int)
    dens = 0.5 * (np.abs(uh) ** 2 + np.abs(vh) ** 2)
    return np.bincount(shell.ravel(), weights=dens.ravel())


def spectrum_slope(E: np.ndarray, kmin: int, kmax: int) -> float:
    """Least-squares slope of log E vs log k over kmin <= k <= kmax (positive E only)."""
    k = np.arange(len(E))
    sel = (k >= kmin) & (k <= kmax) & (E > 1e-30)
    if sel.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(k[sel]), np.log(E[sel]), 1)[0])


def global_scalars(omega: np.ndarray, u: np.ndarray, v: np.ndarray, cfg: DescriptorConfig) -> dict:
    L = cfg.L
    wx, wy = F.ddx(omega, L), F.ddy(omega, L)
    E = 0.5 * float(np.mean(u**2 + v**2))
    Z = 0.5 * float(np.mean(omega**2))
    P = 0.5 * float(np.mean(wx**2 + wy**2))
    spec = energy_spectrum(u, v)
    kmax = min(omega.shape) // 2
    k = np.arange(len(spec))
    valid = (k >= 1) & (k <= kmax)
    ell = float(np.sum(spec[valid] / k[valid]) / max(np.sum(spec[valid]), 1e-30)) * L
    top = k > (2 * kmax) // 3
    i, j = np.unravel_index(int(np.argmax(np.abs(omega))), omega.shape)
    return {
        "energy": E,
        "enstrophy": Z,
        "palinstrophy": P,
        "max_abs_vorticity": float(np.abs(omega[i, j])),
        "max_vorticity_at": [i * L / omega.shape[0], j * L / omega.shape[1]],
        "mean_vorticity": float(np.mean(omega)),
        "rms_velocity": math.sqrt(2 * E),
        "integral_length": ell,
        "spectrum_slope": spectrum_slope(
            spec, cfg.slope_kmin, max(cfg.slope_kmin + 1, int(kmax * cfg.slope_kmax_frac))
        ),
        "high_band_energy_fraction": float(spec[top].sum() / max(spec[valid].sum(), 1e-30)),
    }


# ------------------------------------------------------------------ Okubo-Weiss vortices


def okubo_weiss(u: np.ndarray, v: np.ndarray, L: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """W = s_n^2 + s_s^2 - omega^2 with s_n = u_x - v_y, s_s = v_x + u_y (Q = -W/4)."""
    ux, uy, vx, vy = F.ddx(u, L), F.ddy(u, L), F.ddx(v, L), F.ddy(v, L)
    omega = vx - uy
    return (ux - vy) ** 2 + (vx + uy) ** 2 - omega**2, omega


def periodic_label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (4-connectivity) on a torus: label, then merge labels across edges."""
    lab, n = ndimage.label(mask)
    parent = list(range(n + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a_edge, b_edge in ((lab[0, :], lab[-1, :]), (lab[:, 0], lab[:, -1])):
        for a, b in zip(a_edge, b_edge, strict=True):
            if a and b:
                ra, rb = find(int(a)), find(int(b))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = sorted({find(i) for i in range(1, n + 1)})
    remap = np.zeros(n + 1, dtype=int)
    for new, r in enumerate(roots, 1):
        for i in range(1, n + 1):
            if find(i) == r:
                remap[i] = new
    return remap[lab], len(roots)


def _circular_mean(idx: np.ndarray, w: np.ndarray, n: int) -> float:
    ang = 2 * np.pi * idx / n
    c, s = np.sum(w * np.cos(ang)), np.sum(w * np.sin(ang))
    return float((np.arctan2(s, c) % (2 * np.pi)) * n / (2 * np.pi))


def detect_vortices(u: np.ndarray, v: np.ndarray, cfg: DescriptorConfig) -> list[dict]:
    """Vortex cores = components of {W < -thr * std(W)} with area >= min_area, strongest first."""
    W, omega = okubo_weiss(u, v, cfg.L)
    sd = float(np.std(W))
    if sd == 0:
        return []
    lab, n = periodic_label(W < -cfg.ow_threshold * sd)
    nx, ny = omega.shape
    dA = (cfg.L / nx) * (cfg.L / ny)
    out = []
    for c in range(1, n + 1):
        ii, jj = np.nonzero(lab == c)
        if len(ii) < cfg.min_area:
            continue
        w = omega[ii, jj]
        weight = np.abs(w)
        gamma = float(np.sum(w) * dA)
        out.append(
            {
                "x": _circular_mean(ii, weight, nx) * cfg.L / nx,
                "y": _circular_mean(jj, weight, ny) * cfg.L / ny,
                "sign": 1 if gamma > 0 else -1,  # +1 counter-clockwise (cyclonic, N hemisphere)
                "circulation": gamma,
                "peak_vorticity": float(w[np.argmax(weight)]),
                "area": float(len(ii) * dA),
                "radius": math.sqrt(len(ii) * dA / math.pi),
            }
        )
    out.sort(key=lambda d: -abs(d["circulation"]))
    return out


# ------------------------------------------------------------------ critical points


def _bilinear_roots(a: tuple, b: tuple, eps: float = 1e-6) -> list[tuple[float, float]]:
    """Roots in [0,1)^2 of u = a0 + a1 s + a2 t + a3 s t, v = b0 + b1 s + b2 t + b3 s t."""
    a0, a1, a2, a3 = a
    b0, b1, b2, b3 = b
    A = b2 * a3 - b3 * a2
    B = b0 * a3 + b2 * a1 - b1 * a2 - b3 * a0
    C = b0 * a1 - b1 * a0
    scale = max(abs(A), abs(B), abs(C), 1e-300)
    if abs(A) / scale < 1e-12:
        ts = [] if abs(B) / scale < 1e-12 else [-C / B]
    else:
        disc = B * B - 4 * A * C
        if disc < 0:
            return []
        r = math.sqrt(disc)
        ts = [(-B - r) / (2 * A), (-B + r) / (2 * A)]
    roots = []
    for t in ts:
        if not (-eps <= t < 1 - eps):
            continue
        den_u, den_v = a1 + a3 * t, b1 + b3 * t
        if abs(den_u) >= abs(den_v) and abs(den_u) > 1e-300:
            s = -(a0 + a2 * t) / den_u
        elif abs(den_v) > 1e-300:
            s = -(b0 + b2 * t) / den_v
        else:
            continue
        if -eps <= s < 1 - eps:
            if abs(a0 + a1 * s + a2 * t + a3 * s * t) <= 1e-7 * (
                abs(a0) + abs(a1) + abs(a2) + abs(a3) + 1e-300
            ) and abs(b0 + b1 * s + b2 * t + b3 * s * t) <= 1e-7 * (
                abs(b0) + abs(b1) + abs(b2) + abs(b3) + 1e-300
            ):
                roots.append((max(s, 0.0), max(t, 0.0)))
    return roots


def critical_points(u: np.ndarray, v: np.ndarray, cfg: DescriptorConfig) -> dict:
    """Zeros of the bilinear interpolant of (u, v) per cell, classified by J = grad u (README, (E4))."""
    L = cfg.L
    nx, ny = u.shape
    J = [F.ddx(u, L), F.ddy(u, L), F.ddx(v, L), F.ddy(v, L)]
    corners = lambda f: (f, np.roll(f, -1, 0), np.roll(f, -1, 1), np.roll(np.roll(f, -1, 0), -1, 1))  # noqa: E731
    u00, u10, u01, u11 = corners(u)
    v00, v10, v01, v11 = corners(v)
    cu = np.stack([u00, u10, u01, u11])
    cv = np.stack([v00, v10, v01, v11])
    tu, tv = 1e-9 * float(np.abs(u).max()), 1e-9 * float(np.abs(v).max())  # zeros on grid nodes
    cand = (cu.min(0) <= tu) & (cu.max(0) >= -tu) & (cv.min(0) <= tv) & (cv.max(0) >= -tv)
    points = []
    for i, j in zip(*np.nonzero(cand), strict=True):
        a = (
            u00[i, j],
            u10[i, j] - u00[i, j],
            u01[i, j] - u00[i, j],
            u11[i, j] - u10[i, j] - u01[i, j] + u00[i, j],
        )
        b = (
            v00[i, j],
            v10[i, j] - v00[i, j],
            v01[i, j] - v00[i, j],
            v11[i, j] - v10[i, j] - v01[i, j] + v00[i, j],
        )
        for s, t in _bilinear_roots(a, b):
            w = ((1 - s) * (1 - t), s * (1 - t), (1 - s) * t, s * t)
            ip, jp = (i + 1) % nx, (j + 1) % ny
            jac = [w[0] * g[i, j] + w[1] * g[ip, j] + w[2] * g[i, jp] + w[3] * g[ip, jp] for g in J]
            ux, uy, vx, vy = jac
            det, tr = ux * vy - uy * vx, ux + vy
            if det < 0:
                kind = "saddle"
            elif tr * tr < 4 * det:
                kind = (
                    "centre"
                    if abs(tr) <= cfg.centre_trace_tol * math.sqrt(det)
                    else ("spiral_source" if tr > 0 else "spiral_sink")
                )
            else:
                kind = "node_source" if tr > 0 else "node_sink"
            points.append(
                {
                    "x": (i + s) * L / nx,
                    "y": (j + t) * L / ny,
                    "kind": kind,
                    "det": det,
                    "trace": tr,
                }
            )
    counts = {
        k: 0
        for k in ("centre", "saddle", "spiral_source", "spiral_sink", "node_source", "node_sink")
    }
    for p in points:
        counts[p["kind"]] += 1
    index_sum = sum(v for k, v in counts.items() if k != "saddle") - counts["saddle"]
    return {
        "points": points,
        "counts": counts,
        "index_sum": index_sum,
        "poincare_hopf_ok": index_sum == 0,
    }


# ------------------------------------------------------------------ the descriptor dict


def describe_velocity(u, v, cfg: DescriptorConfig | None = None, spectral: bool = True) -> dict:
    cfg = cfg or DescriptorConfig()
    u = F.check_field(u, "u")
    v = F.check_field(v, "v")
    if u.shape != v.shape:
        raise F.FieldError(f"u has shape {u.shape} but v has shape {v.shape}")
    omega = F.vorticity(u, v, cfg.L)
    D = {"grid": list(u.shape), "L": cfg.L, "periodic": True}
    D.update(global_scalars(omega, u, v, cfg))
    r_div = F.divergence_residual(u, v, cfg.L)
    tol = cfg.div_tol_spectral if spectral else cfg.div_tol_observed
    D["divergence_residual"] = r_div
    D["incompressible"] = bool(r_div < tol)
    vort = detect_vortices(u, v, cfg)
    D["vortices"] = vort
    D["n_vortices"] = len(vort)
    D["n_ccw"] = sum(1 for x in vort if x["sign"] > 0)
    D["n_cw"] = sum(1 for x in vort if x["sign"] < 0)
    cp = critical_points(u, v, cfg)
    D["critical_points"] = cp["counts"]
    D["poincare_hopf_index_sum"] = cp["index_sum"]
    D["poincare_hopf_ok"] = cp["poincare_hopf_ok"]
    return D


def describe_vorticity(omega, cfg: DescriptorConfig | None = None) -> dict:
    cfg = cfg or DescriptorConfig()
    omega = F.check_field(omega, "omega")
    u, v = F.velocity_from_vorticity(omega, cfg.L)
    return describe_velocity(u, v, cfg)


def describe_sequence(frames, dt: float, cfg: DescriptorConfig | None = None) -> dict:
    """Descriptors of the last frame plus temporal trends over a (T, H, W) vorticity sequence."""
    cfg = cfg or DescriptorConfig()
    frames = F.check_field(frames, "frames", ndim=3)
    if frames.shape[0] < 1:
        raise F.FieldError("frames: empty sequence")
    D = describe_vorticity(frames[-1], cfg)
    Es, Zs = [], []
    for w in frames:
        u, v = F.velocity_from_vorticity(w, cfg.L)
        Es.append(0.5 * float(np.mean(u**2 + v**2)))
        Zs.append(0.5 * float(np.mean(w**2)))
    D["energy_series"] = Es
    D["enstrophy_series"] = Zs
    if len(frames) >= 2:
        D["dE_dt"] = (Es[-1] - Es[-2]) / dt
        D["dZ_dt"] = (Zs[-1] - Zs[-2]) / dt
        D["mean_vorticity_drift"] = float(np.mean(frames[-1]) - np.mean(frames[0]))
        prev = describe_vorticity(frames[-2], cfg)["vortices"]
        D["vortex_tracks"] = track_vortices(prev, D["vortices"], cfg.L)
    return D


def track_vortices(prev: list[dict], cur: list[dict], L: float = 1.0) -> dict:
    """Nearest-centroid matching on the torus; unmatched = births/deaths (mergers, splits)."""

    def dist(a, b):
        dx = abs(a["x"] - b["x"]) % L
        dy = abs(a["y"] - b["y"]) % L
        return math.hypot(min(dx, L - dx), min(dy, L - dy))

    matched = 0
    used = set()
    for a in prev:
        best = min(((dist(a, b), k) for k, b in enumerate(cur) if k not in used), default=None)
        if best is not None and best[0] < 0.1 * L:
            used.add(best[1])
            matched += 1
    return {"matched": matched, "born": len(cur) - matched, "lost": len(prev) - matched}


# ------------------------------------------------------------------ verbalizer


def _g(x: float) -> str:
    """3 significant digits, fixed formatting."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3g}"


def slope_text(slope: float) -> str:
    if not math.isfinite(slope):
        return "n/a"
    if abs(slope + 3) < 0.6:
        return "consistent with a 2-D enstrophy cascade (-3)"
    if abs(slope + 5 / 3) < 0.4:
        return "consistent with an energy cascade (-5/3)"
    return "steeper than -3 (smooth, viscous range)" if slope < -3 else "shallower than -5/3"


def compact(D: dict) -> dict:
    """The descriptor subset put in prompts (the JSON block beside the prose)."""
    keys = (
        "grid",
        "energy",
        "enstrophy",
        "palinstrophy",
        "mean_vorticity",
        "divergence_residual",
        "incompressible",
        "n_vortices",
        "n_ccw",
        "n_cw",
        "spectrum_slope",
        "high_band_energy_fraction",
        "poincare_hopf_index_sum",
        "dE_dt",
        "dZ_dt",
    )
    out = {k: D[k] for k in keys if k in D}
    out["critical_points"] = {k: v for k, v in D.get("critical_points", {}).items() if v}
    out["vortices"] = [
        {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in x.items()
            if k in ("x", "y", "sign", "circulation")
        }
        for x in D.get("vortices", [])[:8]
    ]
    return json.loads(
        json.dumps(out, default=float), parse_float=lambda s: float(f"{float(s):.4g}")
    )


def verbalize(D: dict, cfg: DescriptorConfig | None = None) -> str:
    """Deterministic text: fixed ordering, 3 significant digits (README, descriptors)."""
    cfg = cfg or DescriptorConfig()
    nx, ny = D["grid"]
    parts = [f"{nx}x{ny} periodic", f"E={_g(D['energy'])}, Z={_g(D['enstrophy'])}"]
    nv = D["n_vortices"]
    vt = f"{nv} vortices ({D['n_ccw']} counter-clockwise, {D['n_cw']} clockwise)"
    if nv:
        s = D["vortices"][0]
        sense = "counter-clockwise" if s["sign"] > 0 else "clockwise"
        vt += f", strongest {sense} at ({_g(s['x'])}, {_g(s['y'])}) with circulation {_g(s['circulation'])}"
    parts.append(vt)
    cp = D["critical_points"]
    parts.append(
        f"{cp['centre']} centres, {cp['saddle']} saddles"
        + (
            f", {sum(v for k, v in cp.items() if k not in ('centre', 'saddle'))} sources/sinks"
            if any(v for k, v in cp.items() if k not in ("centre", "saddle"))
            else ""
        )
        + f" (Poincare-Hopf index sum {D['poincare_hopf_index_sum']})"
    )
    parts.append(
        f"divergence residual {_g(D['divergence_residual'])} "
        + ("(incompressible)" if D["incompressible"] else "(divergent, not incompressible)")
    )
    parts.append(f"spectrum slope {_g(D['spectrum_slope'])}, {slope_text(D['spectrum_slope'])}")
    if "dE_dt" in D:
        parts.append(
            f"energy {'rising' if D['dE_dt'] > 0 else 'falling'} (dE/dt={_g(D['dE_dt'])}), "
            f"enstrophy {'rising' if D['dZ_dt'] > 0 else 'falling'} (dZ/dt={_g(D['dZ_dt'])})"
        )
    return "; ".join(parts) + "."


def raw_table(omega: np.ndarray, size: int = 8) -> str:
    """No-descriptor ablation: a down-sampled size x size table of raw values ("pixel values")."""
    omega = F.check_field(omega, "omega")
    nx, ny = omega.shape
    bx, by = nx // size, ny // size
    small = omega[: bx * size, : by * size].reshape(size, bx, size, by).mean(axis=(1, 3))
    rows = [" ".join(f"{x:.2g}" for x in row) for row in small]
    return f"raw vorticity, {size}x{size} block means (row = x index):\n" + "\n".join(rows)


def config_dict(cfg: DescriptorConfig) -> dict:
    return asdict(cfg)
