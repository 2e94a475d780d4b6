"""Verifiable question sets (kinds in benchmarks/pde/README.md): every answer is known by construction, not by a detector.

``build_questions(spec, seed) -> (rows, fields)``; each kind draws from its own seeded stream.
Kinds: divergence_free, vortex_count, vortex_rotation, saddle_count, energy_trend,
enstrophy_trend, equation, mass_conserved, viscosity.
"""

from __future__ import annotations

import zlib

import numpy as np

from benchmarks.pde.solvers import (
    VorticitySolver,
    burgers_run,
    forcing_field,
    grf_vorticity,
    heat_exact,
    tracer_run,
)
from benchmarks.pde.spectral import (
    PDEInputError,
    ddx,
    ddy,
    energy,
    enstrophy,
    velocity_from_vorticity,
)

KINDS = (
    "divergence_free",
    "vortex_count",
    "vortex_rotation",
    "saddle_count",
    "energy_trend",
    "enstrophy_trend",
    "equation",
    "mass_conserved",
    "viscosity",
)
EQUATION_CHOICES = ["heat", "advection_diffusion", "burgers", "ns2d", "beta_plane"]
QUESTION_TEXT = {
    "divergence_free": "Is this 2-D velocity field (u, v) divergence-free? Answer yes or no.",
    "vortex_count": "How many coherent vortices are in this vorticity field? Answer an integer.",
    "vortex_rotation": "Does the strongest vortex (largest |circulation|) rotate clockwise (cw) "
    "or counter-clockwise (ccw)?",
    "saddle_count": "How many saddle points (stagnation points with det(grad u) < 0) does this "
    "periodic velocity field have? Answer an integer.",
    "energy_trend": "Given the vorticity, forcing, viscosity and drag, will the kinetic energy "
    "go up or down over the next dt?",
    "enstrophy_trend": "Given the vorticity, forcing, viscosity and drag, will the enstrophy "
    "go up or down over the next dt?",
    "equation": "Which equation produced this pair of snapshots (q0 at t, q1 at t + dt)?",
    "viscosity": "These two vorticity snapshots (q0 at t, q1 at t + dt) come from unforced, "
    "drag-free 2-D Navier-Stokes. Estimate the kinematic viscosity nu.",
    "mass_conserved": "A passive scalar q is transported by the given velocity (u, v). Was its "
    "total mass conserved between q0 and q1 (no hidden source)? Answer yes or no.",
}


def _rng(seed: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(f"questions/{kind}".encode())])


def _grid(n: int):
    x = np.arange(n) / n
    return np.meshgrid(x, x, indexing="ij")


def _torus_d2(xx, yy, cx, cy):
    dx = (xx - cx + 0.5) % 1.0 - 0.5
    dy = (yy - cy + 0.5) % 1.0 - 0.5
    return dx**2 + dy**2


def gaussian_vortices(rng, n: int, k: int, r_range=(0.035, 0.06), strongest_ratio: float = 1.5):
    """K Gaussian vortices with random signs, radii and min separation 3 radii (zero-mean ω).

    Returns (omega, centres, signs, circulations); vortex 0 is the strongest (|Γ| at least
    ``strongest_ratio`` times every other one).
    """
    xx, yy = _grid(n)
    for _ in range(1000):
        radii = rng.uniform(*r_range, size=k)
        centres = rng.uniform(0, 1, size=(k, 2))
        ok = True
        for a in range(k):
            for b in range(a):
                d = np.sqrt(_torus_d2(centres[a, 0], centres[a, 1], centres[b, 0], centres[b, 1]))
                if d < 3 * max(radii[a], radii[b]):
                    ok = False
        if ok:
            break
    else:  # pragma: no cover - 1000 tries always suffice for k <= 6
        raise PDEInputError(f"vortex_count: could not place {k} separated vortices")
    signs = rng.choice([-1.0, 1.0], size=k)
    peaks = rng.uniform(1.0, 2.0, size=k)
    circ = peaks * 2 * np.pi * radii**2
    if k > 1:  # make vortex 0 clearly the strongest
        need = strongest_ratio * np.abs(circ[1:]).max()
        if circ[0] < need:
            peaks[0] *= need / circ[0]
            circ[0] = need
    omega = np.zeros((n, n))
    for c, r, s, p in zip(centres, radii, signs, peaks, strict=True):
        omega += s * p * np.exp(-_torus_d2(xx, yy, c[0], c[1]) / (2 * r**2))
    omega -= omega.mean()
    return omega, centres, signs, signs * circ


