"""Name a base model as the realignment reference or aligned model without copying weights:

    python -m methods.realign.link --scale S --paper realign --variant ref \\
        --src artifacts/S/base/NAME --out artifacts/S/realign/ref

The new artifact's meta.json carries the base's ``load`` (hub id / local path), or points at the
base folder when it holds weights, so ``from_pretrained`` loads the base itself (paper scale:
DeepSeek-R1-Distill-Qwen-1.5B as the reference, DeepScaleR-1.5B-Preview as the aligned model).
"""

from __future__ import annotations

from claimbench.job import Job, job_parser, run_job
from methods.posttrain.models import artifact_dir, read_meta


def link(job: Job) -> None:
    src = artifact_dir(job.args.src)
    meta = read_meta(src)
    load = meta.get("load") or {}
    if not (load.get("hub_id") or load.get("path")):
        load = {"path": str(src.resolve())}
    job.out.mkdir(parents=True, exist_ok=True)
    job.write_meta(
        method="base",
        base_model=meta.get("name", src.name),
        kind=meta.get("kind"),
        load=load,
        inputs={str(src): meta.get("name", src.name)},
    )


def main(argv: list[str] | None = None) -> None:
    ap = job_parser(__doc__, papers=["realign"], out="the linked artifact folder")
    ap.add_argument("--src", required=True, help="the base model's artifact folder")
    run_job(ap, link, argv)


if __name__ == "__main__":
    main()
