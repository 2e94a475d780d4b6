"""OMNIFLOW entry points (rules/omniflow.smk): ``python -m methods.omniflow.run <command>``.

Every command is one job (``claimbench.job``: ``--scale --paper omniflow --variant --out ...``);
its settings come from the scale's ``papers.omniflow`` section (``job.config``) and the PDE data
set's ``benchmarks.pde`` section, the command line names only files and the arm picked by a
wildcard (backend, ablation, k, architecture).

* ``qa``: PG-CoT over the question set for one backend and one ablation -> an answers file
  (scored by ``benchmarks.pde.suite questions``), the reasoning reports, and a ``pgcot`` run
  record (constraint violations, rounds, failures; per-sample reports).
* ``forecast``: PG-CoT forecasts of the test trajectories of each regime (k exemplars from the
  regime's train split, or the source regime's train split when k = 0) -> prediction files
  (scored by ``benchmarks.pde.suite forecast``) + a ``pgcot_forecast`` record with the figures.
* ``train-baseline`` / ``baseline-forecast``: the FNO / U-Net surrogates (source training,
  zero-shot and k-shot fine-tuned forecasts), on the job's device and in its dtype.
Data come from files written by benchmarks/pde (README there); nothing is imported from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from claimbench.errors import ClaimbenchError
from claimbench.io import atomic_write_json, atomic_write_jsonl, sha256_file
from claimbench.job import Job, add_job_options, run_job
from claimbench.records import metric
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


def _setup_torch(job: Job):
    """torch with the job's threads and seed (the job layer sets them only when torch is already
    imported, and this module imports it only for the commands that need it)."""
    import torch

    torch.set_num_threads(job.threads)
    torch.manual_seed(job.seed)
    return torch


def _entry(mapping: dict, key: str, where: str):
    """``mapping[key]`` of the job's config, or an error that names the key and the known ones."""
    if key not in mapping:
        known = ", ".join(sorted(mapping)) or "none"
        raise ValueError(f"papers.{PAPER}.{where} has no entry {key!r} (known: {known})")
    return mapping[key]


def pde_section(job: Job) -> dict:
    """The scale's ``benchmarks.pde`` section (the data set the commands read)."""
    pde = (job.scale_config.get("benchmarks") or {}).get("pde")
    if pde is None:
        raise ClaimbenchError(f"scale {job.scale}: no benchmarks.pde section (the PDE data set)")
    return pde


def forecast_regimes(pde: dict, k: int) -> list[str]:
    """Zero-shot forecasts cover every regime (the source = in-distribution); k-shot the shifted."""
    return list(pde["regimes"]) if k == 0 else [r for r in pde["regimes"] if r != pde["source"]]


def backend_spec(job: Job, name: str, model: str | None = None) -> dict:
    """``papers.omniflow.backends.<name>`` ready for :func:`make_backend`: a scale model
    (``base_model``) resolved to its artifact folder ``model``; an ``hf`` backend loads on the
    job's device and in its dtype unless the backend sets its own ``device`` / ``dtype``."""
    spec = dict(_entry(job.config["backends"], name, "backends"))
    if "base_model" in spec:
        if not model:
            raise ValueError(
                f"backend {name}: base_model {spec['base_model']!r} needs --model (its folder)"
            )
        spec.pop("base_model")
        spec["path"] = str(model)
        spec.setdefault("label", f"hf:{Path(model).name}")
    if spec["kind"] == "hf":
        spec.setdefault("device", job.device)
        spec.setdefault("dtype", job.dtype)
    return spec


def backend_label(spec: dict) -> str:
    if spec.get("label"):
        return spec["label"]
    if spec["kind"] == "rule":
        fr = float(spec["fault_rate"])
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


def pgcot_metrics(reports: list[dict], tasks: list[str]) -> list[dict]:
    """Summary metrics of the reasoning reports: over all items, then per task."""
    mets = _summary_metrics(reports, "all")
    for task in tasks:
        mets += _summary_metrics([r for r in reports if r["kind"] == task], task)
    return mets


def write_samples(record_path: Path, rows: list[dict]) -> str:
    """Per-sample rows beside the record (``<record>.samples.jsonl``); returns the file name."""
    sp = record_path.with_name(record_path.stem + ".samples.jsonl")
    atomic_write_jsonl(sp, rows)
    return sp.name


