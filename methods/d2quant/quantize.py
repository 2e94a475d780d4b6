"""D²Quant pipeline (spec §2.4): per layer, GPTQ on q/k/v/o; DAC at the post-attention norm
(float stream vs quantized stream); GPTQ on gate/up; DSQ on down_proj with its channel scales
folded into up_proj's scales.

``python -m methods.d2quant.quantize --model A --bits 2 --group-size G --calib text
[--heldout text] [--no-dsq] [--no-dac] [--dac-input quantized|float] [--iters 15] --out B
[--record stats.json]``

``--dac-input`` picks one of the two readings the spec leaves open (§2.3) for H̃:
``quantized`` (default, the spec's [STD] choice) runs the quantized model's own stream up to
the norm, so μ also corrects the drift of earlier layers; ``float`` runs the float stream's
input through the quantized attention (the paper figure's literal drawing), so μ corrects this
layer's own deviation only.

Writes the same artifact as ``methods.quant.apply`` (packed checkpoint, float32 eval copy,
meta.json last) and a run record (suite ``d2quant``) with DSQ's per-layer output error against
plain GPTQ and DAC's mean shift before/after on calibration and held-out text.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from claimbench import provenance
from claimbench.errors import exit_on_user_error
from claimbench.records import make_run_record, metric, series, write_run_record
from methods.d2quant.dac import NormWithBias, bias_into_mlp, mean_deviation
from methods.d2quant.dsq import dual_scale_quantize, fold_into_up
from methods.quant.artifact import load_artifact, write_quantized_artifact
from methods.quant.model import (
    SequentialQuantizer,
    calibration_ids,
    decoder_layers,
    run_layer,
    set_weight,
    uniform_plan,
    validate_plan,
)
from methods.quant.quantizer import QuantConfigError, check_bits


def check_model(model) -> None:
    """D²Quant needs a SwiGLU MLP (up_proj, down_proj) and a post-attention norm per layer."""
    for i, layer in enumerate(decoder_layers(model)):
        for part in ("mlp.up_proj", "mlp.gate_proj", "mlp.down_proj", "post_attention_layernorm"):
            try:
                layer.get_submodule(part)
            except AttributeError:
                raise QuantConfigError(
                    f"{type(model).__name__}: layer {i} has no {part} (D²Quant needs a "
                    "gate/up/down MLP and a post-attention norm)"
                ) from None


def norm_outputs(layer, x, kw) -> torch.Tensor:
    got = {}
    h = layer.post_attention_layernorm.register_forward_hook(
        lambda _m, _a, out: got.__setitem__("h", out)
    )
    try:
        run_layer(layer, x, kw)
    finally:
        h.remove()
    return got["h"]


def rel_norm(v: torch.Tensor, h: torch.Tensor) -> float:
    """‖v‖ relative to the RMS norm of the activations it shifts (per token, averaged)."""
    return float(v.norm() / h.reshape(-1, h.shape[-1]).norm(dim=-1).mean())


DAC_INPUTS = ("quantized", "float")


class D2QuantQuantizer(SequentialQuantizer):
    def __init__(
        self,
        model,
        plan,
        group_size,
        calib,
        dsq=True,
        dac=True,
        iters=15,
        fp_model=None,
        dac_input="quantized",
        **kw,
    ):
        if dac_input not in DAC_INPUTS:
            raise QuantConfigError(f"dac_input: {dac_input!r} is not one of {DAC_INPUTS}")
        fp = (fp_model if fp_model is not None else copy.deepcopy(model)) if dac else None
        super().__init__(model, plan, group_size, "gptq", calib, fp_model=fp, **kw)
        self.dsq, self.dac, self.iters, self.dac_input = dsq, dac, iters, dac_input
        self.mu: dict[int, torch.Tensor] = {}
        self.dsq_errors: dict[int, list[float]] = {}
        self.c: dict[int, torch.Tensor] = {}
        self.dac_calib: dict[int, dict] = {}

    def after_attention(self, i, layer, fp_layer, x, x_fp, kw) -> None:
        if not self.dac:
            return
        # H̃: the quantized layer (attention already quantized) on its own stream, or on the
        # float stream's input (--dac-input float: this layer's deviation only).
        src = x if self.dac_input == "quantized" else x_fp
        h_fp = norm_outputs(fp_layer, x_fp, kw)
        h_q = norm_outputs(layer, src, kw)
        mu = mean_deviation(h_fp, h_q)  # DAC: μ = mean_t (H_t − H̃_t)
        layer.post_attention_layernorm = NormWithBias(layer.post_attention_layernorm, mu)
        after = mean_deviation(h_fp, norm_outputs(layer, src, kw))
        self.mu[i] = mu
        self.dac_calib[i] = {"before": rel_norm(mu, h_fp), "after": rel_norm(after, h_fp)}

    def quantize_stage(self, i, layer, roles, H, x, kw) -> None:
        if not (self.dsq and "mlp.down_proj" in roles):
            return super().quantize_stage(i, layer, roles, H, x, kw)
        name = f"model.layers.{i}.mlp.down_proj"
        down = layer.mlp.down_proj
        res = dual_scale_quantize(
            down.weight.data,
            H["mlp.down_proj"],
            self.plan[name],
            self.group_size,
            iters=self.iters,
            damp=self.damp,
            clip=self.clip,
        )
        self.quantized[name] = res.qweight
        set_weight(down, res.qweight)
        up_name = f"model.layers.{i}.mlp.up_proj"
        if up_name in self.quantized:  # fold c into up_proj's per-row scales (zero bits)
            self.quantized[up_name] = fold_into_up(self.quantized[up_name], res.c)
            set_weight(layer.mlp.up_proj, self.quantized[up_name])
        else:
            layer.mlp.up_proj.weight.data.mul_(res.c[:, None])
        self.dsq_errors[i] = res.errors
        self.c[i] = res.c

    def after_layer(self, i, layer, fp_layer, x, x_fp, kw) -> None:
        if self.dac:
            bias_into_mlp(layer, self.mu[i])

    def run(self):
        out = super().run()
        if self.dac:
            self.model.config.mlp_bias = True
            for layer in decoder_layers(self.model):
                if layer.mlp.gate_proj.bias is None:
                    bias_into_mlp(
                        layer,
                        torch.zeros(layer.mlp.gate_proj.in_features, device=self.calib.device),
                    )
        return out


def heldout_shift(fp_model, q_model, mu: dict[int, torch.Tensor], ids) -> dict[int, dict]:
    """Per layer, on held-out text: mean deviation at the post-attention norm output without
    this layer's DAC bias (``before``) and with it (``after``), relative to the activations."""
    got = {}

    def grab(model, tag):
        hooks = [
            layer.post_attention_layernorm.register_forward_hook(
                lambda _m, _a, out, i=i: got.__setitem__((tag, i), out)
            )
            for i, layer in enumerate(decoder_layers(model))
        ]
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()

    grab(fp_model, "fp")
    grab(q_model, "q")
    out = {}
    for i, m in mu.items():
        d = mean_deviation(got[("fp", i)], got[("q", i)])
        out[i] = {"before": rel_norm(d, got[("fp", i)]), "after": rel_norm(d - m, got[("fp", i)])}
    return out