def _row(kind, i, answer, answer_type, fields, meta, choices=None, tolerance=None):
    qid = f"{kind}-{i:04d}"
    return {
        "id": qid,
        "kind": kind,
        "sample": i,
        "question": QUESTION_TEXT[kind],
        "answer": answer,
        "answer_type": answer_type,
        "choices": choices,
        "tolerance": tolerance,
        "fields": {name: f"{qid}__{name}" for name in fields},
        "meta": meta,
    }, {f"{qid}__{name}": np.asarray(a, dtype=np.float32) for name, a in fields.items()}


def _balanced_labels(choices, m, rng):
    """m labels cycling through ``choices`` (counts differ by at most one), randomly ordered."""
    return [choices[i % len(choices)] for i in rng.permutation(m)]


def _balanced(labels, n, rng):
    """Indices of n items with alternating classes (as balanced as the pool allows)."""
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    out = []
    while len(out) < n and any(pools):
        for p in pools:
            if p and len(out) < n:
                out.append(int(p.pop()))
    return out


def q_divergence_free(spec, seed):
    rng, n, m = _rng(seed, "divergence_free"), spec["grid"], spec["n_per_kind"]
    w = grf_vorticity(rng, m, n)
    u, v = velocity_from_vorticity(w)
    phi = grf_vorticity(rng, m, n)  # a random potential φ; its gradient is curl-free, divergent
    answers = _balanced_labels(["yes", "no"], m, rng)
    rows, fields = [], {}
    for i in range(m):
        ui, vi = u[i], v[i]
        ratio = None
        if answers[i] == "no":
            gx, gy = ddx(phi[i]), ddy(phi[i])
            ratio = float(rng.uniform(0.1, 1.0))
            scale = ratio * np.sqrt(np.mean(ui**2 + vi**2) / np.mean(gx**2 + gy**2))
            ui, vi = ui + scale * gx, vi + scale * gy
        r, f = _row(
            "divergence_free",
            i,
            str(answers[i]),
            "choice",
            {"u": ui, "v": vi},
            {
                "grid": {"N": n, "L": 1.0},
                "construction": "u = curl(psi) [+ r grad(phi)]",
                "potential_ratio": ratio,
            },
            choices=["yes", "no"],
        )
        rows.append(r)
        fields |= f
    return rows, fields


def q_vortices(spec, seed, kind):
    rng, n, m = _rng(seed, kind), spec["grid"], spec["n_per_kind"]
    kmax = int(spec["max_vortices"]) if kind == "vortex_count" else 4
    senses = _balanced_labels(["cw", "ccw"], m, rng)
    rows, fields = [], {}
    for i in range(m):
        k = int(rng.integers(1, kmax + 1))
        w, centres, signs, circ = gaussian_vortices(rng, n, k)
        if kind == "vortex_rotation" and (signs[0] > 0) != (senses[i] == "ccw"):
            w, signs, circ = -w, -signs, -circ  # balanced answers by construction
        u, v = velocity_from_vorticity(w)
        meta = {
            "grid": {"N": n, "L": 1.0},
            "construction": "superposed Gaussian vortices, min separation 3 radii",
        }
        if kind == "vortex_count":
            r, f = _row(kind, i, k, "int", {"omega": w, "u": u, "v": v}, meta, tolerance=0)
        else:
            meta |= {
                "strongest_centre": centres[0].tolist(),
                "strongest_circulation": float(circ[0]),
            }
            ans = "ccw" if signs[0] > 0 else "cw"
            r, f = _row(
                kind, i, ans, "choice", {"omega": w, "u": u, "v": v}, meta, choices=["cw", "ccw"]
            )
        rows.append(r)
        fields |= f
    return rows, fields