def cmd_qa(job: Job) -> None:
    args, cfg_all = job.args, job.config
    run_spec = _entry(cfg_all["qa"]["runs"], args.backend, "qa.runs")
    vspec = {
        **cfg_all["pgcot"],
        **run_spec["pgcot"],
        **_entry(cfg_all["qa"]["ablations"], args.ablation, "qa.ablations"),
    }
    limit = run_spec["limit_per_kind"] or 0  # 0 = every question (as the record's config says)
    data = Path(args.data)
    items = load_questions(data, limit)
    kinds = sorted({it["kind"] for it in items})
    spec = backend_spec(job, args.backend, args.model)
    if args.server_url_file:
        if spec["kind"] != "openai":
            raise ValueError(f"--server-url-file: backend {args.backend} is not an openai backend")
        spec["base_url_file"] = args.server_url_file
    _setup_torch(job)
    backend = make_backend(spec)
    h0 = backend.weights_hash()
    label = backend_label(spec)
    cfg = PGCoTConfig(**vspec)
    reports = [pg_cot(it, backend, cfg) for it in items]
    h1 = backend.weights_hash()
    if h0 != h1:
        raise ClaimbenchError(
            f"backend {label}: weights changed during the evaluation ({h0} -> {h1})"
        )
    out = job.out
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
    conf = {"pgcot": vspec, "backend": backend.describe(), "limit_per_kind": limit}
    weights = (
        [metric("all", "weights_unchanged", float(h0 == h1), higher_is_better=True)] if h0 else []
    )
    record_path = Path(args.record)
    samples = write_samples(record_path, rows)
    record = job.record(
        suite="pgcot",
        metrics=pgcot_metrics(reports, kinds) + weights,
        base_model=label,
        method=_ablation_name(cfg),
        tasks=["all", *kinds],
        config=conf,
        samples=samples,
        series=[],
    )
    job.write_record(record, record_path)
    questions = data / "questions" / "questions.jsonl"
    job.write_meta(
        method=PAPER,
        base_model=label,
        config=conf,
        inputs={str(questions): sha256_file(questions)},
        backend_weights_sha256=h0,
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
    p = data / regime / "regime.json"
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


def cmd_forecast(job: Job) -> None:
    args, fc = job.args, job.config["forecast"]
    pde = pde_section(job)
    data, k, source = Path(args.data), args.k, pde["source"]
    regimes = forecast_regimes(pde, k)
    vspec = {**job.config["pgcot"], **fc["pgcot"]}
    cfg = PGCoTConfig(**vspec)
    spec = backend_spec(job, fc["backend"], args.model)
    if spec["kind"] == "hf":
        _setup_torch(job)
    backend = make_backend(spec)
    label = backend_label(spec)
    out = job.out
    _fresh(out)
    (out / "predictions").mkdir()
    all_reports, rows, inputs = [], [], {}
    src_meta = _regime_meta(data, source)
    L = float(src_meta["grid"].get("L", 1.0))  # a data file's key (benchmarks/pde/README.md)
    src = np.load(data / source / "train.npz")
    src_fits = _fits(src["omega"][: fc["max_source_fits"]], float(src_meta["dt_record"]), L)
    inputs[str(data / source / "train.npz")] = sha256_file(data / source / "train.npz")
    for ri, regime in enumerate(regimes):
        meta = _regime_meta(data, regime)
        test = np.load(data / regime / "test.npz")
        inputs[str(data / regime / "test.npz")] = sha256_file(data / regime / "test.npz")
        dt = float(meta["dt_record"])
        n_in, n_roll = int(meta["forecast"]["n_input"]), int(meta["forecast"]["n_rollout"])
        if k > 0:
            tr = np.load(data / regime / "train.npz")["omega"]
            if len(tr) < k:
                raise ClaimbenchError(
                    f"{data / regime / 'train.npz'}: {len(tr)} trajectories < k = {k}"
                )
            ex_fits = _fits(tr[:k], dt, L)
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
        rows.append(figure_row(omega[0, n_in - 1], f"{regime}: observed input frame", 1000 + ri))
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
        "k": k,
        "regimes": regimes,
        "source": source,
    }
    for r in all_reports:
        r["kind"] = "forecast"
    record_path = Path(args.record)
    samples = write_samples(record_path, rows)
    record = job.record(
        suite="pgcot_forecast",
        metrics=pgcot_metrics(all_reports, ["forecast"]),
        base_model=label,
        method=_ablation_name(cfg),
        tasks=["all", "forecast"],
        config=conf,
        samples=samples,
        series=[],
    )
    job.write_record(record, record_path)
    job.write_meta(method=PAPER, base_model=label, config=conf, inputs=inputs)


