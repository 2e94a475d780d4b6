"""PG-CoT controller (README, PG-CoT: the abstract's Physics-Guided Chain-of-Thought): regime
step, constraint injection, JSON answer, reflexive verification with feedback for up to R rounds,
optional repair, and a full reasoning report.

Ablations are flags of ``PGCoTConfig``: ``descriptors=False`` (raw 8x8 table instead of
descriptors), ``inject=False`` (constraints not listed in the prompt), ``verify=False`` (R = 1,
no verification feedback; the final answer is still checked so violations can be counted).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from methods.omniflow import constraints as C
from methods.omniflow import descriptors as Dm
from methods.omniflow import fields as F
from methods.omniflow import physics as P
from methods.omniflow.backends import Backend

REGIMES = ("ns2d_forced", "ns2d_decaying", "beta_plane", "heat", "advection_diffusion", "burgers")
EQUATIONS = ("heat", "advection_diffusion", "burgers", "ns2d", "beta_plane")


@dataclass
class PGCoTConfig:
    rounds: int = 3  # R
    descriptors: bool = True
    inject: bool = True
    verify: bool = True
    repair: bool = False
    regime_step: bool = True
    max_new_tokens: int = 96
    raw_table_size: int = 8
    mass_tol: float = 1e-4
    budget_tol: float = 5e-2
    inner_dt: float | None = None  # solver step of the forecast tool; None: CFL 0.5, at most 0.1
    spectral_data: bool = (
        False  # question fields are stored float32 "observed" data: r_div tol 1e-2
    )
    descriptor: dict = field(default_factory=dict)  # DescriptorConfig overrides

    def desc_cfg(self) -> Dm.DescriptorConfig:
        return Dm.DescriptorConfig(**self.descriptor)


# ------------------------------------------------------------------ analysis (Phi + symbolic tools)


def _fmt(x):
    return float(f"{x:.4g}") if isinstance(x, float) and math.isfinite(x) else x


def _forcing(item: dict, n: int) -> np.ndarray | None:
    f = item["fields"].get("forcing")
    if f is not None:
        return np.asarray(f, dtype=np.float64)
    name = (item.get("meta") or {}).get("forcing")
    if isinstance(name, str) and name in P.FORCING_LIBRARY:
        amp = float(item["meta"].get("forcing_amplitude", 1.0))
        return amp * P.forcing_field(name, n)
    return None


def _equation_fit(q0: np.ndarray, q1: np.ndarray, dt: float, L: float, extra: dict) -> dict:
    """Relative least-squares residual of each candidate PDE on a snapshot pair."""
    qm, dq = 0.5 * (q0 + q1), (q1 - q0) / dt
    if q0.ndim == 1:
        k = 2 * np.pi * np.fft.fftfreq(q0.size, d=L / q0.size)
        d1 = lambda f: np.real(np.fft.ifft(1j * k * np.fft.fft(f)))  # noqa: E731
        d2 = lambda f: np.real(np.fft.ifft(-(k**2) * np.fft.fft(f)))  # noqa: E731
        cands = {"heat": [d2(qm)], "burgers": [d2(qm), -qm * d1(qm)]}
    else:
        lap = F.laplacian(qm, L)
        u, v = F.velocity_from_vorticity(qm, L)
        selfadv = -(u * F.ddx(qm, L) + v * F.ddy(qm, L))
        forc = [P.forcing_field(m, qm.shape[0], L) for m in P.FORCING_LIBRARY]
        cands = {
            "heat": [lap],
            "ns2d": [lap, selfadv, -qm] + forc,
            "beta_plane": [lap, selfadv, -qm, -v] + forc,
        }
        if "u" in extra and "v" in extra:
            cands["advection_diffusion"] = [
                lap,
                -(extra["u"] * F.ddx(qm, L) + extra["v"] * F.ddy(qm, L)),
            ]
    out = {}
    b = dq.ravel()
    for name, cols in cands.items():
        A = np.stack([c.ravel() for c in cols], axis=1)
        coef, *_ = np.linalg.lstsq(A, b, rcond=None)
        out[name] = float(np.linalg.norm(A @ coef - b) / max(np.linalg.norm(b), 1e-30))
    return out


_pick_equation = C.pick_equation


def analyse(item: dict, cfg: PGCoTConfig) -> dict:
    """Run Phi and the symbolic tools on an item: descriptors D, facts, prompt data block, raw table."""
    dcfg = cfg.desc_cfg()
    kind, meta, fl = item["kind"], item.get("meta") or {}, item["fields"]
    L = float((meta.get("grid") or {}).get("L", dcfg.L))
    ctx = {
        "kind": kind,
        "meta": meta,
        "L": L,
        "facts": {},
        "div_tol": dcfg.div_tol_spectral if cfg.spectral_data else dcfg.div_tol_observed,
        "mass_tol": cfg.mass_tol,
    }
    extra: dict = {}
    if kind in ("divergence_free", "saddle_count") and "u" in fl:
        D = Dm.describe_velocity(fl["u"], fl["v"], dcfg, spectral=cfg.spectral_data)
        raw_src = F.vorticity(np.asarray(fl["u"], float), np.asarray(fl["v"], float), L)
    elif kind == "forecast":
        frames = np.asarray(fl["omega"], dtype=np.float64)
        dt = float(meta["dt"])
        D = Dm.describe_sequence(frames, dt, dcfg)
        fits = [dict(f) for f in item.get("exemplar_fits") or []]
        extra["exemplar_fits"] = [_round_fit(f) for f in fits]
        if frames.shape[0] >= 2:  # the observed frames themselves, when there are pairs
            qfit = P.fit_vorticity_equation(frames, dt, L)
            extra["fit"] = _round_fit(qfit)
            fits = [qfit] + fits
        if not fits:
            raise F.FieldError("forecast: one input frame and no exemplars: nothing to fit")
        ctx["fit"] = P.combine_fits([_round_fit(f) for f in fits])
        ctx["fit_budget"] = fitted_budget(frames[-1], ctx["fit"], L)
        raw_src = frames[-1]
    elif kind in ("equation", "mass_conserved"):
        q0, q1 = np.asarray(fl["q0"], np.float64), np.asarray(fl["q1"], np.float64)
        for nm, a in (("q0", q0), ("q1", q1)):
            F.check_field(a, nm, ndim=a.ndim, min_size=8)
            if a.ndim not in (1, 2):
                raise F.FieldError(f"{nm}: expected a 1-D or 2-D array, got shape {a.shape}")
        D = Dm.describe_vorticity(q1, dcfg) if q1.ndim == 2 else {"grid": list(q1.shape)}
        drift = float(abs(q1.sum() - q0.sum()) / max(np.abs(q0).sum(), 1e-30))
        extra["mass_drift"] = _fmt(drift)
        extra["mass_tol"] = cfg.mass_tol
        ctx["facts"]["mass_drift"] = drift
        ctx["facts"]["mass_conserved"] = "yes" if drift < cfg.mass_tol else "no"
        res = _equation_fit(
            q0,
            q1,
            float(meta.get("dt", 1.0)),
            float(meta.get("L", L)),
            {k: np.asarray(fl[k], float) for k in ("u", "v") if k in fl},
        )
        extra["equation_residuals"] = {k: _fmt(v) for k, v in res.items()}
        # the residuals are the tool's measurement; the pick (the answer) stays out of the prompt
        ctx["facts"]["equation"] = _pick_equation(res)
        ctx["facts"]["equation_residuals"] = res
        raw_src = q1 if q1.ndim == 2 else np.tile(q1[:: max(1, q1.size // 8)][:8], (8, 1))
    else:
        omega = fl.get("omega")
        if omega is None:
            omega = F.vorticity(np.asarray(fl["u"], float), np.asarray(fl["v"], float), L)
        D = Dm.describe_vorticity(omega, dcfg)
        raw_src = np.asarray(omega, np.float64)
        if kind in ("energy_trend", "enstrophy_trend"):
            psi = F.streamfunction(raw_src, L)
            b = C.energy_budget(
                D, meta, _forcing(item, raw_src.shape[0]), psi, raw_src - raw_src.mean()
            )
            ctx["budget"] = b
            extra["budget_dE_dt"], extra["budget_dZ_dt"] = _fmt(b["dE_dt"]), _fmt(b["dZ_dt"])
            ctx["facts"]["energy_trend"] = "up" if b["dE_dt"] > 0 else "down"
            ctx["facts"]["enstrophy_trend"] = "up" if b["dZ_dt"] > 0 else "down"
    ctx["D"] = D
    if "incompressible" in D:
        ctx["facts"]["divergence_free"] = "yes" if D["incompressible"] else "no"
        ctx["facts"]["vortex_count"] = D["n_vortices"]
        ctx["facts"]["vortex_rotation"] = (
            ("ccw" if D["vortices"][0]["sign"] > 0 else "cw") if D["vortices"] else "ccw"
        )
        ctx["facts"]["strongest_circulation"] = (
            D["vortices"][0]["circulation"] if D["vortices"] else 0.0
        )
        ctx["facts"]["saddle_count"] = sum(
            v for k, v in D["critical_points"].items() if k != "saddle"
        )
    ctx["field2d"] = raw_src if raw_src.ndim == 2 else None  # rendered for image input
    ctx["text"] = Dm.verbalize(D, dcfg) if "incompressible" in D else f"{D['grid']} grid"
    ctx["data"] = {**(Dm.compact(D) if "incompressible" in D else {"grid": D["grid"]}), **extra}
    ctx["raw"] = (
        Dm.raw_table(raw_src, cfg.raw_table_size)
        if raw_src.ndim == 2 and min(raw_src.shape) >= cfg.raw_table_size
        else ""
    )
    return ctx


def _round_fit(fit: dict) -> dict:
    return {
        k: (
            _fmt(float(v)) if not isinstance(v, dict) else {a: _fmt(float(b)) for a, b in v.items()}
        )
        for k, v in fit.items()
        if k != "fit_residual"
    }


def fitted_budget(omega: np.ndarray, fit: dict, L: float) -> dict:
    n = omega.shape[0]
    f = sum(c * P.forcing_field(m, n, L) for m, c in fit["forcing"].items())
    D = Dm.global_scalars(omega, *F.velocity_from_vorticity(omega, L), Dm.DescriptorConfig(L=L))
    return C.energy_budget(
        D, {"nu": fit["nu"], "alpha": fit["drag"]}, f, F.streamfunction(omega, L), omega
    )


# ------------------------------------------------------------------ prompts


def build_prompt(
    item: dict,
    ctx: dict,
    cfg: PGCoTConfig,
    step: str,
    constraints: list,
    feedback: str | None,
    regime: str | None,
) -> str:
    lines = [
        f"### task: {item['kind']}",
        f"### step: {step}",
        f"### question: {item.get('question', '')}",
    ]
    if cfg.descriptors:
        lines += [
            f"### descriptors: {ctx['text']}",
            f"### data: {json.dumps(ctx['data'], sort_keys=True)}",
        ]
    else:
        lines += [f"### raw:\n{ctx['raw']}"]
    if step == "regime":
        lines += [
            f"### regimes: {', '.join(REGIMES)}",
            '### answer with one JSON object: {"regime": "<one of the regimes>"}',
        ]
        return "\n".join(lines)
    if regime:
        lines.append(f"### regime: {regime}")
    if cfg.inject and constraints:
        stmts = [
            f"[{c.id}] "
            + (c.statement(ctx) if cfg.descriptors else "(law only; no descriptor numbers)")
            for c in constraints
        ]
        lines.append("### constraints:\n" + "\n".join(stmts))
    if feedback:
        lines.append(f"### feedback: {feedback}")
    lines.append('### answer with one JSON object: {"answer": ..., "constraints_checked": [...]}')
    return "\n".join(lines)


_JSON_RE = re.compile(r"\{.*\}", re.S)


def parse_answer(text: str, key: str = "answer") -> tuple[object, str | None]:
    """(value, error): the first JSON object in the text; error when none or the key is missing."""
    m = _JSON_RE.search(text or "")
    if not m:
        return None, "no JSON object in the answer"
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg})"
    if not isinstance(obj, dict) or key not in obj:
        return None, f"JSON object without key '{key}'"
    unknown = [c for c in obj.get("constraints_checked", []) or [] if c not in C.constraint_ids()]
    if unknown:
        return None, f"unknown constraint(s) {unknown}"
    return obj[key], None


# ------------------------------------------------------------------ forecast tools


def execute_forecast(program, ctx: dict, item: dict, cfg: PGCoTConfig) -> None:
    """Step 4 tool: run the program, then the quantities the forecast constraints check."""
    if not isinstance(program, dict):
        raise ValueError("forecast answer must be a physics program object")
    meta = item["meta"]
    frames = np.asarray(item["fields"]["omega"], np.float64)
    w = P.run_program(
        program, frames[-1], int(meta["n_rollout"]), float(meta["dt"]), ctx["L"], cfg.inner_dt
    )
    store_forecast(w, ctx)


def store_forecast(w: np.ndarray, ctx: dict) -> None:
    if not np.isfinite(w).all():
        raise ValueError("the program's forecast has non-finite values")
    L = ctx["L"]
    uv = [F.velocity_from_vorticity(x, L) for x in w]
    last = np.asarray(ctx["_last_frame"])
    fit, b0 = ctx["fit"], ctx["fit_budget"]
    dt = float(ctx["meta"]["dt"])
    E = [0.5 * float(np.mean(sum(c**2 for c in F.velocity_from_vorticity(last, L))))]
    E += [0.5 * float(np.mean(a**2 + b**2)) for a, b in uv[:2]]
    b = [b0["dE_dt"]] + [fitted_budget(x, fit, L)["dE_dt"] for x in w[:2]]
    if len(E) == 3:  # Simpson's rule over [t, t + 2 dt]: E2 - E0 = (2dt/6)(b0 + 4 b1 + b2)
        gap, span = (E[2] - E[0]) - (2 * dt / 6) * (b[0] + 4 * b[1] + b[2]), 2 * dt
    else:  # trapezoid over one step
        gap, span = (E[1] - E[0]) - dt / 2 * (b[0] + b[1]), dt
    scale = (
        abs(b0["injection_E"])
        + 2 * abs(fit["nu"]) * ctx["D"]["enstrophy"]
        + 2 * abs(fit["drag"]) * E[0]
        + 1e-12
    )
    spec = Dm.energy_spectrum(*uv[-1])
    kmax = w.shape[-1] // 2
    k = np.arange(len(spec))
    ctx["tool"] = {
        "forecast": w,
        "forecast_u": np.stack([a for a, _ in uv]),
        "forecast_v": np.stack([b for _, b in uv]),
        "budget_residual": abs(gap / span) / scale,
        "forecast_high_band": float(
            spec[k > (2 * kmax) // 3].sum() / max(spec[(k >= 1) & (k <= kmax)].sum(), 1e-30)
        ),
    }


def repair_forecast(ctx: dict, cons: list) -> None:
    w = ctx["tool"]["forecast"]
    w = w - w.mean(
        axis=(-2, -1), keepdims=True
    )  # zero mean vorticity; velocity from omega is Leray-projected
    store_forecast(w, ctx)


# ------------------------------------------------------------------ the loop


def pg_cot(item: dict, backend: Backend, cfg: PGCoTConfig) -> dict:
    """One item through PG-CoT; returns the reasoning report (never raises on a bad answer)."""
    report = {
        "id": item["id"],
        "kind": item["kind"],
        "backend": backend.describe(),
        "config": asdict(cfg),
        "rounds": [],
    }
    try:
        ctx = analyse(item, cfg)
    except (ValueError, KeyError) as e:  # FieldError is a ValueError: bad input is a failed item
        report.update(
            status="failed",
            error=f"analysis: {e}",
            answer=None,
            n_rounds=0,
            violated=True,
            violated_first=True,
        )
        return report
    if item["kind"] == "forecast":
        ctx["_last_frame"] = np.asarray(item["fields"]["omega"])[-1]
    report["descriptors_text"] = ctx["text"]
    if getattr(backend, "image_input", False):  # multimodal: the field as a PNG with each prompt
        from methods.omniflow.render import render_png

        field = ctx.get("field2d")
        backend.set_images([] if field is None else [render_png(field)])
    regime = None
    if cfg.regime_step:
        prompt = build_prompt(item, ctx, cfg, "regime", [], None, None)
        raw = backend.generate(prompt, 24)
        regime, err = parse_answer(raw, "regime")
        regime = regime if regime in REGIMES else None
        report["regime_step"] = {"prompt": prompt, "raw": raw, "regime": regime, "error": err}
    cons = C.select(item["kind"], regime or _default_regime(item))
    report["regime"] = regime
    report["constraints"] = [
        {"id": c.id, "statement": c.statement(ctx), "tol": c.tol} for c in cons
    ]
    rounds = cfg.rounds if cfg.verify else 1
    feedback, answer, residuals, first_violated = None, None, None, None
    for r in range(rounds):
        prompt = build_prompt(item, ctx, cfg, "answer", cons, feedback, regime)
        raw = backend.generate(prompt, cfg.max_new_tokens)
        rec = {"round": r + 1, "raw": raw}
        if r == 0:
            rec["prompt"] = prompt
        value, err = parse_answer(raw)
        if err is None and item["kind"] == "forecast":
            try:
                execute_forecast(value, ctx, item, cfg)
            except (ValueError, TypeError, KeyError) as e:
                err = f"program failed: {e}"
        if err is not None:
            rec["error"] = err
            feedback = f"round {r + 1} failed: {err}. Answer with one JSON object using only the listed constraint ids."
            rec["feedback"] = feedback
            report["rounds"].append(rec)
            if first_violated is None:
                first_violated = True
            continue
        answer = value
        residuals = {c.id: _safe_check(c, answer, ctx) for c in cons}
        viol = [c for c in cons if residuals[c.id] > c.tol]
        rec.update(answer=_jsonable(answer), residuals=residuals, violated=[c.id for c in viol])
        if first_violated is None:
            first_violated = bool(viol)
        report["rounds"].append(rec)
        if not viol:
            break
        feedback = "; ".join(
            f"constraint {c.id} violated: residual {residuals[c.id]:.3g} > tolerance {c.tol:.3g}"
            for c in viol
        )
        rec["feedback"] = feedback
        if not cfg.verify:
            break
    report["n_rounds"] = len(report["rounds"])
    report["violated_first"] = bool(first_violated)
    if answer is None:
        report.update(
            status="failed", error=report["rounds"][-1].get("error"), answer=None, violated=True
        )
        return report
    viol = [c.id for c in cons if residuals[c.id] > c.tol]
    status = "verified" if not viol else "unverified"
    if viol and cfg.repair:
        if item["kind"] == "forecast":
            repair_forecast(ctx, cons)
        else:
            for c in cons:
                if c.id in viol and callable(c.repair):
                    answer = c.repair(answer, ctx)
        residuals = {c.id: _safe_check(c, answer, ctx) for c in cons}
        viol = [c.id for c in cons if residuals[c.id] > c.tol]
        status = "repaired"
    report.update(
        status=status,
        answer=_jsonable(answer),
        final_residuals=residuals,
        violated=bool(viol),
        violated_ids=viol,
    )
    if item["kind"] == "forecast":
        report["_forecast"] = ctx["tool"]["forecast"]
    return report


def _default_regime(item: dict) -> str:
    eq = (item.get("meta") or {}).get("equation", "ns2d")
    return {"ns2d": "ns2d_forced", "beta_plane": "beta_plane"}.get(eq, eq)


def _safe_check(c, answer, ctx) -> float:
    try:
        r = float(c.check(answer, ctx))
    except (KeyError, TypeError, ValueError):
        return math.inf
    return r if math.isfinite(r) else math.inf


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
