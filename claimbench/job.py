"""The job layer: one typed job per entry point, and the only writer of ``meta.json`` and records.

Every ``python -m methods...`` / ``python -m benchmarks...`` entry point builds its parser with
:func:`job_parser` (or :func:`add_job_options` on a subcommand), adds only the options that are
its own, and runs through :func:`run_job`. The parsed :class:`Job` carries

* ``scale``, ``paper``, ``variant`` (all three required: a rule that forgets one fails at once
  instead of mislabelling the record),
* ``seed``, ``threads``, ``device`` and ``dtype`` (defaults: the scale file's ``seed``,
  ``threads``, ``device`` and ``dtype``, whose own defaults live in ``config/schema``),
* ``out`` (the artifact folder or the record file the job writes),
* ``config``: the paper's ``papers.<paper>`` section of the scale file, validated against
  ``config/schema/papers/<paper>.schema.yaml`` with the schema's defaults filled in
  (:func:`claimbench.config.load_scale`); ``scale_config`` is the whole validated scale file.

Only this module writes an artifact's ``meta.json`` (:meth:`Job.write_meta`: atomic, last,
with provenance) and builds run records (:meth:`Job.record`: scale, paper, variant, seed and
provenance filled in). ``tests/test_job.py`` greps the tree so that it stays that way.

Device and dtype: ``--device auto`` picks ``cuda`` when torch sees a GPU and ``cpu`` otherwise;
``--dtype`` is the dtype models are loaded and trained in (:attr:`Job.torch_dtype`). The tiny
scale is float32 on CPU and therefore bit-for-bit repeatable.
"""

from __future__ import annotations

import argparse
import io
import json
import linecache
import os
import re
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claimbench import provenance
from claimbench.errors import ClaimbenchError, ConfigError, exit_on_user_error
from claimbench.io import atomic_write_json
from claimbench.records import SCALES, make_run_record, write_run_record

DTYPES = ("float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Papers whose scale section is not under ``papers:`` (the base models and benchmark data).
NO_SECTION = ("base",)


def _device_arg(value: str) -> str:
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not auto, cpu, cuda or cuda:<index>")
    return value


def _name_arg(value: str) -> str:
    if not _NAME.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} must start with a letter or digit and hold only letters, digits, '_.-'"
        )
    return value


def _nonneg_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 0 or n >= 2**31:
        raise argparse.ArgumentTypeError(f"{value!r} must lie in [0, 2^31)")
    return n


def _pos_int(value: str) -> int:
    n = _nonneg_int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return n


def add_job_options(
    ap: argparse.ArgumentParser,
    *,
    papers: Iterable[str] | None = None,
    out: str = "the artifact folder (or record file) this job writes",
) -> argparse.ArgumentParser:
    """The options every job shares; ``papers`` restricts ``--paper`` to the entry's own."""
    g = ap.add_argument_group("job (claimbench.job)")
    g.add_argument("--scale", required=True, choices=SCALES, help="tiny | small | paper")
    g.add_argument(
        "--paper",
        required=True,
        type=_name_arg,
        choices=sorted(papers) if papers else None,
        help="paper package name (its section of the scale file is the job's config)",
    )
    g.add_argument("--variant", required=True, type=_name_arg, help="artifact variant name")
    g.add_argument("--out", required=True, help=out)
    g.add_argument(
        "--scale-file", default=None, help="scale file (default config/scales/<scale>.yaml)"
    )
    g.add_argument("--seed", type=_nonneg_int, default=None, help="default: the scale's seed")
    g.add_argument("--threads", type=_pos_int, default=None, help="default: the scale's threads")
    g.add_argument(
        "--device", type=_device_arg, default=None, help="auto|cpu|cuda[:i]; default: the scale's"
    )
    g.add_argument("--dtype", choices=DTYPES, default=None, help="default: the scale's dtype")
    return ap