# ------------------------------------------------------------------ baselines


def cmd_train_baseline(job: Job) -> None:
    from methods.omniflow.baselines import Surrogate, channel_scale, load_states, n_params

    args = job.args
    torch = _setup_torch(job)
    spec = _entry(job.config["baselines"]["archs"], args.arch, "baselines.archs")
    source = pde_section(job)["source"]
    train = Path(args.data) / source / "train.npz"
    torch.manual_seed(job.seed)
    states = load_states(train)
    model = Surrogate(
        args.arch, spec["model"], channel_scale(states), device=job.device, dtype=job.torch_dtype
    )
    losses = model.train(states, spec["steps"], spec["lr"], spec["batch"], job.seed)
    out = job.out
    _fresh(out)
    model.save(out)
    atomic_write_json(out / "train_log.json", {"loss": losses})
    job.write_meta(
        method=args.arch,
        base_model="scratch",
        config=spec,
        n_params=n_params(model.model),
        final_loss=losses[-1] if losses else None,
        inputs={str(train): sha256_file(train)},
    )


def cmd_baseline_forecast(job: Job) -> None:
    from methods.omniflow.baselines import Surrogate, finite_or_fail, load_states

    args = job.args
    torch = _setup_torch(job)
    ft = job.config["baselines"]["finetune"]
    data, k = Path(args.data), args.k
    out = job.out
    _fresh(out)
    (out / "predictions").mkdir()
    logs = {}
    for regime in forecast_regimes(pde_section(job), k):
        meta = _regime_meta(data, regime)
        model = Surrogate.load(args.model, device=job.device, dtype=job.torch_dtype)
        if k > 0:
            torch.manual_seed(job.seed)
            tr = load_states(data / regime / "train.npz")[:k]
            logs[regime] = model.train(tr, ft["steps"], ft["lr"], ft["batch"], job.seed)
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
    atomic_write_json(out / "finetune_log.json", {r: v[-1] for r, v in logs.items()})
    job.write_meta(
        method=Path(args.model).name.split("-")[0],
        base_model=Path(args.model).name,
        config={"k": k, "finetune": ft},
        inputs={args.model: "model"},
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m methods.omniflow.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    art = "the artifact folder (its meta.json is written last)"
    data = "the PDE data folder (data/<scale>/pde, benchmarks/pde/README.md)"
    model = "artifact folder of the backend's base_model (hf backends that name one)"
    q = add_job_options(
        sub.add_parser("qa", help="PG-CoT on the question set"), papers=[PAPER], out=art
    )
    q.add_argument("--data", required=True, help=data)
    q.add_argument("--backend", required=True, help="a backend of papers.omniflow.qa.runs")
    q.add_argument("--ablation", required=True, help="an ablation of papers.omniflow.qa.ablations")
    q.add_argument("--model", default=None, help=model)
    q.add_argument(
        "--server-url-file",
        default=None,
        help="an openai backend's served URL (written by methods.omniflow.serve once ready)",
    )
    q.add_argument("--record", required=True, help="the pgcot run record (.json)")
    q.set_defaults(run=cmd_qa)
    f = add_job_options(
        sub.add_parser("forecast", help="PG-CoT forecasts"), papers=[PAPER], out=art
    )
    f.add_argument("--data", required=True, help=data)
    f.add_argument("--k", type=int, default=0, help="exemplar trajectories per target regime")
    f.add_argument("--model", default=None, help=model)
    f.add_argument("--record", required=True, help="the pgcot_forecast run record (.json)")
    f.set_defaults(run=cmd_forecast)
    tb = add_job_options(
        sub.add_parser("train-baseline", help="train an FNO / U-Net on the source regime"),
        papers=[PAPER],
        out=art,
    )
    tb.add_argument("--arch", required=True, help="an architecture of papers.omniflow.baselines")
    tb.add_argument("--data", required=True, help=data)
    tb.set_defaults(run=cmd_train_baseline)
    bf = add_job_options(
        sub.add_parser("baseline-forecast", help="zero-shot / k-shot fine-tuned rollouts"),
        papers=[PAPER],
        out=art,
    )
    bf.add_argument("--model", required=True, help="the train-baseline artifact folder")
    bf.add_argument("--k", type=int, default=0, help="target trajectories to fine-tune on")
    bf.add_argument("--data", required=True, help=data)
    bf.set_defaults(run=cmd_baseline_forecast)
    run_job(ap, None, argv, errors=(BackendError, F.FieldError, ValueError, FileNotFoundError))


if __name__ == "__main__":
    main()
