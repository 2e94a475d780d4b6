"""Seeded PDE data sets per regime + verifiable question sets (layout in benchmarks/pde/README.md).

``python -m benchmarks.pde.generate --scale S --paper omniflow --variant pde --out data/S/pde``

One job (``claimbench.job``); the data set's settings are the scale's ``benchmarks.pde`` section,
validated with the defaults of ``config/schema/benchmarks/pde.schema.yaml`` filled in.

Every array is a deterministic function of (spec, seed): each regime and each question kind
draws from its own ``np.random.default_rng([seed, crc32(name)])`` stream.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import torch

from benchmarks.pde import questions as Q
from benchmarks.pde.real import load_regime
from benchmarks.pde.solvers import (
    VorticitySolver,
    forcing_field,
    grf_vorticity,
    peaked_vorticity,
)
from benchmarks.pde.spectral import PDEInputError, velocity_from_vorticity
from claimbench.errors import ConfigError
from claimbench.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, sha256_file
from claimbench.job import Job, job_parser, run_job

EQUATIONS = ("ns2d", "beta_plane")


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def regime_params(spec: dict, name: str) -> dict:
    """A regime's physical parameters (defaults: the schema's, filled in when the scale loads)."""
    r = spec["regimes"][name]
    return {
        "nu": float(r["nu"]),
        "alpha": float(r["alpha"]),
        "beta": float(r["beta"]),
        "forcing": r["forcing"],
        "forcing_amplitude": float(r["forcing_amplitude"]),
        "forcing_wavenumber": int(r["forcing_wavenumber"]),
        "init": r["init"],
        "init_rms": float(r["init_rms"]),
        "init_k0": float(r["init_k0"]),
    }


def initial_vorticity(rng, p: dict, n_samples: int, n: int) -> np.ndarray:
    if p["init"] == "grf":
        return grf_vorticity(rng, n_samples, n)
    if p["init"] == "peaked":
        return peaked_vorticity(rng, n_samples, n, k0=p["init_k0"], rms=p["init_rms"])
    raise PDEInputError(f"init: unknown initial condition {p['init']!r} (grf, peaked)")


def simulate_regime(spec: dict, name: str, seed: int) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(meta, train arrays, test arrays) of one regime."""
    r = spec["regimes"][name]
    if r["equation"] not in EQUATIONS:
        raise PDEInputError(f"regimes.{name}.equation: {r['equation']!r} not one of {EQUATIONS}")
    p = regime_params(spec, name)
    n, dt, dt_rec, n_snap = spec["grid"], spec["dt"], spec["dt_record"], spec["n_snapshots"]
    n_train, n_test = int(r["n_train"]), int(r["n_test"])
    rng = stream(seed, f"regime/{name}")
    f = forcing_field(p["forcing"], n, p["forcing_amplitude"], p["forcing_wavenumber"])
    beta = p["beta"] if r["equation"] == "beta_plane" else 0.0
    solver = VorticitySolver(
        n,
        p["nu"],
        dt,
        alpha=p["alpha"],
        beta=beta,
        forcing=f,
        precision=spec["precision"],
    )
    t = np.arange(n_snap) * dt_rec
    omega = solver.run(initial_vorticity(rng, p, n_train + n_test, n), t)
    u, v = velocity_from_vorticity(omega)
    x = np.arange(n) / n

    def pack(sl):
        return {
            "omega": omega[sl].astype(np.float32),
            "u": u[sl].astype(np.float32),
            "v": v[sl].astype(np.float32),
            "t": t,
            "forcing": f,
            "x": x,
            "y": x.copy(),
        }

    train, test = pack(slice(0, n_train)), pack(slice(n_train, None))
    meta = {
        "regime": name,
        "role": "source" if name == spec["source"] else "shifted",
        "equation": r["equation"],
        "params": {**p, "beta": beta},
        "grid": {"N": n, "L": 1.0},
        "dt_solver": dt,
        "dt_record": dt_rec,
        "n_snapshots": n_snap,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "forecast": dict(spec["forecast"]),
        "arrays": {k: list(a.shape) for k, a in train.items()},
    }
    return meta, train, test


def generate(spec: dict, seed: int, out: Path, threads: int = 1) -> dict:
    """Write the data set of ``spec`` (a validated ``benchmarks.pde`` section) under ``out``.

    The solvers run on the CPU in the data set's own ``precision``, whatever the job's device and
    dtype: ground truth must be the same arrays on every machine. Each regime's ``regime.json`` is
    part of the data (its parameters, hashed in the manifest), not an artifact's meta.
    """
    torch.set_num_threads(threads)
    out = Path(out)
    if spec["source"] not in spec["regimes"]:
        raise PDEInputError(
            f"source: {spec['source']!r} is not one of the regimes {list(spec['regimes'])}"
        )
    fc = spec["forecast"]
    if fc["n_input"] + fc["n_rollout"] > spec["n_snapshots"]:
        raise PDEInputError(
            f"forecast: n_input + n_rollout = {fc['n_input'] + fc['n_rollout']} exceeds "
            f"n_snapshots = {spec['n_snapshots']}"
        )
    files = []
    for name in spec["regimes"]:
        # a regime with a `file` reads a real data set (real.py) instead of simulating
        from_file = spec["regimes"][name].get("file")
        meta, train, test = (load_regime if from_file else simulate_regime)(spec, name, seed)
        for split, arrays in (("train", train), ("test", test)):
            path = out / name / f"{split}.npz"
            atomic_write_bytes(path, npz_bytes(arrays))
            files.append(path)
        atomic_write_json(out / name / "regime.json", meta)
        files.append(out / name / "regime.json")
    qspec = spec["questions"]
    rows, fields = Q.build_questions(qspec, seed)
    atomic_write_bytes(out / "questions" / "fields.npz", npz_bytes(fields))
    atomic_write_jsonl(out / "questions" / "questions.jsonl", rows)
    files += [out / "questions" / "fields.npz", out / "questions" / "questions.jsonl"]
    manifest = {
        "regimes": list(spec["regimes"]),
        "source": spec["source"],
        "question_kinds": list(qspec["kinds"]),
        "n_questions": len(rows),
        "spec": spec,
        "seed": seed,
        "files": {str(p.relative_to(out)): sha256_file(p) for p in files},
    }
    atomic_write_json(out / "manifest.json", manifest)  # last: the rule's output
    return manifest


def run(job: Job) -> None:
    pde = (job.scale_config.get("benchmarks") or {}).get("pde")
    if pde is None:
        raise ConfigError(f"scale {job.scale}: no benchmarks.pde section to generate")
    m = generate(pde, job.seed, job.out, job.threads)
    job.write_meta(
        kind="pde_data",
        regimes=m["regimes"],
        source=m["source"],
        n_questions=m["n_questions"],
        manifest_sha256=sha256_file(job.out / "manifest.json"),
    )
    print(f"wrote {job.out}: {len(m['regimes'])} regimes, {m['n_questions']} questions")


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["omniflow"], out="the data folder (data/<scale>/pde)")
    run_job(ap, run, argv, errors=(PDEInputError, ValueError, KeyError))


if __name__ == "__main__":
    main()