def stats_record(args, q: D2QuantQuantizer, held: dict, meta: dict) -> dict:
    metrics, curves = [], []
    layers = sorted(q.dsq_errors)
    if layers:
        ratios = [q.dsq_errors[i][0] and min(q.dsq_errors[i]) / q.dsq_errors[i][0] for i in layers]
        metrics += [
            metric(
                "dsq", "down_error_ratio_mean", sum(ratios) / len(ratios), higher_is_better=False
            ),
            metric("dsq", "down_error_ratio_max", max(ratios), higher_is_better=False),
        ]
        curves.append(series("DSQ/GPTQ down_proj output error", layers, ratios, "layer", "ratio"))
        for i in layers:
            e = q.dsq_errors[i]
            curves.append(
                series(
                    f"DSQ error by iteration, layer {i}",
                    list(range(len(e))),
                    [v / e[0] for v in e],
                    "iteration",
                    "error / GPTQ error",
                )
            )
    if q.dac_calib:
        ls = sorted(q.dac_calib)
        for tag, src in (("dac_calib", q.dac_calib), ("dac_heldout", held)):
            if not src:
                continue
            before = [src[i]["before"] for i in ls]
            after = [src[i]["after"] for i in ls]
            metrics += [
                metric(tag, "shift_before_mean", sum(before) / len(before), higher_is_better=False),
                metric(tag, "shift_after_mean", sum(after) / len(after), higher_is_better=False),
                metric(tag, "shift_after_max", max(after), higher_is_better=False),
            ]
            curves += [
                series(f"{tag} mean shift before DAC", ls, before, "layer", "|mu| / rms"),
                series(f"{tag} mean shift after DAC", ls, after, "layer", "|mu| / rms"),
            ]
    s = meta["size"]
    metrics += [
        metric("size", "avg_bits", s["avg_bits"], higher_is_better=False),
        metric("size", "file_bytes", s["file_bytes"], higher_is_better=False),
        metric("size", "reload_max_abs_diff", meta["reload_max_abs_diff"], higher_is_better=False),
    ]
    return make_run_record(
        scale=args.scale,
        paper="d2quant",
        method=meta["method"],
        variant=args.variant or meta["method"],
        base_model=meta.get("base_model", ""),
        suite="d2quant",
        tasks=sorted({m["task"] for m in metrics}),
        seed=args.seed,
        config=meta["config"],
        metrics=metrics,
        provenance=meta["provenance"],
        series=curves,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", required=True, help="artifact folder holding meta.json")
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--group-size", type=int, required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--heldout", help="text for the held-out DAC measurement")
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--no-dsq", dest="dsq", action="store_false")
    ap.add_argument("--no-dac", dest="dac", action="store_false")
    ap.add_argument(
        "--dac-input",
        default="quantized",
        choices=DAC_INPUTS,
        help="H̃'s input: 'quantized' (own stream, default) or 'float' (float stream's input)",
    )
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--clip", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--record")
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--variant")
    args = ap.parse_args(argv)
    with exit_on_user_error(QuantConfigError, FileNotFoundError):
        check_bits(args.bits, "--bits")
        if args.iters < 1:
            raise QuantConfigError(f"--iters: {args.iters} must be at least 1")
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        with provenance.timed() as t:
            model, tok, base_meta = load_artifact(args.model)
            check_model(model)
            model.to(args.device)
            plan = validate_plan(model, uniform_plan(model, args.bits), args.group_size, "--bits")
            calib = calibration_ids(tok, args.calib, args.n_calib, args.seq_len, args.seed)
            calib = calib.to(args.device)
            fp = copy.deepcopy(model)
            q = D2QuantQuantizer(
                model,
                plan,
                args.group_size,
                calib,
                dsq=args.dsq,
                dac=args.dac,
                iters=args.iters,
                fp_model=fp,
                dac_input=args.dac_input,
                clip=args.clip,
                damp=args.damp,
            )
            quantized = q.run()
            held = {}
            if args.dac and args.heldout:
                ids = calibration_ids(tok, args.heldout, args.n_calib, args.seq_len, args.seed + 1)
                ids = ids.to(args.device)
                held = heldout_shift(fp, model, q.mu, ids)
        method = {(True, True): "d2quant", (True, False): "dsq", (False, True): "dac"}.get(
            (args.dsq, args.dac), "gptq"
        )
        config = {
            "method": method,
            "bits": args.bits,
            "group_size": args.group_size,
            "dsq": args.dsq,
            "dac": args.dac,
            "dac_input": args.dac_input if args.dac else None,
            "iters": args.iters if args.dsq else 0,
            "clip": args.clip,
            "damp": args.damp,
            "n_calib": args.n_calib,
            "seq_len": args.seq_len,
            "backend": "gptq",
        }
        extra = {"plan.json": plan}
        if q.c:
            extra["dsq_scales.json"] = {str(i): c.tolist() for i, c in q.c.items()}
        if q.mu:
            extra["dac_bias.json"] = {str(i): m.tolist() for i, m in q.mu.items()}
        meta = write_quantized_artifact(
            model,
            tok,
            quantized,
            args.out,
            {
                "method": method,
                "base_model": base_meta.get("base_model", base_meta.get("name", "")),
                "source": args.model,
                "seed": args.seed,
                "config": config,
                "plan": plan,
                "inputs": {"calib": args.calib, "heldout": args.heldout},
            },
            t["started_at"],
            t["wall_s"],
            extra_files=extra,
        )
        if args.record:
            write_run_record(args.record, stats_record(args, q, held, meta))
        print(json.dumps(meta["size"]))


if __name__ == "__main__":
    main()
