"""Write a scale file whose MTP-D grid is the pretrained-trunk protocol of
``methods/mtp_d/trunk_protocol.yaml``: ``python -m methods.mtp_d.trunk_scale paper my-scale.yaml``,
then ``snakemake ... --config scale=paper scale_file=my-scale.yaml``.

The scale's own file is copied with ``papers.mtp_d`` replaced by the protocol's section and the
trunk's ``models`` entry added; the result is validated like any scale file."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from claimbench.config import CONFIG_DIR, load_scale
from claimbench.io import atomic_write_text

PROTOCOL = Path(__file__).with_name("trunk_protocol.yaml")


def trunk_scale(scale: str) -> dict:
    """The scale file's content with the trunk protocol as ``papers.mtp_d``."""
    protocols = yaml.safe_load(PROTOCOL.read_text(encoding="utf-8"))
    if scale not in protocols:
        raise SystemExit(f"{PROTOCOL}: no protocol for scale {scale!r} (have {sorted(protocols)})")
    data = yaml.safe_load((CONFIG_DIR / "scales" / f"{scale}.yaml").read_text(encoding="utf-8"))
    data["models"] = {**data["models"], **(protocols[scale].get("model") or {})}
    data["papers"]["mtp_d"] = protocols[scale]["mtp_d"]
    return data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scale", help="the scale whose file is copied: small or paper")
    ap.add_argument("dest", help="the scale file to write")
    args = ap.parse_args(argv)
    atomic_write_text(Path(args.dest), yaml.safe_dump(trunk_scale(args.scale), sort_keys=False))
    load_scale(args.scale, args.dest)  # validated as a run would
    print(args.dest)


if __name__ == "__main__":
    main()
