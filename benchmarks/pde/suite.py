"""The PDE suite: prediction / answer files -> run records (formats in benchmarks/pde/README.md).

``python -m benchmarks.pde.suite forecast JOB --data DIR --regimes a,b --predictions DIR ...``
``python -m benchmarks.pde.suite questions JOB --data DIR --answers FILE.jsonl ...``
``python -m benchmarks.pde.suite reference JOB --data DIR --regimes a,b --kind persistence``

``JOB`` = the job options of ``claimbench.job`` (``--scale --paper --variant --out ...``; ``--out``
is the run record for ``forecast`` / ``questions`` and the folder of the prediction files for
``reference``). Scoring settings come from the scale's ``benchmarks.pde.eval`` section.

Forecast records (suite ``pde_forecast``) have one task per regime: accuracy (nRMSE and its
first/last lead step, RMSE, max error, cRMSE, VRMSE, fRMSE low/mid/high) and physical
consistency (divergence residual, mean-vorticity drift, energy / enstrophy budget errors and the
same for the true trajectory at the same snapshot spacing, PDE residual, log-spectral distance,
high-band energy ratio, spectral-slope error, stable steps, failed rate); one sample row per test
trajectory. Question records (suite ``pde_qa``) have one task per question kind (accuracy, MAE
for integer answers, relative error for float answers, failed and missing rates).
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np

from benchmarks.pde import metrics as M
from benchmarks.pde.spectral import PDEInputError, energy_spectrum, velocity_from_vorticity
from claimbench.io import atomic_write_bytes, atomic_write_jsonl, sha256_file
from claimbench.job import Job, add_job_options, run_job
from claimbench.records import metric, series

PAPERS = ["omniflow"]  # the papers whose predictions this suite scores
LOWER = False  # higher_is_better for error metrics
FORECAST_METRICS = {  # name -> higher_is_better
    "nrmse": LOWER,
    "nrmse_step1": LOWER,
    "nrmse_last": LOWER,
    "rmse": LOWER,
    "max_error": LOWER,
    "crmse": LOWER,
    "vrmse": LOWER,
    "frmse_low": LOWER,
    "frmse_mid": LOWER,
    "frmse_high": LOWER,
    "div_residual": LOWER,
    "mean_vorticity_drift": LOWER,
    "energy_budget_error": LOWER,
    "enstrophy_budget_error": LOWER,
    "pde_residual": LOWER,
    "energy_budget_error_truth": None,  # reference floor at this snapshot spacing
    "enstrophy_budget_error_truth": None,
    "pde_residual_truth": None,
    "lsd": LOWER,
    "high_band_ratio": None,  # 1 is ideal; < 1 = lost small scales, > 1 = pile-up
    "spectral_slope_error": LOWER,
    "stable_steps": True,
}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise PDEInputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise PDEInputError(f"{path}: not a readable .npz file ({e})") from e


def _read_json(path: Path):
    if not path.is_file():
        raise PDEInputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PDEInputError(f"{path}: invalid JSON ({e.msg})") from e


def load_predictions(path: Path, n_test: int, n_rollout: int, n: int) -> dict[str, np.ndarray]:
    """Check shapes, the optional ``failed`` mask and finiteness of the non-failed samples."""
    p = _load_npz(path)
    want = (n_test, n_rollout, n, n)
    if "omega" not in p:
        raise PDEInputError(
            f"{path}: array 'omega' missing (has {sorted(p)}); expected shape {want}"
        )
    for name in ("omega", "u", "v"):
        if name in p and p[name].shape != want:
            raise PDEInputError(
                f"{path}: array '{name}' has shape {p[name].shape}, expected {want}"
            )
    if ("u" in p) != ("v" in p):
        raise PDEInputError(f"{path}: give both 'u' and 'v' or neither")
    failed = p.get("failed")
    if failed is None:
        failed = np.zeros(n_test, dtype=bool)
    elif failed.shape != (n_test,):
        raise PDEInputError(
            f"{path}: array 'failed' has shape {failed.shape}, expected {(n_test,)}"
        )
    p["failed"] = failed.astype(bool)
    for name in ("omega", "u", "v"):
        if name not in p:
            continue
        a = p[name]
        if not np.issubdtype(a.dtype, np.number):
            raise PDEInputError(f"{path}: array '{name}' has dtype {a.dtype}, expected floats")
        bad = ~np.isfinite(a[~p["failed"]])
        if bad.any():
            idx = np.flatnonzero(~p["failed"])[np.argwhere(bad)[0][0]]
            raise PDEInputError(
                f"{path}: array '{name}' (shape {a.shape}) has {int(bad.sum())} NaN or infinite "
                f"values in samples not marked failed (first in sample {int(idx)})"
            )
    return p


def score_sample(
    pred,
    truth,
    last_input,
    meta,
    u=None,
    v=None,
    threshold=0.5,
    slope_band=(2, None),
    truth_uv=None,
):
    """Metrics of one test trajectory: pred/truth (R, N, N), last_input (N, N).

    ``truth_uv``: the stored true velocity (spectra of the truth use it, so a prediction that
    copies the stored arrays scores exactly 0 on the spectral metrics).
    """
    p = meta["params"]
    dt = meta["dt_record"]
    forcing = meta["_forcing"]
    nr = M.nrmse(pred, truth)
    out = {
        "nrmse": nr.mean(),
        "nrmse_step1": nr[0],
        "nrmse_last": nr[-1],
        "rmse": M.rmse(pred, truth).mean(),
        "max_error": M.max_error(pred, truth).max(),
        "crmse": M.crmse(pred, truth).mean(),
        "vrmse": M.vrmse(pred, truth).mean(),
    }
    for band, val in M.frmse_bands(pred, truth).items():
        if np.isfinite(val).all():  # the high band [12, N/2) is empty below N = 26
            out[f"frmse_{band}"] = val.mean()
    if u is None:
        u, v = velocity_from_vorticity(pred)
    out["div_residual"] = M.divergence_residual(u, v).mean()
    out["mean_vorticity_drift"] = M.mean_drift(pred, truth).mean()
    seq = np.concatenate([last_input[None], pred])
    seq_t = np.concatenate([last_input[None], truth])
    beta = p.get("beta", 0.0)
    for tag, s in (("", seq), ("_truth", seq_t)):
        out[f"energy_budget_error{tag}"] = M.energy_budget_error(
            s, dt, p["nu"], p["alpha"], forcing
        ).mean()
        out[f"enstrophy_budget_error{tag}"] = M.enstrophy_budget_error(
            s, dt, p["nu"], p["alpha"], forcing
        ).mean()
        if len(s) >= 3:
            out[f"pde_residual{tag}"] = M.pde_residual(
                s, dt, p["nu"], p["alpha"], beta, forcing
            ).mean()
    e_pred = energy_spectrum(u, v)
    e_true = energy_spectrum(
        *(truth_uv if truth_uv is not None else velocity_from_vorticity(truth))
    )
    out["lsd"] = M.log_spectral_distance(e_pred, e_true).mean()
    out["high_band_ratio"] = M.high_band_ratio(e_pred, e_true).mean()
    out["spectral_slope_error"] = M.spectral_slope_error(e_pred, e_true, *slope_band).mean()
    out["stable_steps"] = int(M.stable_steps(nr, threshold))
    return {k: float(v) for k, v in out.items()}, nr


def _mean_se(values):
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return None, None
    se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return float(np.mean(x)), se


def eval_settings(job: Job) -> tuple[float, tuple[int, int | None]]:
    """(stable_threshold, slope_band) of ``benchmarks.pde.eval`` (K_HI null = the 2/3-rule cutoff)."""
    pde = (job.scale_config.get("benchmarks") or {}).get("pde")
    if pde is None:
        raise PDEInputError(f"scale {job.scale}: no benchmarks.pde section")
    ev = pde["eval"]
    return float(ev["stable_threshold"]), (ev["slope_band"][0], ev["slope_band"][1])


def forecast(job: Job) -> Path:
    args = job.args
    threshold, slope_band = eval_settings(job)
    all_metrics, samples, curves, hashes, cfg_regimes = [], [], [], {}, {}
    velocity_src = {}
    for regime in args.regimes:
        rdir = args.data / regime
        meta = _read_json(rdir / "regime.json")
        test = _load_npz(rdir / "test.npz")
        meta["_forcing"] = test["forcing"].astype(np.float64)
        n_in, n_out = meta["forecast"]["n_input"], meta["forecast"]["n_rollout"]
        n = meta["grid"]["N"]
        omega = test["omega"].astype(np.float64)
        n_test = omega.shape[0]
        pred_path = args.predictions / f"{regime}.npz"
        pred = load_predictions(pred_path, n_test, n_out, n)
        has_uv = "u" in pred
        velocity_src[regime] = "predicted" if has_uv else "derived from omega"
        per, curves_r = {k: [] for k in FORECAST_METRICS}, []
        for i in range(n_test):
            row = {
                "task": regime,
                "doc_id": i,
                "prompt": f"{regime} test trajectory {i}",
                "target": "",
                "response": "",
            }
            failed = bool(pred["failed"][i])
            if failed:
                # a failed forecast counts as the persistence forecast (the last input frame
                # held): what a caller without an answer falls back to, finite and on the
                # same scale as every other row (a capped error would be an arbitrary number)
                p_omega = np.repeat(omega[i, n_in - 1 : n_in], n_out, axis=0)
                p_u = np.repeat(test["u"][i, n_in - 1 : n_in], n_out, axis=0)
                p_v = np.repeat(test["v"][i, n_in - 1 : n_in], n_out, axis=0)
            else:
                p_omega = pred["omega"][i]
                p_u = pred["u"][i] if has_uv else None
                p_v = pred["v"][i] if has_uv else None
            m, nr = score_sample(
                p_omega.astype(np.float64),
                omega[i, n_in : n_in + n_out],
                omega[i, n_in - 1],
                meta,
                p_u.astype(np.float64) if p_u is not None else None,
                p_v.astype(np.float64) if p_v is not None else None,
                threshold=threshold,
                slope_band=slope_band,
                truth_uv=(
                    test["u"][i, n_in : n_in + n_out].astype(np.float64),
                    test["v"][i, n_in : n_in + n_out].astype(np.float64),
                ),
            )
            for k, val in m.items():
                per[k].append(val)
            curves_r.append(nr)
            row["metrics"] = {**m, "failed": float(failed)}
            samples.append(row)
        for k, hib in FORECAST_METRICS.items():
            mean, se = _mean_se(per[k])
            if mean is not None:
                all_metrics.append(
                    metric(regime, k, mean, stderr=se, n=len(per[k]), higher_is_better=hib)
                )
        n_failed = int(pred["failed"].sum())
        all_metrics.append(
            metric(regime, "failed_rate", n_failed / n_test, n=n_test, higher_is_better=False)
        )
        if curves_r:
            c = np.mean(curves_r, axis=0)
            curves.append(
                series(
                    f"nRMSE_{regime}",
                    list(range(1, n_out + 1)),
                    c.tolist(),
                    "lead step",
                    "nRMSE",
                )
            )
        hashes[regime] = sha256_file(rdir / "test.npz")[:16]
        cfg_regimes[regime] = {
            "predictions_sha256": sha256_file(pred_path)[:16],
            "velocity": velocity_src[regime],
            "failed": n_failed,
        }
    config = {
        "data": str(args.data),
        "predictions": str(args.predictions),
        "regimes": cfg_regimes,
        "stable_threshold": threshold,
        "slope_band": list(slope_band),
        "frmse": "full spectrum, floor(|k|) shells, bands [0,4) [4,12) [12,N/2); per-sample mean",
        "failed": "a failed forecast is scored as the persistence forecast (in every mean)",
        "budgets": "trapezoid over snapshot pairs from the last input frame; *_truth = same on the solver",
    }
    return write_scores(job, "pde_forecast", all_metrics, samples, config, hashes, curves)


def write_scores(job: Job, suite, all_metrics, samples, config, hashes, curves) -> Path:
    """The per-sample rows beside the record (``<record>.samples.jsonl``), then the record."""
    samples_name = job.out.name.replace(".json", ".samples.jsonl")
    atomic_write_jsonl(job.out.parent / samples_name, samples)
    record = job.record(
        suite=suite,
        metrics=all_metrics,
        base_model=job.args.base_model,
        method=job.args.method,
        config=config,
        task_hashes=hashes,
        samples=samples_name,
        series=curves,
    )
    return job.write_record(record)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise PDEInputError(f"{path}: file not found")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PDEInputError(f"{path}: line {i} is not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or "id" not in row:
            raise PDEInputError(f"{path}: line {i} must be a JSON object with an 'id'")
        rows.append(row)
    return rows


def grade(q: dict, a) -> dict:
    """Score one answer: {'correct': 0/1, and 'abs_error' (int) or 'rel_error' (float)}."""
    t = q["answer_type"]
    if t == "choice":
        ok = isinstance(a, str) and a.strip().lower() == str(q["answer"]).lower()
        return {"correct": float(ok)}
    if t == "int":
        try:
            val = float(a)
        except (TypeError, ValueError):
            return {"correct": 0.0}
        if not math.isfinite(val):
            return {"correct": 0.0}
        err = abs(val - q["answer"])
        return {"correct": float(err <= (q.get("tolerance") or 0)), "abs_error": err}
    if t == "float":
        try:
            val = float(a)
        except (TypeError, ValueError):
            return {"correct": 0.0}
        rel = (
            abs(val - q["answer"]) / (abs(q["answer"]) + 1e-12) if math.isfinite(val) else math.inf
        )
        out = {"correct": float(rel <= (q.get("tolerance") or 0.1))}
        if math.isfinite(rel):
            out["rel_error"] = rel
        return out
    raise PDEInputError(f"question {q['id']}: unknown answer_type {t!r}")


def questions(job: Job) -> Path:
    args = job.args
    qpath = args.data / "questions" / "questions.jsonl"
    qs = _read_jsonl(qpath)
    answers = _read_jsonl(args.answers)
    by_id = {}
    known = {q["id"] for q in qs}
    for a in answers:
        if a["id"] not in known:
            raise PDEInputError(f"{args.answers}: answer for unknown question id {a['id']!r}")
        if a["id"] in by_id:
            raise PDEInputError(f"{args.answers}: question id {a['id']!r} answered twice")
        by_id[a["id"]] = a
    kinds = args.kinds or sorted({q["kind"] for q in qs})
    per = {
        k: {"correct": [], "abs_error": [], "rel_error": [], "failed": [], "missing": []}
        | {e: [] for e in args.extra_metrics}
        for k in kinds
    }
    samples = []
    for q in qs:
        if q["kind"] not in per:
            continue
        a = by_id.get(q["id"])
        missing = a is None
        failed = bool(a and a.get("failed"))
        if missing or failed or "answer" not in a:
            m = {"correct": 0.0}
            failed = failed or (not missing)
        else:
            m = grade(q, a["answer"])
        m |= {"failed": float(failed), "missing": float(missing)}
        for e in args.extra_metrics:
            val = (a or {}).get(e)
            if isinstance(val, int | float) and not isinstance(val, bool) and math.isfinite(val):
                m[e] = float(val)
        for k, val in m.items():
            per[q["kind"]][k].append(val)
        samples.append(
            {
                "task": q["kind"],
                "doc_id": int(q["sample"]),
                "prompt": q["question"],
                "target": json.dumps(q["answer"]),
                "response": "" if a is None else json.dumps(a.get("answer")),
                "metrics": m,
                "output": {k: v for k, v in (a or {}).items() if k not in ("id", "answer")},
                "id": q["id"],
            }
        )
    all_metrics = []
    for k in kinds:
        n = len(per[k]["correct"])
        if n == 0:
            raise PDEInputError(f"{qpath}: no questions of kind {k!r}")
        for name, hib in (
            ("correct", True),
            ("abs_error", False),
            ("rel_error", False),
            ("failed", False),
            ("missing", False),
            *((e, None) for e in args.extra_metrics),
        ):
            mean, se = _mean_se(per[k][name])
            if mean is None:
                continue
            label = {
                "correct": "accuracy",
                "abs_error": "mae",
                "failed": "failed_rate",
                "missing": "missing_rate",
            }.get(name, name)
            all_metrics.append(
                metric(k, label, mean, stderr=se, n=len(per[k][name]), higher_is_better=hib)
            )
    hashes = {k: sha256_file(qpath)[:16] for k in kinds}
    config = {
        "data": str(args.data),
        "answers": str(args.answers),
        "kinds": kinds,
        "answers_sha256": sha256_file(args.answers)[:16],
        "extra_metrics": args.extra_metrics,
    }
    return write_scores(job, "pde_qa", all_metrics, samples, config, hashes, [])


def reference(job: Job) -> Path:
    """Reference prediction files: ``truth`` (the solver's own frames), ``persistence`` (the last
    input frame held) or ``zero`` (the zero field: nRMSE 1 by definition)."""
    args = job.args
    for regime in args.regimes:
        meta = _read_json(args.data / regime / "regime.json")
        test = _load_npz(args.data / regime / "test.npz")
        n_in, n_out = meta["forecast"]["n_input"], meta["forecast"]["n_rollout"]
        if args.kind == "truth":
            arrays = {k: test[k][:, n_in : n_in + n_out] for k in ("omega", "u", "v")}
        elif args.kind == "zero":
            arrays = {
                k: np.zeros_like(test[k][:, n_in : n_in + n_out]) for k in ("omega", "u", "v")
            }
        else:
            arrays = {
                k: np.repeat(test[k][:, n_in - 1 : n_in], n_out, axis=1)
                for k in ("omega", "u", "v")
            }
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(job.out / f"{regime}.npz", buf.getvalue())
    return job.out


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def _wrote(command):
    def run(job: Job) -> None:
        print(f"wrote {command(job)}")

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    record = "the run record (.json); per-sample rows go beside it (.samples.jsonl)"

    def scorer(name, help):
        p = add_job_options(sub.add_parser(name, help=help), papers=PAPERS, out=record)
        p.add_argument("--data", type=Path, required=True, help="data/{scale}/pde")
        p.add_argument("--method", required=True, help="the method the record scores")
        p.add_argument("--base-model", default="", help="the record's base model label")
        return p

    f = scorer("forecast", "score PRED_DIR/{regime}.npz against the test trajectories")
    f.add_argument("--regimes", type=_csv, required=True)
    f.add_argument("--predictions", type=Path, required=True)
    f.set_defaults(run=_wrote(forecast))
    q = scorer("questions", "score an answers JSONL against questions.jsonl")
    q.add_argument("--answers", type=Path, required=True)
    q.add_argument("--kinds", type=_csv, default=None, help="only these kinds (default: all)")
    q.add_argument("--extra-metrics", type=_csv, default=[], help="numeric answer keys to average")
    q.set_defaults(run=_wrote(questions))
    r = add_job_options(
        sub.add_parser("reference", help="write truth / persistence prediction files"),
        papers=PAPERS,
        out="folder for {regime}.npz",
    )
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--regimes", type=_csv, required=True)
    r.add_argument("--kind", choices=("truth", "persistence", "zero"), required=True)
    r.set_defaults(run=_wrote(reference))

    run_job(ap, None, argv, errors=(PDEInputError, ValueError, FileNotFoundError))


if __name__ == "__main__":
    main()
