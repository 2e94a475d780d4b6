"""Planted-outlier variant of a model: ``python -m methods.quant.plant --model A --layers 1,3
--alpha 16 --channels 4 --out B``.

In each chosen layer, ``channels`` random intermediate channels j get ``up_proj[j, :] /= alpha``
and ``down_proj[:, j] *= alpha`` (SwiGLU is linear in the up branch), and ``channels`` random
value dimensions get ``v_proj[r, :] /= alpha`` and ``o_proj[:, r'] *= alpha`` for every query
head r' reading that value row (attention is linear in V). The float function is unchanged
(up to float32 rounding) while down_proj and o_proj get heavy-tailed outlier columns: the
planted layers are the ones whose low-bit quantization hurts, so sensitivity scores and
DSQ have real structure to find.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.io import atomic_write_json
from methods.quant.artifact import load_artifact
from methods.quant.model import decoder_layers
from methods.quant.quantizer import QuantConfigError


def plant_outliers(model, layers: list[int], alpha: float, channels: int, seed: int) -> dict:
    """Plant outlier columns in place; returns which channels were scaled per layer."""
    cfg = model.config
    n_layers = len(decoder_layers(model))
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise QuantConfigError(f"--layers: {bad} outside 0..{n_layers - 1}")
    if alpha <= 0:
        raise QuantConfigError(f"--alpha: {alpha} must be positive")
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d_h = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    g = torch.Generator().manual_seed(seed)
    planted = {}
    for i in layers:
        layer = decoder_layers(model)[i]
        mlp, attn = layer.mlp, layer.self_attn
        ff = torch.randperm(mlp.up_proj.out_features, generator=g)[:channels].tolist()
        with torch.no_grad():
            mlp.up_proj.weight[ff, :] /= alpha
            mlp.down_proj.weight[:, ff] *= alpha
            vrows = torch.randperm(kv * d_h, generator=g)[:channels].tolist()
            attn.v_proj.weight[vrows, :] /= alpha
            if attn.v_proj.bias is not None:
                attn.v_proj.bias[vrows] /= alpha
            for r in vrows:
                grp, t = divmod(r, d_h)
                for h in range(grp * (heads // kv), (grp + 1) * (heads // kv)):
                    attn.o_proj.weight[:, h * d_h + t] *= alpha
        planted[str(i)] = {"mlp_channels": sorted(ff), "v_rows": sorted(vrows)}
    return planted


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="artifact folder holding meta.json")
    ap.add_argument("--layers", required=True, help="comma-separated layer indices")
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with exit_on_user_error(QuantConfigError, FileNotFoundError, ValueError):
        layers = [int(x) for x in args.layers.split(",") if x.strip()]
        with provenance.timed() as t:
            model, tok, base_meta = load_artifact(args.model)
            planted = plant_outliers(model, layers, args.alpha, args.channels, args.seed)
            out = Path(args.out)
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            model.save_pretrained(out)
            tok.save_pretrained(out)
        base = base_meta.get("base_model", base_meta.get("name", ""))
        atomic_write_json(
            out / "meta.json",
            {
                "method": "plant",
                "kind": "planted",
                "base_model": base,
                "name": f"{base}-planted",
                "source": args.model,
                "seed": args.seed,
                "config": {"layers": layers, "alpha": args.alpha, "channels": args.channels},
                "planted": planted,
                "load": {},
                "provenance": provenance.capture(t["started_at"], t["wall_s"]),
            },
        )


if __name__ == "__main__":
    main()
