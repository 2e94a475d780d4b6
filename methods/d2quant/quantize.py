"""D²Quant pipeline (paper Fig. 3; equations in methods/d2quant/README.md): per layer, GPTQ on
q/k/v/o; DAC at the post-attention norm (float stream vs quantized stream); GPTQ on gate/up; DSQ
on down_proj with its channel scales folded into up_proj's scales.

``python -m methods.d2quant.quantize <job options> --model A --bits 2 --calib text
[--heldout text] [--no-dsq] [--no-dac] [--dac-input quantized|float] [--record stats.json]``

Job options (``claimbench.job``): ``--scale --paper d2quant --variant --out`` and optionally
``--seed --threads --device --dtype --scale-file``. Group size, calibration (``calib.n`` windows
of ``calib.seq_len`` tokens), DSQ iterations, damping and range clipping come from the scale's
``papers.d2quant`` section (defaults in config/schema/papers/d2quant.schema.yaml).

``--dac-input`` picks one of the two readings of H̃ that the paper leaves open (README, "DAC"):
``quantized`` (default) runs the quantized model's own stream up to the norm, so μ also corrects
the drift of earlier layers; ``float`` runs the float stream's input through the quantized
attention (Fig. 3's literal drawing), so μ corrects this layer's own deviation only.

Writes the same artifact as ``methods.quant.apply`` (packed checkpoint, decoded copy in the
job's dtype, meta.json last) and a run record (suite ``d2quant``) with DSQ's per-layer output
error against plain GPTQ and DAC's mean shift before/after on calibration and held-out text.
"""

from __future__ import annotations

import copy
import json

import torch

from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
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
                    gate = layer.mlp.gate_proj.weight
                    zero = torch.zeros(gate.shape[1], dtype=gate.dtype, device=gate.device)
                    bias_into_mlp(layer, zero)
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


def stats_record(job: Job, q: D2QuantQuantizer, held: dict, meta: dict) -> dict:
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
    return job.record(
        suite="d2quant",
        method=meta["method"],
        base_model=meta.get("base_model", ""),
        tasks=sorted({m["task"] for m in metrics}),
        config=meta["config"],
        metrics=metrics,
        provenance=meta["provenance"],
        series=curves,
    )


def run(job: Job) -> None:
    args, cfg = job.args, job.config
    check_bits(args.bits, "--bits")
    group_size, n_calib, seq_len = cfg["group_size"], cfg["calib"]["n"], cfg["calib"]["seq_len"]
    iters, damp, clip = cfg["iters"], cfg["damp"], cfg["clip"]
    model, tok, base_meta = load_artifact(args.model, job.device, job.torch_dtype)
    check_model(model)
    plan = validate_plan(model, uniform_plan(model, args.bits), group_size, "--bits")
    calib = calibration_ids(tok, args.calib, n_calib, seq_len, job.seed).to(job.device)
    # DAC compares the float model's stream with the quantized one at every layer (Fig. 3), so
    # a second, unquantized copy of the model is kept, in the job's dtype on its device. DSQ and
    # GPTQ compute each layer's Hessian, Cholesky and c-step solve in float64 locally.
    fp = copy.deepcopy(model) if args.dac else None
    q = D2QuantQuantizer(
        model,
        plan,
        group_size,
        calib,
        dsq=args.dsq,
        dac=args.dac,
        iters=iters,
        fp_model=fp,
        dac_input=args.dac_input,
        clip=clip,
        damp=damp,
    )
    quantized = q.run()
    held = {}
    if args.dac and args.heldout:
        ids = calibration_ids(tok, args.heldout, n_calib, seq_len, job.seed + 1).to(job.device)
        held = heldout_shift(fp, model, q.mu, ids)
    del fp
    method = {(True, True): "d2quant", (True, False): "dsq", (False, True): "dac"}.get(
        (args.dsq, args.dac), "gptq"
    )
    config = {
        "method": method,
        "bits": args.bits,
        "group_size": group_size,
        "dsq": args.dsq,
        "dac": args.dac,
        "dac_input": args.dac_input if args.dac else None,
        "iters": iters if args.dsq else 0,
        "clip": clip,
        "damp": damp,
        "n_calib": n_calib,
        "seq_len": seq_len,
        "backend": "gptq",
    }
    extra = {"plan.json": plan}
    if q.c:
        extra["dsq_scales.json"] = {str(i): c.tolist() for i, c in q.c.items()}
    if q.mu:
        extra["dac_bias.json"] = {str(i): m.float().tolist() for i, m in q.mu.items()}
    meta = write_quantized_artifact(
        job,
        model,
        tok,
        quantized,
        {
            "method": method,
            "base_model": base_meta.get("base_model", base_meta.get("name", "")),
            "source": args.model,
            "config": config,
            "plan": plan,
            "inputs": {"calib": args.calib, "heldout": args.heldout},
        },
        extra_files=extra,
    )
    if args.record:
        job.write_record(stats_record(job, q, held, meta), args.record)
    print(json.dumps(meta["size"]))


def main(argv=None) -> None:
    ap = job_parser(__doc__, papers=["d2quant"])
    ap.add_argument("--model", required=True, help="artifact folder holding meta.json")
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--heldout", help="text for the held-out DAC measurement")
    ap.add_argument("--no-dsq", dest="dsq", action="store_false")
    ap.add_argument("--no-dac", dest="dac", action="store_false")
    ap.add_argument(
        "--dac-input",
        default="quantized",
        choices=DAC_INPUTS,
        help="H̃'s input: 'quantized' (own stream, default) or 'float' (float stream's input)",
    )
    ap.add_argument("--record", help="run record (suite d2quant)")
    run_job(ap, run, argv, errors=(QuantConfigError, FileNotFoundError))


if __name__ == "__main__":
    main()