def job_parser(description: str | None, **kw: Any) -> argparse.ArgumentParser:
    """A parser with the job options; the entry point adds only its own."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return add_job_options(ap, **kw)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a missing GPU is a user error."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {device}: torch sees no GPU on this machine "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "use --device cpu or auto"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return device


@dataclass
class Job:
    """One job of the workflow: who it is, where it runs, what it writes."""

    scale: str
    paper: str
    variant: str
    seed: int
    threads: int
    device: str
    dtype: str
    out: Path
    config: dict[str, Any]
    scale_config: dict[str, Any]
    args: argparse.Namespace
    started_at: str = field(default_factory=provenance.now_iso)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    # -- device and dtype -------------------------------------------------------------------
    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    def to(self, module_or_tensor):
        """Move a model (or tensor) to the job's device and dtype (floating tensors only)."""
        import torch

        if isinstance(module_or_tensor, torch.Tensor) and not module_or_tensor.is_floating_point():
            return module_or_tensor.to(self.device)
        return module_or_tensor.to(device=self.device, dtype=self.torch_dtype)

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``from_pretrained`` for the job's dtype."""
        return {"dtype": self.torch_dtype}

    def setup(self) -> Job:
        """Torch threads and the global seeds; called by :func:`run_job` before the entry runs."""
        import random
        import sys

        random.seed(self.seed)
        # Threads: torch reads OMP_NUM_THREADS when it is first imported, so a module that
        # imports torch lazily still runs on the job's threads (and does not oversubscribe the
        # cores Snakemake gave the other jobs); a job that never imports torch does not pay.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(self.threads)
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            torch.set_num_threads(self.threads)
            torch.manual_seed(self.seed)
        return self

    # -- provenance, meta.json and run records -----------------------------------------------
    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._t0

    def provenance(self, wall_s: float | None = None, started_at: str | None = None) -> dict:
        """Provenance of this job (git sha, versions, host, wall time, device and dtype)."""
        prov = provenance.capture(
            started_at or self.started_at, self.wall_s if wall_s is None else wall_s
        )
        prov["device"] = _device_label(self.device)
        prov["dtype"] = self.dtype
        prov["threads"] = self.threads
        return prov

    def meta(self, **fields: Any) -> dict[str, Any]:
        """An artifact's ``meta.json`` content: the job's identity, then the method's fields."""
        meta = {
            "name": self.variant,
            "paper": self.paper,
            "scale": self.scale,
            "seed": self.seed,
            "dtype": self.dtype,
        }
        meta.update(fields)
        meta.setdefault("provenance", self.provenance())
        return meta

    def write_meta(self, folder: str | os.PathLike | None = None, **fields: Any) -> Path:
        """Write ``<folder>/meta.json`` atomically (last: its presence marks the artifact done).

        ``folder`` defaults to the job's ``--out``; ``fields`` are the method's own keys
        (``kind``, ``method``, ``base_model``, ``load``, ``inputs``, ``config``, ...).
        """
        folder = Path(self.out if folder is None else folder)
        return atomic_write_json(folder / "meta.json", self.meta(**fields))

    def record(
        self,
        *,
        suite: str,
        metrics: list[dict],
        base_model: str,
        method: str | None = None,
        tasks: Iterable[str] | None = None,
        config: dict | None = None,
        variant: str | None = None,
        paper: str | None = None,
        task_hashes: dict[str, str] | None = None,
        samples: str | None = None,
        series: list[dict] | None = None,
        provenance: dict | None = None,
    ) -> dict[str, Any]:
        """A run record of this job (contract: ``claimbench.records``).

        ``variant`` / ``paper`` default to the job's; a job that measures several artifacts
        (a sweep, a summary) names each. ``tasks`` defaults to the metrics' tasks.
        """
        return make_run_record(
            scale=self.scale,
            paper=paper or self.paper,
            method=method or self.paper,
            variant=variant or self.variant,
            base_model=base_model,
            suite=suite,
            tasks=list(tasks) if tasks is not None else sorted({m["task"] for m in metrics}),
            seed=self.seed,
            config=self.config if config is None else config,
            metrics=metrics,
            provenance=provenance or self.provenance(),
            task_hashes=task_hashes,
            samples=samples,
            series=series,
        )

    def write_record(self, record: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
        """Write a record atomically (default path: the job's ``--out``)."""
        return write_run_record(self.out if path is None else path, record)


def _device_label(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device}:{provenance.device_name().removeprefix('cuda:')}"
    return device


def job_from_args(args: argparse.Namespace) -> Job:
    """Resolve the parsed options into a :class:`Job` (loads and validates the scale file)."""
    from claimbench.config import SCHEMA_DIR, load_scale, read_yaml, validate_with_defaults

    scale_cfg = load_scale(args.scale, args.scale_file, papers=[args.paper])
    section: dict[str, Any] = {}
    if args.paper not in NO_SECTION:
        papers = scale_cfg.get("papers") or {}
        if args.paper in papers:
            section = papers[args.paper]  # validated, defaults filled, by load_scale
        elif (SCHEMA_DIR / "papers" / f"{args.paper}.schema.yaml").is_file():
            # no section in this scale file: the schema's defaults alone (or its error)
            where = f"{args.scale_file or f'config/scales/{args.scale}.yaml'}: papers.{args.paper}"
            schema = read_yaml(SCHEMA_DIR / "papers" / f"{args.paper}.schema.yaml")
            section = validate_with_defaults({}, schema, where)
    device = resolve_device(args.device or scale_cfg["device"])
    return Job(
        scale=args.scale,
        paper=args.paper,
        variant=args.variant,
        seed=scale_cfg["seed"] if args.seed is None else args.seed,
        threads=args.threads or scale_cfg["threads"],
        device=device,
        dtype=args.dtype or scale_cfg["dtype"],
        out=Path(args.out),
        config=section,
        scale_config=scale_cfg,
        args=args,
    )


def run_job(
    ap: argparse.ArgumentParser,
    run: Callable[[Job], None],
    argv: list[str] | None = None,
    errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError),
) -> None:
    """Parse ``argv`` into a job and call ``run(job)``; ``job.args`` holds the entry's options.

    A user error (``ClaimbenchError`` or one of ``errors``) prints one line and exits 2, and so
    does a library's error about a damaged or missing input (a truncated ``.npz`` or
    ``model.safetensors``, broken JSON, an ``OSError``): the line names the file the library was
    reading (:func:`input_error`). Ctrl-C exits 130 without a traceback. Anything else is a bug
    and keeps its traceback. A subcommand parser may set ``run`` per subcommand with
    ``set_defaults(run=...)``.
    """
    args = ap.parse_args(argv)
    try:
        with exit_on_user_error(*errors):
            try:
                job = job_from_args(args).setup()
                (getattr(args, "run", None) or run)(job)
            except ClaimbenchError:
                raise
            except Exception as e:
                line = input_error(e, errors)
                if line is None:
                    raise
                raise ClaimbenchError(line) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def input_error(e: Exception, user: tuple[type[BaseException], ...] = ()) -> str | None:
    """One line for an exception caused by a job's input, naming the file; None for a bug.

    Library errors (``zipfile.BadZipFile``, safetensors, JSON, ``OSError``...) rarely name the
    file they were reading; :func:`_input_file` finds it in the failing call's frames.
    """
    from claimbench.errors import describe

    path = _input_file(e.__traceback__)
    if isinstance(e, json.JSONDecodeError) and path:
        return _json_error(e, path)
    line = describe(e, path)
    if line is None and isinstance(e, user):
        line = " ".join(str(e).split()) or type(e).__name__
        if path and path not in line:
            line = f"{path}: {line}"
    return line


