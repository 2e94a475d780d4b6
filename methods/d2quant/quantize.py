"""D²Quant pipeline (paper Fig. 3; equations in methods/d2quant/README.md): per layer, GPTQ on
q/k/v/o; DAC at the post-attention norm (float stream vs quantized stream); GPTQ on gate/up; DSQ
on down_proj with its channel scales folded into up_proj's scales.

``python -m methods.d2quant.quantize <job options> --model A --bits 2 --calib text
[--heldout text] [--no-dsq] [--no-dac] [--dac-input float|quantized|quantized_both]
[--record stats.json]``

Job options (``claimbench.job``): ``--scale --paper d2quant --variant --out`` and optionally
``--seed --threads --device --dtype --scale-file``. Group size, calibration (``calib.n`` windows
of ``calib.seq_len`` tokens), DSQ iterations, damping and range clipping come from the scale's
``papers.d2quant`` section (defaults in config/schema/papers/d2quant.schema.yaml).

``--dac-input`` picks the calibration input of the two attentions whose post-attention norm
outputs give μ (README, "DAC readings"): ``float`` (default, the overview figure's reading): the
float stream's input goes through the float and the quantized attention, so μ corrects this
layer's own deviation; ``quantized`` (sequential ablation): each model runs on its own stream, so
μ also corrects the drift of earlier layers; ``quantized_both``: the quantized stream's input goes
through both attentions (this layer's deviation, on the inputs the quantized model sees).
Every run also records the mean drift of the whole quantized stream against the float one at
each post-attention norm before DAC's bias (tasks ``drift_calib``, ``drift_heldout``); with
``--no-dsq --no-dac`` that is plain GPTQ's own drift.

Writes the same artifact as ``methods.quant.apply`` (packed checkpoint, decoded copy in the
job's dtype, meta.json last) and a run record (suite ``d2quant``) with DSQ's per-layer output
error against plain GPTQ, DAC's mean shift before/after on calibration and held-out text, and
the stream drift.
"""

from __future__ import annotations

import json

import torch

