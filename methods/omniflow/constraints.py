"""PG-CoT constraint library: dynamic injection + reflexive verification + optional repair (README, PG-CoT).

A constraint is {id, applies_if(kind, regime), statement(ctx) with numbers from the descriptors,
check(answer, ctx) -> normalised residual, tolerance, optional repair(answer, ctx)}. ``ctx`` holds
the descriptor dict ``D``, the item's meta and the tool outputs (fits, budgets) of the controller.
Question constraints state the law and the definitions (tolerances, detector rules), never the
measured value that decides the item nor the answer: injecting the answer would make "full"
measure copying. For question answers the residual is 0 when the answer agrees with the fact
the constraint states and 1 (or the relative gap) when not; for forecasts it is the physical
residual of the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from methods.omniflow import fields as F


@dataclass(frozen=True)
class Constraint:
    id: str
    kinds: tuple[str, ...]
    regimes: tuple[str, ...] | None  # None: every regime
    statement: Callable[[dict], str]
    check: Callable[[object, dict], float]
    tol: float
    repair: Callable[[object, dict], object] | None = None

    def applies(self, kind: str, regime: str | None) -> bool:
        return kind in self.kinds and (self.regimes is None or regime in self.regimes)


def _g(x) -> str:
    return f"{x:.3g}" if isinstance(x, int | float) and math.isfinite(x) else str(x)


def _norm(a) -> str:
    return str(a).strip().lower()


def _int_gap(a, target: int) -> float:
    try:
        a = int(a)
    except (TypeError, ValueError):
        return 1.0
    return abs(a - target) / max(1, abs(target))


def _fact(expected_key: str) -> Callable[[object, dict], float]:
    return lambda a, ctx: 0.0 if _norm(a) == _norm(ctx["facts"][expected_key]) else 1.0


# ------------------------------------------------------------------ facts the controller derives

EQUATION_ORDER = ("heat", "advection_diffusion", "burgers", "ns2d", "beta_plane")


def pick_equation(res: dict, margin: float = 0.5) -> str:
    """Simplest model whose residual is within ``margin`` x of the best one plus 1e-3."""
    best = min(res.values())
    for name in EQUATION_ORDER:
        if name in res and res[name] <= best * (1 + margin) + 1e-3:
            return name
    return min(res, key=res.get)


def energy_budget(
    D: dict,
    meta: dict,
    forcing: np.ndarray | None,
    psi: np.ndarray | None,
    omega: np.ndarray | None,
) -> dict:
    """dE/dt = <psi f> - 2 nu Z - 2 alpha E ; dZ/dt = <omega f> - 2 nu P - 2 alpha Z (README, (E5)-(E6))."""
    nu, alpha = float(meta.get("nu") or 0.0), float(meta.get("alpha") or 0.0)
    pf = float(np.mean(psi * forcing)) if forcing is not None and psi is not None else 0.0
    wf = float(np.mean(omega * forcing)) if forcing is not None and omega is not None else 0.0
    dE = pf - 2 * nu * D["enstrophy"] - 2 * alpha * D["energy"]
    dZ = wf - 2 * nu * D["palinstrophy"] - 2 * alpha * D["enstrophy"]
    return {
        "dE_dt": dE,
        "dZ_dt": dZ,
        "injection_E": pf,
        "injection_Z": wf,
        "nu": nu,
        "alpha": alpha,
    }


# ------------------------------------------------------------------ the library

QA_CONSTRAINTS = [
    Constraint(
        "incompressibility",
        ("divergence_free",),
        None,
        lambda c: (
            f"div u = 0 for an incompressible flow: a field counts as divergence-free when its "
            f"residual r_div = ||div u|| / ||grad u||_F is below {_g(c['div_tol'])}"
        ),
        _fact("divergence_free"),
        0.0,
        lambda a, c: c["facts"]["divergence_free"],
    ),
    Constraint(
        "vortex_count",
        ("vortex_count",),
        None,
        lambda c: (
            "every Okubo-Weiss core (W = s_n^2 + s_s^2 - omega^2 < -0.2 std W, one connected "
            "region) is one vortex; cores split by the periodic edge are one vortex"
        ),
        lambda a, c: _int_gap(a, c["facts"]["vortex_count"]),
        0.0,
        lambda a, c: c["facts"]["vortex_count"],
    ),
    Constraint(
        "rotation_sense",
        ("vortex_rotation",),
        None,
        lambda c: (
            "omega > 0 is counter-clockwise: a core's sense is the sign of its circulation "
            "(the integral of omega over the core); the strongest core has the largest |circulation|"
        ),
        _fact("vortex_rotation"),
        0.0,
        lambda a, c: c["facts"]["vortex_rotation"],
    ),
    Constraint(
        "poincare_hopf",
        ("saddle_count",),
        None,
        lambda c: (
            "on a torus the Poincare-Hopf index sum is 0: #saddles = #centres + #foci + #nodes"
        ),
        lambda a, c: _int_gap(a, c["facts"]["saddle_count"]),
        0.0,
        lambda a, c: c["facts"]["saddle_count"],
    ),
    Constraint(
        "energy_budget_sign",
        ("energy_trend",),
        None,
        lambda c: (
            f"dE/dt = <psi f> - 2 nu Z - 2 alpha E with nu = {_g(c['budget']['nu'])}, "
            f"alpha = {_g(c['budget']['alpha'])}; the energy rises when the forcing's injection "
            f"<psi f> exceeds the dissipation"
        ),
        _fact("energy_trend"),
        0.0,
        lambda a, c: c["facts"]["energy_trend"],
    ),
    Constraint(
        "enstrophy_budget_sign",
        ("enstrophy_trend",),
        None,
        lambda c: (
            f"dZ/dt = <omega f> - 2 nu P - 2 alpha Z with nu = {_g(c['budget']['nu'])}, "
            f"alpha = {_g(c['budget']['alpha'])}; the enstrophy rises when the injection "
            f"<omega f> exceeds the dissipation"
        ),
        _fact("enstrophy_trend"),
        0.0,
        lambda a, c: c["facts"]["enstrophy_trend"],
    ),
    Constraint(
        "mass_conservation",
        ("mass_conserved",),
        None,
        lambda c: (
            f"sum q(t+dt) = sum q(t) without sources: mass counts as conserved when the relative "
            f"drift |sum q(t+dt) - sum q(t)| / sum |q(t)| is below {_g(c['mass_tol'])}"
        ),
        _fact("mass_conserved"),
        0.0,
        lambda a, c: c["facts"]["mass_conserved"],
    ),
    Constraint(
        "equation_fit",
        ("equation",),
        None,
        lambda c: (
            "the equation is the simplest candidate (heat < advection_diffusion < burgers < ns2d "
            "< beta_plane) whose least-squares residual for dq/dt is within 1.5x of the best "
            "one's (+ 1e-3)"
        ),
        _fact("equation"),
        0.0,
        lambda a, c: c["facts"]["equation"],
    ),
]


def _forecast_fields(a, ctx):
    return ctx["tool"]["forecast"]  # (steps, n, n) vorticity from the executed program


def _mean_vort_residual(a, ctx) -> float:
    w = _forecast_fields(a, ctx)
    return float(np.abs(w.mean(axis=(-2, -1))).max() / max(float(np.sqrt(np.mean(w**2))), 1e-30))


def _div_residual(a, ctx) -> float:
    u, v = ctx["tool"]["forecast_u"], ctx["tool"]["forecast_v"]
    return max(F.divergence_residual(uu, vv, ctx["L"]) for uu, vv in zip(u, v, strict=True))


def _budget_residual(a, ctx) -> float:
    """|dE/dt(pred, first step) - budget(fitted params)| / (|<psi f>| + 2 nu Z + eps)."""
    return float(ctx["tool"]["budget_residual"])


def _spectral_residual(a, ctx) -> float:
    hb = ctx["tool"]["forecast_high_band"]
    ref = ctx["D"]["high_band_energy_fraction"]
    return max(0.0, hb - ref) / max(ref, 1e-6)


FORECAST_CONSTRAINTS = [
    Constraint(
        "incompressibility",
        ("forecast",),
        None,
        lambda c: (
            "div u = 0 for every predicted frame (observed r_div = "
            f"{_g(c['D']['divergence_residual'])})"
        ),
        _div_residual,
        1e-6,
        "leray",
    ),
    Constraint(
        "zero_mean_vorticity",
        ("forecast",),
        None,
        lambda c: f"<omega> = 0 on a torus (observed mean {_g(c['D']['mean_vorticity'])})",
        _mean_vort_residual,
        1e-6,
        "subtract_mean",
    ),
    Constraint(
        "energy_budget",
        ("forecast",),
        ("ns2d_forced", "ns2d_decaying", "beta_plane"),
        lambda c: (
            "dE/dt = <psi f> - 2 nu Z - 2 alpha E with the fitted nu = "
            f"{_g(c['fit']['nu'])}, alpha = {_g(c['fit']['drag'])}, observed E = {_g(c['D']['energy'])}, "
            f"Z = {_g(c['D']['enstrophy'])} => dE/dt = {_g(c['fit_budget']['dE_dt'])}"
        ),
        _budget_residual,
        5e-2,
        None,
    ),
    Constraint(
        "spectral_plausibility",
        ("forecast",),
        None,
        lambda c: (
            "no growth of the top-third-band energy fraction (observed "
            f"{_g(c['D']['high_band_energy_fraction'])})"
        ),
        _spectral_residual,
        0.5,
        None,
    ),
]

LIBRARY = {"qa": QA_CONSTRAINTS, "forecast": FORECAST_CONSTRAINTS}


def constraint_ids() -> set[str]:
    return {c.id for group in LIBRARY.values() for c in group}


def select(kind: str, regime: str | None) -> list[Constraint]:
    group = FORECAST_CONSTRAINTS if kind == "forecast" else QA_CONSTRAINTS
    return [c for c in group if c.applies(kind, regime)]