def _json_error(e: json.JSONDecodeError, path: str) -> str:
    """``<path>: line L column C: not valid JSON (...)`` with L counted in the file, not in the
    text the decoder saw (one line of a JSONL file, or the whole file)."""
    doc = e.doc or ""
    pos = min(e.pos, len(doc.rstrip()))  # a document cut short fails at its end, not below it
    line, col = doc.count("\n", 0, pos) + 1, pos - doc.rfind("\n", 0, pos)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        start = text.find(doc) if doc else -1
        if start >= 0:
            line += text.count("\n", 0, start)
    except OSError:
        pass
    return f"{path}: line {line} column {col}: not valid JSON ({e.msg})"


def _is_library(filename: str) -> bool:
    """A frame of the standard library or an installed package (not of this checkout)."""
    return filename.startswith(_LIBRARY) or filename.startswith("<frozen ")


_LIBRARY = tuple(
    {os.path.join(sysconfig.get_paths()[k], "") for k in ("stdlib", "platstdlib", "purelib")}
    | {os.path.join(sysconfig.get_paths()["platlib"], "")}
)


def _input_file(tb) -> str | None:
    """The file a library call was reading when it raised, or None when the exception was
    raised by the project's own code (whose messages name their files).

    Walks from the raising frame out to the first frame of the project (the call site), and
    returns the first local that is an existing file (a path, or an open file's ``name``),
    preferring the names on the failing line: numpy's ``file``, safetensors' ``filename``,
    transformers' ``checkpoint_file``, or the caller's ``path`` around a ``json.loads``.
    """
    frames = list(traceback.walk_tb(tb))[::-1]
    if not frames or not _is_library(frames[0][0].f_code.co_filename):
        return None
    for frame, lineno in frames:
        source = linecache.getline(frame.f_code.co_filename, lineno)
        named = set(re.findall(r"[A-Za-z_]\w*", source))
        local = list(frame.f_locals.items())
        for value in [v for k, v in local if k in named] + [v for k, v in local if k not in named]:
            path = _as_file(value)
            if path:
                return path
        if not _is_library(frame.f_code.co_filename):
            break
    return None


def _as_file(value: Any) -> str | None:
    if isinstance(value, io.IOBase):
        value = getattr(value, "name", None)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value:
        return None
    try:
        return value if os.path.isfile(value) else None
    except (OSError, ValueError):
        return None
