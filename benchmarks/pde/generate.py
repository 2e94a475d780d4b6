"""Seeded PDE data sets per regime + verifiable question sets (layout in benchmarks/pde/README.md).

``python -m benchmarks.pde.generate --spec JSON --seed N --out data/{scale}/pde``

Every array is a deterministic function of (spec, seed): each regime and each question kind
draws from its own ``np.random.default_rng([seed, crc32(name)])`` stream.
"""

from __future__ import annotations

import argparse
import io
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from benchmarks.pde import questions as Q
from benchmarks.pde.solvers import (
    VorticitySolver,
    forcing_field,
    grf_vorticity,
    peaked_vorticity,
)
from benchmarks.pde.spectral import PDEInputError, velocity_from_vorticity
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, sha256_file

EQUATIONS = ("ns2d", "beta_plane")


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def regime_params(spec: dict, name: str) -> dict:
    r = spec["regimes"][name]
    return {
        "nu": float(r["nu"]),
        "alpha": float(r.get("alpha", 0.0)),
        "beta": float(r.get("beta", 0.0)),
        "forcing": r.get("forcing", "none"),
        "forcing_amplitude": float(r.get("forcing_amplitude", 0.1)),
        "forcing_wavenumber": int(r.get("forcing_wavenumber", 4)),
        "init": r.get("init", "grf"),
        "init_rms": float(r.get("init_rms", 2.0)),
        "init_k0": float(r.get("init_k0", 4.0)),
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
        precision=spec.get("precision", "double"),
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
        meta, train, test = simulate_regime(spec, name, seed)
        for split, arrays in (("train", train), ("test", test)):
            path = out / name / f"{split}.npz"
            atomic_write_bytes(path, npz_bytes(arrays))
            files.append(path)
        atomic_write_json(out / name / "meta.json", meta)
        files.append(out / name / "meta.json")
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="JSON of the scale's benchmarks.pde section")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the solvers")
    args = ap.parse_args(argv)
    with exit_on_user_error(PDEInputError, json.JSONDecodeError, KeyError):
        m = generate(json.loads(args.spec), args.seed, args.out, args.threads)
    print(f"wrote {args.out}: {len(m['regimes'])} regimes, {m['n_questions']} questions")


if __name__ == "__main__":
    main()
