"""The unquantized reference of a D²Quant source (the FP16 rows of Tables 1-2): an artifact
whose ``meta.json`` points at the base model, so the generic evaluation rules (lm-eval with the
paper's tasks, WikiText-2 perplexity) score it exactly as they score the quantized variants.

``python -m methods.d2quant.reference <job options> --model artifacts/<scale>/base/<name>``

A hub or local base model is pointed at by its ``load`` entry; a model built here (a folder
holding ``config.json``) by its folder. Nothing is copied.
"""

from __future__ import annotations

from pathlib import Path

from claimbench.errors import ModelNotAvailableError
from claimbench.job import Job, job_parser, run_job
from claimbench.models import read_meta


def run(job: Job) -> None:
    base = Path(job.args.model)
    meta = read_meta(base)
    load = meta.get("load") or {}
    if not load:
        if not (base / "config.json").is_file():
            raise ModelNotAvailableError(f"{base}: neither a load entry nor config.json")
        load = {"path": str(base.resolve())}
    job.out.mkdir(parents=True, exist_ok=True)
    job.write_meta(
        kind=meta.get("kind", "local"),
        method="fp16",
        base_model=meta.get("base_model", meta.get("name", "")),
        source=str(base),
        load=load,
    )


def main(argv=None) -> None:
    ap = job_parser(__doc__, papers=["d2quant"])
    ap.add_argument("--model", required=True, help="the base model's artifact folder")
    run_job(ap, run, argv)


if __name__ == "__main__":
    main()