def q_saddle_count(spec, seed):
    rng, n, m = _rng(seed, "saddle_count"), spec["grid"], spec["n_per_kind"]
    xx, yy = _grid(n)
    rows, fields = [], {}
    for i in range(m):
        a, b = (int(c) for c in rng.integers(1, 4, size=2))
        x0, y0 = rng.uniform(0, 1, size=2)
        amp = float(rng.uniform(0.5, 2.0))
        # ψ = A sin(2πa(x−x0)) sin(2πb(y−y0)): 4ab centres and 4ab saddles on the unit torus
        sx, cx = np.sin(2 * np.pi * a * (xx - x0)), np.cos(2 * np.pi * a * (xx - x0))
        sy, cy = np.sin(2 * np.pi * b * (yy - y0)), np.cos(2 * np.pi * b * (yy - y0))
        u = amp * 2 * np.pi * b * sx * cy  # ∂ψ/∂y
        v = -amp * 2 * np.pi * a * cx * sy  # −∂ψ/∂x
        w = amp * 4 * np.pi**2 * (a**2 + b**2) * sx * sy
        r, f = _row(
            "saddle_count",
            i,
            4 * a * b,
            "int",
            {"u": u, "v": v, "omega": w},
            {
                "grid": {"N": n, "L": 1.0},
                "construction": f"cellular flow m={a}, n={b}",
                "n_centres": 4 * a * b,
            },
            tolerance=0,
        )
        rows.append(r)
        fields |= f
    return rows, fields


TREND_SETUPS = (  # (forcing, amplitude, nu, alpha)
    ("none", 0.0, 1e-3, 0.0),
    ("fno", 0.1, 1e-3, 0.0),
    ("kolmogorov", 0.5, 1e-3, 0.1),
    ("fno", 0.1, 1e-4, 0.1),
)


