"""Small builders shared by tests: run records and claims files in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from claimbench import provenance
from claimbench.io import atomic_write_jsonl
from claimbench.records import make_run_record, metric, write_run_record


def write_record(
    runs: Path,
    variant: str,
    metrics: list[tuple],
    *,
    scale: str = "tiny",
    paper: str = "demo",
    suite: str = "lm_eval",
    samples: list[dict] | None = None,
    task_hashes: dict | None = None,
) -> Path:
    """metrics: (task, name, value, stderr) tuples."""
    path = runs / scale / paper / variant / f"{suite}.json"
    sname = None
    if samples is not None:
        sname = f"{suite}.samples.jsonl"
        atomic_write_jsonl(path.parent / sname, samples)
    rec = make_run_record(
        scale=scale,
        paper=paper,
        method=paper,
        variant=variant,
        base_model="lm-s",
        suite=suite,
        tasks=sorted({m[0] for m in metrics}),
        seed=0,
        config={"variant": variant},
        metrics=[metric(t, n, v, stderr=s, n=100, higher_is_better=True) for t, n, v, s in metrics],
        provenance=provenance.capture(),
        task_hashes=task_hashes or {m[0]: "h" + m[0] for m in metrics},
        samples=sname,
    )
    write_run_record(path, rec)
    return path


def write_claims(methods: Path, paper: str, claims: list[dict], pkg: str | None = None) -> Path:
    path = methods / (pkg or paper) / "claims.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"paper": paper, "title": f"Paper {paper}", "claims": claims}))
    return path