from claimbench.job import Job, job_parser, run_job
from claimbench.records import metric, series
from methods.d2quant.dac import NormWithBias, bias_into_mlp, mean_deviation
from methods.d2quant.dsq import dual_scale_quantize, fold_into_up
from methods.quant.artifact import load_artifact, write_quantized_artifact
from methods.quant.model import (
    SequentialQuantizer,
    Stream,
    advance,
    calib_source,
    calibration_ids,
    decoder_layers,
    layerwise,
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


def norm_outputs(layer, x, kw=None) -> torch.Tensor:
    """The post-attention norm's output of ``layer`` on ``x`` (a tensor with its ``kw``, or a
    :class:`Stream`: the micro-batches' outputs concatenated on the stream's device)."""
    got = []
    h = layer.post_attention_layernorm.register_forward_hook(lambda _m, _a, out: got.append(out))
    try:
        for xb, kwb in x if isinstance(x, Stream) else ((x, kw),):
            run_layer(layer, xb, kwb)
    finally:
        h.remove()
    return got[0] if len(got) == 1 else torch.cat(got)


def deviation(fp_layer, x_fp: Stream, layer, x_q: Stream):
    """DAC's ``μ = mean_t (H_t − H̃_t)`` at the post-attention norm (float layer on ``x_fp``,
    quantized layer on ``x_q``) and the mean per-token norm of ``H`` (the denominator of
    :func:`rel_norm`). One micro-batch: exactly :func:`mean_deviation` on the outputs; several:
    summed batch by batch in float64, so the whole set's norm outputs are never held at once."""
    if len(x_fp.chunks) == 1:
        h_fp = norm_outputs(fp_layer, x_fp)
        mu = mean_deviation(h_fp, norm_outputs(layer, x_q))
        return mu, h_fp.reshape(-1, h_fp.shape[-1]).norm(dim=-1).mean()
    total = norms = None
    count = 0
    for (xf, kwf), (xq, kwq) in zip(x_fp, x_q, strict=True):
        h_fp, h_q = norm_outputs(fp_layer, xf, kwf), norm_outputs(layer, xq, kwq)
        d = h_fp.shape[-1]
        diff = (h_fp.reshape(-1, d).double() - h_q.reshape(-1, d).double()).sum(0)
        norm = h_fp.reshape(-1, d).float().norm(dim=-1).double().sum()
        total = diff if total is None else total + diff
        norms = norm if norms is None else norms + norm
        count += h_fp.reshape(-1, d).shape[0]
    return (total / count).to(h_fp.dtype), (norms / count).to(h_fp.dtype)


def rel_norm(v: torch.Tensor, h: torch.Tensor) -> float:
    """‖v‖ relative to the RMS norm of the activations it shifts (per token, averaged)."""
    return ratio(v, h.reshape(-1, h.shape[-1]).norm(dim=-1).mean())


def ratio(v: torch.Tensor, scale: torch.Tensor) -> float:
    """‖v‖ / scale (scale: the mean per-token norm, :func:`deviation`)."""
    return float(v.norm() / scale)


# DAC readings: which stream's input goes through (float attention, quantized attention).
DAC_INPUTS = ("float", "quantized", "quantized_both")


def reading_inputs(dac_input: str, x_fp, x_q):
    """The inputs of the float and the quantized layer whose norm outputs give μ."""
    return {"float": (x_fp, x_fp), "quantized": (x_fp, x_q), "quantized_both": (x_q, x_q)}[
        dac_input
    ]


class D2QuantQuantizer(SequentialQuantizer):
    """D²Quant on top of sequential GPTQ. DAC needs the float model's stream beside the
    quantized one (Fig. 3): it is computed layer by layer from a float copy of the current layer
    only (``fp_stream``). ``heldout`` ids, when given, are carried through both streams the same
    way, to measure DAC's mean shift and the stream drift on held-out text without a second
    model. ``drift`` (default on) records the whole quantized stream's mean deviation from the
    float one at every post-attention norm, before this layer's DAC bias; without DAC that is
    the base quantizer's own drift."""

    def __init__(
        self,
        model,
        plan,
        group_size,
        calib,
        dsq=True,
        dac=True,
        iters=15,
        dac_input="float",
        heldout=None,
        drift=True,
        **kw,
    ):
        if dac_input not in DAC_INPUTS:
            raise QuantConfigError(f"dac_input: {dac_input!r} is not one of {DAC_INPUTS}")
        super().__init__(model, plan, group_size, "gptq", calib, fp_stream=dac or drift, **kw)
        self.dsq, self.dac, self.iters, self.dac_input = dsq, dac, iters, dac_input
        self.drift = drift
        self.heldout = heldout if (dac or drift) else None
        self.mu: dict[int, torch.Tensor] = {}
        self.dsq_errors: dict[int, list[float]] = {}
        self.c: dict[int, torch.Tensor] = {}
        self.dac_calib: dict[int, dict] = {}
        self.dac_heldout: dict[int, dict] = {}
        self.drift_calib: dict[int, float] = {}
        self.drift_heldout: dict[int, float] = {}

    def start(self, x: Stream) -> None:
        if self.heldout is not None:
            self.h_q = Stream.embed(self.model, self.heldout, self.batch_size, x.device, x.store)
            self.h_fp = self.h_q.clone()

    def after_attention(self, i, layer, fp_layer, x, x_fp) -> None:
        stream = None
        if self.drift:
            # the quantized model so far (this layer's attention quantized, no bias yet) on its
            # own stream against the float model on the float stream
            stream = deviation(fp_layer, x_fp, layer, x)
            self.drift_calib[i] = ratio(*stream)
        if not self.dac:
            return
        # DAC: μ = mean_t (H_t − H̃_t) at the post-attention norm, the float layer and the
        # quantized layer (attention already quantized) on the reading's inputs
        a, b = reading_inputs(self.dac_input, x_fp, x)
        if stream is not None and self.dac_input == "quantized":
            mu, scale = stream
        else:
            mu, scale = deviation(fp_layer, a, layer, b)
        layer.post_attention_layernorm = NormWithBias(layer.post_attention_layernorm, mu)
        after, _ = deviation(fp_layer, a, layer, b)
        self.mu[i] = mu
        self.dac_calib[i] = {"before": ratio(mu, scale), "after": ratio(after, scale)}

    def quantize_stage(self, i, layer, roles, H, x) -> None:
        if not (self.dsq and "mlp.down_proj" in roles):
            return super().quantize_stage(i, layer, roles, H, x)
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
        set_weight(down, res.qweight)
        self.keep(name, res.qweight)
        up_name = f"model.layers.{i}.mlp.up_proj"
        if up_name in self.quantized:  # fold c into up_proj's per-row scales (zero bits)
            up = self.quantized[up_name]
            self.keep(up_name, fold_into_up(up, res.c.to(up.scale.device)))
            set_weight(layer.mlp.up_proj, self.quantized[up_name])
        else:
            layer.mlp.up_proj.weight.data.mul_(res.c[:, None].to(layer.mlp.up_proj.weight))
        self.dsq_errors[i] = res.errors
        self.c[i] = res.c.cpu()

    def after_layer(self, i, layer, fp_layer, x, x_fp) -> None:
        if self.dac:
            bias_into_mlp(layer, self.mu[i])
        if self.heldout is None:
            return
        # Held-out text through the finished quantized layer and the float one (the layer's
        # bias now sits in gate/up, so the norm outputs are without it): the stream drift, and
        # under the DAC reading the mean deviation without this layer's bias (before) and with
        # it (after).
        stream = deviation(fp_layer, self.h_fp, layer, self.h_q)
        if self.drift:
            self.drift_heldout[i] = ratio(*stream)
        if self.dac:
            a, b = reading_inputs(self.dac_input, self.h_fp, self.h_q)
            d, scale = stream if self.dac_input == "quantized" else deviation(fp_layer, a, layer, b)
            self.dac_heldout[i] = {
                "before": ratio(d, scale),
                "after": ratio(d - self.mu[i], scale),
            }
        self.h_q, self.h_fp = advance(layer, self.h_q), advance(fp_layer, self.h_fp)

    def run(self):
        out = super().run()
        self.h_q = self.h_fp = None  # the held-out streams are measured; free them
        if self.dac:
            self.model.config.mlp_bias = True
            for layer in decoder_layers(self.model):
                if layer.mlp.gate_proj.bias is None:
                    gate = layer.mlp.gate_proj.weight
                    zero = torch.zeros(gate.shape[1], dtype=gate.dtype, device=gate.device)
                    bias_into_mlp(layer, zero)
        return out


def stats_record(job: Job, q: D2QuantQuantizer, meta: dict) -> dict:
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
        for tag, src in (("dac_calib", q.dac_calib), ("dac_heldout", q.dac_heldout)):
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
    for tag, src in (("drift_calib", q.drift_calib), ("drift_heldout", q.drift_heldout)):
        if not src:
            continue
        ls = sorted(src)
        vals = [src[i] for i in ls]
        metrics += [
            metric(tag, "drift_mean", sum(vals) / len(vals), higher_is_better=False),
            metric(tag, "drift_max", max(vals), higher_is_better=False),
        ]
        curves.append(
            series(f"{tag}: stream mean drift before DAC", ls, vals, "layer", "|mu| / rms")
        )
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
    # Loaded on the CPU; layers go to the job's device one at a time (SequentialQuantizer).
    model, tok, base_meta = load_artifact(args.model, "cpu", job.torch_dtype)
    check_model(model)
    plan = validate_plan(model, uniform_plan(model, args.bits), group_size, "--bits")
    source = calib_source(cfg, args.calib)
    calib = calibration_ids(tok, source, n_calib, seq_len, job.seed)
    heldout = None
    if args.heldout:
        heldout = calibration_ids(tok, args.heldout, n_calib, seq_len, job.seed + 1)
    # DAC compares the float model's stream with the quantized one at every layer (Fig. 3): the
    # float stream is computed from a float copy of the current layer only (SequentialQuantizer,
    # fp_stream), never of the whole model. DSQ and GPTQ compute each layer's Hessian, Cholesky
    # and c-step solve locally (float64 for a float32 model, float32 for a 16-bit one).
    q = D2QuantQuantizer(
        model,
        plan,
        group_size,
        calib,
        dsq=args.dsq,
        dac=args.dac,
        iters=iters,
        dac_input=args.dac_input,
        heldout=heldout,
        clip=clip,
        damp=damp,
        **layerwise(job, cfg),
    )
    quantized = q.run()
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
        job.write_record(stats_record(job, q, meta), args.record)
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
        default="float",
        choices=DAC_INPUTS,
        help="the attentions' input for μ: 'float' (the figure's reading, default), 'quantized' "
        "(each model on its own stream: sequential) or 'quantized_both'",
    )
    ap.add_argument("--record", help="run record (suite d2quant)")
    run_job(ap, run, argv, errors=(QuantConfigError, FileNotFoundError))


if __name__ == "__main__":
    main()
