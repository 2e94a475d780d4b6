"""OMNIFLOW entry points (rules/omniflow.smk): ``python -m methods.omniflow.run <command>``.

* ``qa``: PG-CoT over the question set for several variants of one backend -> per variant an
  answers file (scored by ``benchmarks.pde.suite questions``), the reasoning reports, and a
  ``pgcot`` run record (constraint violations, rounds, failures; per-sample reports).
* ``forecast``: PG-CoT forecasts of the test trajectories of each regime (k exemplars from the
  regime's train split, or the source regime's train split when k = 0) -> prediction files
  (scored by ``benchmarks.pde.suite forecast``) + a ``pgcot_forecast`` record with the figures.
* ``train-baseline`` / ``baseline-forecast``: the FNO / U-Net surrogates (source training,
  zero-shot and k-shot fine-tuned forecasts).
Data come from files written by benchmarks/pde (README there); nothing is imported from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from claimbench import provenance
from claimbench.errors import ClaimbenchError, exit_on_user_error
from claimbench.io import atomic_write_json, atomic_write_jsonl, sha256_file
from claimbench.records import make_run_record, metric, write_run_record
from methods.omniflow import descriptors as Dm
from methods.omniflow import fields as F
from methods.omniflow import physics as P
from methods.omniflow.backends import BackendError, make_backend
from methods.omniflow.controller import PGCoTConfig, pg_cot

PAPER = "omniflow"


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))
    torch.manual_seed(0)


def backend_label(spec: dict) -> str:
    if spec.get("label"):
        return spec["label"]
    if spec["kind"] == "rule":
        fr = float(spec.get("fault_rate", 0.0))
        return "rule" if fr == 0 else f"rule(fault_rate={fr:g})"
    if spec["kind"] == "hf":
        return f"hf:{Path(spec['path']).name}"
    return f"openai:{spec.get('model')}"


# ------------------------------------------------------------------ questions


def load_questions(data: Path, limit_per_kind: int | None = None) -> list[dict]:
    qdir = data / "questions"
    if not (qdir / "questions.jsonl").is_file():
        raise ClaimbenchError(
            f"{qdir / 'questions.jsonl'}: question set missing (run the pde_data rule)"
        )
    arrays = np.load(qdir / "fields.npz")
    items, counts = [], {}
    with open(qdir / "questions.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            counts[row["kind"]] = counts.get(row["kind"], 0) + 1
            if limit_per_kind and counts[row["kind"]] > limit_per_kind:
                continue
            fl = {
                name: np.asarray(arrays[key], dtype=np.float64)
                for name, key in row["fields"].items()
            }
            items.append({**row, "fields": fl})
    return items


def _summary_metrics(reports: list[dict], task: str) -> list[dict]:
    n = len(reports)
    if n == 0:
        return []

    def rate(pred):
        return sum(1 for r in reports if pred(r)) / n

    return [
        metric(task, "violation_rate", rate(lambda r: r["violated"]), n=n, higher_is_better=False),
        metric(
            task,
            "violation_rate_first",
            rate(lambda r: r["violated_first"]),
            n=n,
            higher_is_better=False,
        ),
        metric(
            task,
            "failed_item_rate",
            rate(lambda r: r["status"] == "failed"),
            n=n,
            higher_is_better=False,
        ),
        metric(
            task,
            "verified_rate",
            rate(lambda r: r["status"] == "verified"),
            n=n,
            higher_is_better=True,
        ),
        metric(
            task,
            "repaired_rate",
            rate(lambda r: r["status"] == "repaired"),
            n=n,
            higher_is_better=None,
        ),
        metric(
            task,
            "mean_rounds",
            sum(r["n_rounds"] for r in reports) / n,
            n=n,
            higher_is_better=False,
        ),
    ]


def _compact_report(rep: dict) -> dict:
    """The reasoning report as shown per sample (prompt kept separately)."""
    out = {
        k: rep.get(k)
        for k in ("id", "kind", "status", "regime", "answer", "n_rounds", "violated_ids", "error")
    }
    out["constraints"] = rep.get("constraints", [])
    out["rounds"] = [
        {k: v for k, v in r.items() if k not in ("prompt",)} for r in rep.get("rounds", [])
    ]
    return out


def _sample(i: int, rep: dict, target) -> dict:
    first = (rep.get("rounds") or [{}])[0].get("prompt", "")
    return {
        "task": rep["kind"],
        "doc_id": i,
        "prompt": first,
        "target": json.dumps(target),
        "response": json.dumps(_compact_report(rep), default=str),
        "metrics": {
            "violated": float(rep["violated"]),
            "violated_first": float(rep["violated_first"]),
            "failed": float(rep["status"] == "failed"),
            "rounds": float(rep["n_rounds"]),
        },
    }


def _write_pgcot_record(
    path: Path,
    samples_rows,
    reports,
    *,
    scale,
    variant,
    method,
    backend,
    suite,
    seed,
    config,
    t,
    tasks,
    extra_metrics=(),
    series=(),
):
    mets = _summary_metrics(reports, "all")
    for task in tasks:
        mets += _summary_metrics([r for r in reports if r["kind"] == task], task)
    mets += list(extra_metrics)
    sp = path.with_name(path.stem + ".samples.jsonl")
    atomic_write_jsonl(sp, samples_rows)
    rec = make_run_record(
        scale=scale,
        paper=PAPER,
        method=method,
        variant=variant,
        base_model=backend,
        suite=suite,
        tasks=["all", *tasks],
        seed=seed,
        config=config,
        metrics=mets,
        provenance=provenance.capture(t["started_at"], t["wall_s"]),
        samples=sp.name,
        series=list(series),
    )
    write_run_record(path, rec)


def cmd_qa(args) -> None:
    variants = json.loads(args.variants)
    backend_spec = json.loads(args.backend)
    data = Path(args.data)
    items = load_questions(data, args.limit_per_kind)
    kinds = sorted({it["kind"] for it in items})
    _set_threads(args.threads)
    with provenance.timed() as t0:
        backend = make_backend(backend_spec)
        h0 = backend.weights_hash()
    label = backend_label(backend_spec)
    for vname, vspec in variants.items():
        cfg = PGCoTConfig(**vspec)
        with provenance.timed() as t:
            reports = [pg_cot(it, backend, cfg) for it in items]
        h1 = backend.weights_hash()
        if h0 != h1:
            raise ClaimbenchError(
                f"backend {label}: weights changed during the evaluation ({h0} -> {h1})"
            )
        out = Path(args.art) / vname
        _fresh(out)
        answers = [
            {
                "id": r["id"],
                "answer": r["answer"],
                "rounds": r["n_rounds"],
                "violations": float(r["violated"]),
                "status": r["status"],
                **(
                    {"failed": True, "error": r.get("error") or "no valid answer"}
                    if r["status"] == "failed"
                    else {}
                ),
            }
            for r in reports
        ]
        atomic_write_jsonl(out / "answers.jsonl", answers)
        atomic_write_jsonl(
            out / "reports.jsonl",
            [
                _compact_report(r) | {"prompt": (r.get("rounds") or [{}])[0].get("prompt")}
                for r in reports
            ],
        )
        rows = [
            _sample(i, r, it.get("answer"))
            for i, (r, it) in enumerate(zip(reports, items, strict=True))
        ]
        conf = {
            "pgcot": vspec,
            "backend": backend.describe(),
            "limit_per_kind": args.limit_per_kind,
        }
        weights = (
            [metric("all", "weights_unchanged", float(h0 == h1), higher_is_better=True)]
            if h0
            else []
        )
        _write_pgcot_record(
            Path(args.runs) / vname / "pgcot.json",
            rows,
            reports,
            scale=args.scale,
            variant=vname,
            method=args.method_prefix + _ablation_name(cfg),
            backend=label,
            suite="pgcot",
            seed=args.seed,
            config=conf,
            t=t,
            tasks=kinds,
            extra_metrics=weights,
        )
        atomic_write_json(
            out / "meta.json",
            {
                "method": "omniflow",
                "variant": vname,
                "base_model": label,
                "seed": args.seed,
                "config": conf,
                "inputs": {
                    str(data / "questions" / "questions.jsonl"): sha256_file(
                        data / "questions" / "questions.jsonl"
                    )
                },
                "backend_weights_sha256": h0,
                "provenance": provenance.capture(t["started_at"], t["wall_s"] + t0["wall_s"]),
            },
        )


def _ablation_name(cfg: PGCoTConfig) -> str:
    if not cfg.descriptors:
        return "omniflow-raw"
    if not cfg.inject:
        return "omniflow-noinject"
    if not cfg.verify:
        return "omniflow-noverify"
    return "omniflow"


# ------------------------------------------------------------------ forecasts


def _regime_meta(data: Path, regime: str) -> dict:
    p = data / regime / "meta.json"
    if not p.is_file():
        raise ClaimbenchError(f"{p}: regime {regime!r} not generated")
    return json.loads(p.read_text())


def _fits(omega: np.ndarray, dt: float, L: float) -> list[dict]:
    out = []
    for traj in omega:
        fit = P.fit_vorticity_equation(np.asarray(traj, np.float64), dt, L)
        out.append({k: v for k, v in fit.items() if k != "fit_residual"})
    return out


def figure_row(
    omega: np.ndarray, title: str, doc_id: int, task: str = "figure", size: int = 16
) -> dict:
    """A vorticity field, block-averaged to size x size and quantised to one character per cell
    (0-9a-z, 36 levels over [-max, max]), plus the detected vortices: the report draws it as SVG."""
    omega = np.asarray(omega, np.float64)
    D = Dm.describe_vorticity(omega)
    n = omega.shape[0]
    b = max(1, n // size)
    m = n // b
    small = omega[: m * b, : m * b].reshape(m, b, m, b).mean(axis=(1, 3))
    vmax = float(np.abs(small).max()) or 1.0
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    q = np.clip(np.round((small / vmax + 1) / 2 * 35), 0, 35).astype(int)
    # rows of constant y from top (y = 1) to bottom, columns x = 0..1 (image orientation)
    text = "/".join("".join(digits[q[i, j]] for i in range(m)) for j in reversed(range(m)))
    vort = [
        {
            "x": round(v["x"], 3),
            "y": round(v["y"], 3),
            "sign": v["sign"],
            "r": round(v["radius"], 3),
        }
        for v in D["vortices"][:12]
    ]
    return {
        "task": task,
        "doc_id": doc_id,
        "prompt": title,
        "target": "",
        "response": json.dumps({"m": m, "vmax": round(vmax, 3), "cells": text, "vortices": vort}),
        "metrics": {"n_vortices": float(D["n_vortices"])},
    }


def cmd_forecast(args) -> None:
    data = Path(args.data)
    regimes = [r for r in args.regimes.split(",") if r]
    backend_spec = json.loads(args.backend)
    vspec = json.loads(args.pgcot)
    cfg = PGCoTConfig(**vspec)
    backend = make_backend(backend_spec)
    label = backend_label(backend_spec)
    out = Path(args.out)
    _fresh(out)
    (out / "predictions").mkdir()
    all_reports, rows, inputs = [], [], {}
    with provenance.timed() as t:
        src_meta = _regime_meta(data, args.source)
        L = float(src_meta["grid"].get("L", 1.0))
        src = np.load(data / args.source / "train.npz")
        src_fits = _fits(src["omega"][: args.max_source_fits], float(src_meta["dt_record"]), L)
        inputs[str(data / args.source / "train.npz")] = sha256_file(
            data / args.source / "train.npz"
        )
        for ri, regime in enumerate(regimes):
            meta = _regime_meta(data, regime)
            test = np.load(data / regime / "test.npz")
            inputs[str(data / regime / "test.npz")] = sha256_file(data / regime / "test.npz")
            dt = float(meta["dt_record"])
            n_in, n_roll = int(meta["forecast"]["n_input"]), int(meta["forecast"]["n_rollout"])
            if args.k > 0:
                tr = np.load(data / regime / "train.npz")["omega"]
                if len(tr) < args.k:
                    raise ClaimbenchError(
                        f"{data / regime / 'train.npz'}: {len(tr)} trajectories < k = {args.k}"
                    )
                ex_fits = _fits(tr[: args.k], dt, L)
            else:
                ex_fits = src_fits
            omega = test["omega"]
            preds = np.zeros((len(omega), n_roll, *omega.shape[-2:]), np.float32)
            us, vs = np.zeros_like(preds), np.zeros_like(preds)
            failed = np.zeros(len(omega), bool)
            for i, traj in enumerate(omega):
                item = {
                    "id": f"{regime}-{i:03d}",
                    "kind": "forecast",
                    "question": f"Predict the next {n_roll} frames.",
                    "fields": {"omega": np.asarray(traj[:n_in], np.float64)},
                    "meta": {"dt": dt, "n_rollout": n_roll, "grid": meta["grid"], "L": L},
                    "exemplar_fits": ex_fits,
                }
                rep = pg_cot(item, backend, cfg)
                w = rep.pop("_forecast", None)
                if w is None:
                    failed[i] = True
                else:
                    preds[i] = w
                    for s, x in enumerate(w):
                        us[i, s], vs[i, s] = F.velocity_from_vorticity(x, L)
                rep["regime_name"] = regime
                all_reports.append(rep)
                rows.append(_sample(len(rows), rep, {"regime": regime, "trajectory": i}))
            np.savez(out / "predictions" / f"{regime}.npz", omega=preds, u=us, v=vs, failed=failed)
            rows.append(
                figure_row(omega[0, n_in - 1], f"{regime}: observed input frame", 1000 + ri)
            )
            rows.append(
                figure_row(
                    omega[0, n_in + n_roll - 1],
                    f"{regime}: ground truth, last lead step",
                    2000 + ri,
                    "figure_truth",
                )
            )
            if not failed[0]:
                rows.append(
                    figure_row(
                        preds[0, -1],
                        f"{regime}: OMNIFLOW ({label}) forecast, last lead step",
                        3000 + ri,
                        "figure_forecast",
                    )
                )
    conf = {
        "pgcot": vspec,
        "backend": backend.describe(),
        "k": args.k,
        "regimes": regimes,
        "source": args.source,
    }
    for r in all_reports:
        r["kind"] = "forecast"
    _write_pgcot_record(
        Path(args.runs) / "pgcot_forecast.json",
        rows,
        all_reports,
        scale=args.scale,
        variant=args.variant,
        method=_ablation_name(cfg),
        backend=label,
        suite="pgcot_forecast",
        seed=args.seed,
        config=conf,
        t=t,
        tasks=["forecast"],
    )
    atomic_write_json(
        out / "meta.json",
        {
            "method": "omniflow",
            "variant": args.variant,
            "base_model": label,
            "seed": args.seed,
            "config": conf,
            "inputs": inputs,
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


# ------------------------------------------------------------------ baselines


def cmd_train_baseline(args) -> None:
    from methods.omniflow.baselines import Surrogate, channel_scale, load_states, n_params

    _set_threads(args.threads)
    spec = json.loads(args.spec)
    data = Path(args.data)
    import torch

    torch.manual_seed(args.seed)
    with provenance.timed() as t:
        states = load_states(data / args.source / "train.npz")
        model = Surrogate(args.arch, spec["model"], channel_scale(states))
        losses = model.train(states, spec["steps"], spec["lr"], spec["batch"], args.seed)
    out = Path(args.out)
    _fresh(out)
    model.save(out)
    atomic_write_json(out / "train_log.json", {"loss": losses})
    atomic_write_json(
        out / "meta.json",
        {
            "method": args.arch,
            "variant": out.name,
            "base_model": "scratch",
            "seed": args.seed,
            "config": spec,
            "n_params": n_params(model.model),
            "final_loss": losses[-1] if losses else None,
            "inputs": {
                str(data / args.source / "train.npz"): sha256_file(data / args.source / "train.npz")
            },
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def cmd_baseline_forecast(args) -> None:
    import torch

    from methods.omniflow.baselines import Surrogate, finite_or_fail, load_states

    _set_threads(args.threads)
    ft = json.loads(args.finetune)
    data = Path(args.data)
    out = Path(args.out)
    _fresh(out)
    (out / "predictions").mkdir()
    logs = {}
    with provenance.timed() as t:
        for regime in [r for r in args.regimes.split(",") if r]:
            meta = _regime_meta(data, regime)
            model = Surrogate.load(args.model)
            if args.k > 0:
                torch.manual_seed(args.seed)
                tr = load_states(data / regime / "train.npz")[: args.k]
                logs[regime] = model.train(tr, ft["steps"], ft["lr"], ft["batch"], args.seed)
            test = load_states(data / regime / "test.npz")
            n_in, n_roll = int(meta["forecast"]["n_input"]), int(meta["forecast"]["n_rollout"])
            pred = model.rollout(test[:, n_in - 1], n_roll)
            failed = finite_or_fail(pred)
            pred[failed] = 0.0
            np.savez(
                out / "predictions" / f"{regime}.npz",
                omega=pred[:, :, 0],
                u=pred[:, :, 1],
                v=pred[:, :, 2],
                failed=failed,
            )
    atomic_write_json(out / "finetune_log.json", {k: v[-1] for k, v in logs.items()})
    atomic_write_json(
        out / "meta.json",
        {
            "method": Path(args.model).name.split("-")[0],
            "variant": out.name,
            "base_model": Path(args.model).name,
            "seed": args.seed,
            "config": {"k": args.k, "finetune": ft},
            "inputs": {args.model: "model"},
            "provenance": provenance.capture(t["started_at"], t["wall_s"]),
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m methods.omniflow.run")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("qa")
    q.add_argument("--data", required=True)
    q.add_argument("--backend", required=True, help="JSON backend spec")
    q.add_argument("--variants", required=True, help="JSON {variant: PGCoTConfig fields}")
    q.add_argument("--limit-per-kind", type=int, default=None)
    q.add_argument("--method-prefix", default="")
    q.add_argument("--art", required=True)
    q.add_argument("--runs", required=True)
    f = sub.add_parser("forecast")
    f.add_argument("--data", required=True)
    f.add_argument("--regimes", required=True)
    f.add_argument("--source", required=True)
    f.add_argument("--k", type=int, default=0)
    f.add_argument("--max-source-fits", type=int, default=8)
    f.add_argument("--backend", required=True)
    f.add_argument("--pgcot", required=True)
    f.add_argument("--variant", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--runs", required=True)
    tb = sub.add_parser("train-baseline")
    tb.add_argument("--arch", required=True)
    tb.add_argument("--spec", required=True)
    tb.add_argument("--data", required=True)
    tb.add_argument("--source", required=True)
    tb.add_argument("--out", required=True)
    bf = sub.add_parser("baseline-forecast")
    bf.add_argument("--model", required=True)
    bf.add_argument("--k", type=int, default=0)
    bf.add_argument("--finetune", required=True)
    bf.add_argument("--data", required=True)
    bf.add_argument("--regimes", required=True)
    bf.add_argument("--out", required=True)
    for p in (q, f, tb, bf):
        p.add_argument("--scale", default="tiny")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    with exit_on_user_error(BackendError, F.FieldError, ValueError):
        {
            "qa": cmd_qa,
            "forecast": cmd_forecast,
            "train-baseline": cmd_train_baseline,
            "baseline-forecast": cmd_baseline_forecast,
        }[args.cmd](args)


if __name__ == "__main__":
    main()
