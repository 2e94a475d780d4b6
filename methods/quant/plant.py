"""Planted-outlier variant of a model: ``python -m methods.quant.plant <job options> --model A
--layers 1,3 --alpha 16 --channels 4`` (the job's ``--out`` is the new artifact folder; the
model is loaded and planted in the job's dtype on its device, the channels drawn with the job's
seed).

In each chosen layer, ``channels`` random intermediate channels j get ``up_proj[j, :] /= alpha``
and ``down_proj[:, j] *= alpha`` (SwiGLU is linear in the up branch), and ``channels`` random
value dimensions get ``v_proj[r, :] /= alpha`` and ``o_proj[:, r'] *= alpha`` for every query
head r' reading that value row (attention is linear in V). The float function is unchanged
(up to rounding in the model's dtype) while down_proj and o_proj get heavy-tailed outlier columns: the
planted layers are the ones whose low-bit quantization hurts, so sensitivity scores and
DSQ have real structure to find.
"""

from __future__ import annotations

import shutil

import torch

from claimbench.job import Job, job_parser, run_job
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


def run(job: Job) -> None:
    args = job.args
    layers = [int(x) for x in args.layers.split(",") if x.strip()]
    model, tok, base_meta = load_artifact(args.model, job.device, job.torch_dtype)
    planted = plant_outliers(model, layers, args.alpha, args.channels, job.seed)
    if job.out.exists():
        shutil.rmtree(job.out)
    job.out.mkdir(parents=True)
    model.save_pretrained(job.out)
    tok.save_pretrained(job.out)
    job.write_meta(
        method="plant",
        kind="planted",
        base_model=base_meta.get("base_model", base_meta.get("name", "")),
        source=args.model,
        config={"layers": layers, "alpha": args.alpha, "channels": args.channels},
        planted=planted,
        load={},
    )


def main(argv=None) -> None:
    ap = job_parser(__doc__, papers=["quant", "nsds"])
    ap.add_argument("--model", required=True, help="artifact folder holding meta.json")
    ap.add_argument("--layers", required=True, help="comma-separated layer indices")
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--channels", type=int, default=4)
    run_job(ap, run, argv, errors=(QuantConfigError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    main()