def q_trends(spec, seed):
    """energy_trend and enstrophy_trend from the same short NS runs (balanced up/down)."""
    rng, n, m = _rng(seed, "trends"), spec["sim_grid"], spec["n_per_kind"]
    dt_solver, dt = spec["dt"], spec["trend_dt"]
    pool = []  # (omega_t, forcing, nu, alpha, dE, dZ)
    per_setup = max(2, (3 * m) // len(TREND_SETUPS) + 1)
    for kind, amp, nu, alpha in TREND_SETUPS:
        f = forcing_field(kind, n, amp)
        solver = VorticitySolver(n, nu, dt_solver, alpha=alpha, forcing=f, precision="single")
        t0 = dt_solver * np.rint(rng.uniform(0.0, 4.0) / dt_solver)
        w0 = grf_vorticity(rng, per_setup, n) * rng.uniform(0.3, 3.0, size=(per_setup, 1, 1))
        traj = solver.run(w0, [0.0, t0, t0 + dt])[:, 1:]
        u, v = velocity_from_vorticity(traj)
        e, z = energy(u, v), enstrophy(traj)
        for j in range(per_setup):
            pool.append((traj[j, 0], f, nu, alpha, kind, e[j, 1] - e[j, 0], z[j, 1] - z[j, 0]))
    rows, fields = [], {}
    for kind, col in (("energy_trend", 5), ("enstrophy_trend", 6)):
        labels = ["up" if p[col] > 0 else "down" for p in pool]
        for i, idx in enumerate(_balanced(labels, m, rng)):
            w, f, nu, alpha, fk, de, dz = pool[idx]
            r, fl = _row(
                kind,
                i,
                labels[idx],
                "choice",
                {"omega": w, "forcing": f},
                {
                    "grid": {"N": n, "L": 1.0},
                    "equation": "ns2d",
                    "nu": nu,
                    "alpha": alpha,
                    "forcing": fk,
                    "dt": dt,
                    "delta": float(de if col == 5 else dz),
                },
                choices=["up", "down"],
            )
            rows.append(r)
            fields |= fl
    return rows, fields


def q_equation(spec, seed):
    rng, n, m = _rng(seed, "equation"), spec["sim_grid"], spec["n_per_kind"]
    dt_solver, dt = spec["dt"], spec["trend_dt"]
    labels = _balanced_labels(EQUATION_CHOICES, m, rng)
    rows, fields = [], {}
    xx, yy = _grid(n)
    for i, lab in enumerate(labels):
        if lab == "heat":
            q0 = grf_vorticity(rng, 1, n)[0]
            q1 = heat_exact(q0, float(rng.uniform(2e-3, 1e-2)), dt)
        elif lab == "advection_diffusion":
            q0 = grf_vorticity(rng, 1, n)[0]
            u, v = velocity_from_vorticity(grf_vorticity(rng, 1, n)[0] * 20)
            q1 = tracer_run(q0, u, v, 1e-3, [dt], dt_solver)[0]
        elif lab == "burgers":
            x = np.arange(4 * n) * 2 * np.pi / (4 * n)
            kk = np.arange(1, 4)
            u0 = (
                rng.normal(size=(3, 1)) * np.sin(kk[:, None] * x + rng.uniform(0, 6.3, (3, 1)))
            ).sum(0)
            q0, q1 = burgers_run(u0, float(rng.uniform(0.02, 0.1)), [0.0, dt], 1e-3)
        else:
            beta = 10.0 if lab == "beta_plane" else 0.0
            solver = VorticitySolver(n, 1e-3, dt_solver, beta=beta, precision="single")
            q0, q1 = solver.run(grf_vorticity(rng, 1, n)[0] * 4, [0.0, dt])
        r, f = _row(
            "equation",
            i,
            lab,
            "choice",
            {"q0": q0, "q1": q1},
            {"grid": {"N": int(np.shape(q0)[-1]), "dims": int(np.ndim(q0))}, "dt": dt},
            choices=list(EQUATION_CHOICES),
        )
        rows.append(r)
        fields |= f
    return rows, fields


def q_mass_conserved(spec, seed):
    rng, n, m = _rng(seed, "mass_conserved"), spec["sim_grid"], spec["n_per_kind"]
    dt_solver, dt = spec["dt"], spec["trend_dt"]
    xx, yy = _grid(n)
    answers = _balanced_labels(["yes", "no"], m, rng)
    rows, fields = [], {}
    for i, ans in enumerate(answers):
        q0 = np.abs(grf_vorticity(rng, 1, n)[0]) + 0.2  # positive concentration
        u, v = velocity_from_vorticity(grf_vorticity(rng, 1, n)[0] * 20)
        src = None
        if ans == "no":  # hidden localized source: 5-30 % of the mass over dt
            c = rng.uniform(0, 1, size=2)
            g = np.exp(-_torus_d2(xx, yy, c[0], c[1]) / (2 * 0.05**2))
            frac = rng.uniform(0.05, 0.3) * rng.choice([-1.0, 1.0])
            src = g / g.sum() * frac * q0.sum() / dt
        q1 = tracer_run(q0, u, v, 1e-3, [dt], dt_solver, source=src)[0]
        r, f = _row(
            "mass_conserved",
            i,
            ans,
            "choice",
            {"q0": q0, "q1": q1, "u": u, "v": v},
            {
                "grid": {"N": n, "L": 1.0},
                "kappa": 1e-3,
                "dt": dt,
                "mass_change": float((q1.sum() - q0.sum()) / q0.sum()),
            },
            choices=["yes", "no"],
        )
        rows.append(r)
        fields |= f
    return rows, fields


def q_viscosity(spec, seed):
    """Unforced, drag-free NS pairs at a log-uniform ν in [1e-3, 1e-2]; answer ν (10 % tolerance)."""
    rng, n, m = _rng(seed, "viscosity"), spec["sim_grid"], spec["n_per_kind"]
    dt_solver = spec["dt"]
    dt = 2 * dt_solver
    rows, fields = [], {}
    for i in range(m):
        nu = float(10 ** rng.uniform(-3, -2))
        solver = VorticitySolver(n, nu, dt_solver, precision="single")
        q0, q1 = solver.run(grf_vorticity(rng, 1, n)[0] * rng.uniform(1.0, 4.0), [dt, 2 * dt])
        r, f = _row(
            "viscosity",
            i,
            nu,
            "float",
            {"q0": q0, "q1": q1},
            {
                "grid": {"N": n, "L": 1.0},
                "equation": "ns2d",
                "forcing": "none",
                "alpha": 0.0,
                "dt": dt,
            },
            tolerance=0.1,
        )
        rows.append(r)
        fields |= f
    return rows, fields


def build_questions(spec: dict, seed: int) -> tuple[list[dict], dict[str, np.ndarray]]:
    unknown = [k for k in spec["kinds"] if k not in KINDS]
    if unknown:
        raise PDEInputError(f"questions.kinds: unknown kinds {unknown} (known: {list(KINDS)})")
    rows, fields = [], {}
    done_trends = False
    for kind in spec["kinds"]:
        if kind in ("energy_trend", "enstrophy_trend"):
            if done_trends:
                continue
            r, f = q_trends(spec, seed)
            r = [x for x in r if x["kind"] in spec["kinds"]]
            done_trends = True
        elif kind in ("vortex_count", "vortex_rotation"):
            r, f = q_vortices(spec, seed, kind)
        else:
            r, f = {
                "divergence_free": q_divergence_free,
                "saddle_count": q_saddle_count,
                "equation": q_equation,
                "mass_conserved": q_mass_conserved,
                "viscosity": q_viscosity,
            }[kind](spec, seed)
        rows += r
        fields |= {k: a for k, a in f.items() if k.split("__")[0] in {x["id"] for x in r}}
    return rows, fields
