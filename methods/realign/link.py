"""Name a base model as the realignment reference or aligned model without copying weights:
``python -m methods.realign.link --src artifacts/paper/base/NAME --variant ref --out DIR``.

The new artifact's meta.json carries the base's ``load`` (hub id / local path), or points at the
base folder when it holds weights, so ``from_pretrained`` loads the base itself (paper scale:
DeepSeek-R1-Distill-Qwen-1.5B as the reference, DeepScaleR-1.5B-Preview as the aligned model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_json
from methods.posttrain.models import artifact_dir, read_meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for a in ("--src", "--variant", "--out"):
        ap.add_argument(a, required=True)
    args = ap.parse_args(argv)
    with exit_on_user_error(ValueError, FileNotFoundError):
        src = artifact_dir(args.src)
        meta = read_meta(src)
        load = meta.get("load") or {}
        if not (load.get("hub_id") or load.get("path")):
            load = {"path": str(src.resolve())}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            Path(args.out) / "meta.json",
            {
                "name": args.variant,
                "method": "base",
                "paper": "realign",
                "base_model": meta.get("name", src.name),
                "kind": meta.get("kind"),
                "load": load,
                "inputs": {str(src): meta.get("name", src.name)},
                "provenance": provenance.capture(),
            },
        )


if __name__ == "__main__":
    main()
