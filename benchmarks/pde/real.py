"""Real PDE data sets (HDF5) read into the layout of ``{regime}/{train,test}.npz`` (README
"Real data"), so that the forecast task, the baselines and every metric of ``metrics.py``
(nRMSE, cRMSE, fRMSE bands, VRMSE, physics residuals) run on them unchanged.

A regime of ``benchmarks.pde`` reads a file instead of simulating when it sets
``file: {path, layout, start?, transpose_xy?}``. Layouts (as the files are written; ``n`` samples,
``T`` frames, ``s`` grid points per side):

``fno_mat``
    The FNO Navier-Stokes sets (Li et al., arXiv 2010.08895; ``NavierStokes_V1e-3_N5000_T50.mat``
    and siblings), MATLAB v7.3 = HDF5. h5py sees MATLAB's column-major arrays with their axes
    reversed: ``a`` (s, s, n) the vorticity at t = 0, ``u`` (T, s, s, n) the vorticity at
    ``t`` (T, 1). The FNO reader (neuraloperator ``MatReader``) reverses every axis back, giving
    ``a`` (n, s, s) and ``u`` (n, s, s, T); so do we. Frames here: ``[a, u_1, ..., u_T]``.
``pdebench_cfd2d``
    PDEBench 2-D CFD (Takamoto et al., arXiv 2210.07182; ``2D_CFD_*_periodic_*.hdf5``): ``Vx``,
    ``Vy``, ``density``, ``pressure`` of shape (n, T, s, s), ``t-coordinate``, ``x-coordinate``,
    ``y-coordinate``. Vorticity is taken spectrally from (Vx, Vy) on the periodic box.

Both give ``field[..., i, j]`` at ``(x_i, y_j)``; ``transpose_xy: true`` swaps the two grid axes for
a file written the other way (and flips the sign of the vorticity, which a reflection changes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.pde.spectral import (
    PDEInputError,
    velocity_from_vorticity,
    vorticity_from_velocity,
)

LAYOUTS = ("fno_mat", "pdebench_cfd2d")


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a project dependency
        raise PDEInputError("reading HDF5 data needs h5py (pip install h5py)") from e
    return h5py


def _dataset(f, path: Path, key: str):
    if key not in f:
        raise PDEInputError(f"{path}: no dataset {key!r} (has {sorted(f.keys())})")
    return f[key]


def read_trajectories(
    path: str | Path, layout: str, start: int = 0, count: int | None = None
) -> dict[str, np.ndarray]:
    """``omega``, ``u``, ``v`` (count, T, s, s) float32 and ``t`` (T,) of samples
    ``[start, start + count)``; only those samples are read from disk."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise PDEInputError(f"{path}: layout {layout!r} is not one of {list(LAYOUTS)}")
    if not path.is_file():
        raise PDEInputError(f"{path}: no such file (a real PDE data set named in the scale)")
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        if layout == "fno_mat":
            a, u = _dataset(f, path, "a"), _dataset(f, path, "u")
            n = a.shape[-1]
            stop = n if count is None else start + count
            if stop > n or u.shape[-1] != n:
                raise PDEInputError(f"{path}: samples [{start}, {stop}) but the file holds {n}")
            w0 = np.asarray(a[..., start:stop]).transpose(2, 1, 0)  # (k, s, s)
            wt = np.asarray(u[..., start:stop]).transpose(3, 2, 1, 0)  # (k, s, s, T)
            omega = np.concatenate([w0[:, None], wt.transpose(0, 3, 1, 2)], axis=1)
            t_file = np.asarray(f["t"]).reshape(-1) if "t" in f else np.arange(1, wt.shape[-1] + 1)
            t = np.concatenate([[0.0], t_file.astype(np.float64)])
            uu, vv = velocity_from_vorticity(omega.astype(np.float64))
        else:
            vx, vy = _dataset(f, path, "Vx"), _dataset(f, path, "Vy")
            n = vx.shape[0]
            stop = n if count is None else start + count
            if stop > n:
                raise PDEInputError(f"{path}: samples [{start}, {stop}) but the file holds {n}")
            uu = np.asarray(vx[start:stop], dtype=np.float64)
            vv = np.asarray(vy[start:stop], dtype=np.float64)
            t = np.asarray(_dataset(f, path, "t-coordinate"), dtype=np.float64)[: uu.shape[1]]
            omega = vorticity_from_velocity(uu, vv)
    if omega.shape[-1] != omega.shape[-2]:
        raise PDEInputError(f"{path}: grid {omega.shape[-2:]} is not square")
    return {
        "omega": omega.astype(np.float32),
        "u": uu.astype(np.float32),
        "v": vv.astype(np.float32),
        "t": t - t[0],
    }


def transpose_xy(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same flow with the grid axes swapped: (u, v) -> (v, u) and omega -> -omega."""
    sw = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    return {
        **arrays,
        "omega": -sw(arrays["omega"]),
        "u": sw(arrays["v"]),
        "v": sw(arrays["u"]),
    }


def load_regime(spec: dict, name: str, seed: int) -> tuple[dict, dict, dict]:
    """(meta, train arrays, test arrays) of a regime read from its ``file`` (the same contract
    as ``generate.simulate_regime``): the first ``n_train`` samples after ``start`` train, the
    next ``n_test`` test; ``n_snapshots`` frames from the first."""
    from benchmarks.pde.generate import regime_params
    from benchmarks.pde.solvers import forcing_field

    r = spec["regimes"][name]
    fs = r["file"]
    n_train, n_test = int(r["n_train"]), int(r["n_test"])
    data = read_trajectories(fs["path"], fs["layout"], int(fs.get("start", 0)), n_train + n_test)
    if fs.get("transpose_xy"):
        data = transpose_xy(data)
    n_snap, n_file = int(spec["n_snapshots"]), data["omega"].shape[1]
    if n_file < n_snap:
        raise PDEInputError(
            f"regimes.{name}.file {fs['path']}: {n_file} frames, fewer than n_snapshots = {n_snap}"
        )
    t = data["t"][:n_snap]
    steps = np.diff(t)
    if len(steps) and not np.allclose(steps, steps[0], rtol=1e-6):
        raise PDEInputError(f"regimes.{name}.file {fs['path']}: frames are not evenly spaced")
    s = data["omega"].shape[-1]
    p = regime_params(spec, name)
    f = forcing_field(p["forcing"], s, p["forcing_amplitude"], p["forcing_wavenumber"])
    x = np.arange(s) / s

    def pack(sl):
        return {
            **{k: data[k][sl, :n_snap] for k in ("omega", "u", "v")},
            "t": t,
            "forcing": f,
            "x": x,
            "y": x.copy(),
        }

    train, test = pack(slice(0, n_train)), pack(slice(n_train, None))
    beta = p["beta"] if r["equation"] == "beta_plane" else 0.0
    meta = {
        "regime": name,
        "role": "source" if name == spec["source"] else "shifted",
        "equation": r["equation"],
        "params": {**p, "beta": beta},
        "grid": {"N": s, "L": 1.0},
        "dt_solver": None,
        "dt_record": float(steps[0]) if len(steps) else float(spec["dt_record"]),
        "n_snapshots": n_snap,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "forecast": dict(spec["forecast"]),
        "arrays": {k: list(a.shape) for k, a in train.items()},
        "file": {**fs, "path": str(fs["path"])},
    }
    return meta, train, test
