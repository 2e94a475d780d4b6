# Functions of rules/d2quant.smk (kept apart: `snakemake --lint` wants rules and functions in
# separate files). Included by rules/d2quant.smk before its rules.


def d2q_sources():
    """{variant prefix: source settings}. Without ``sources``: the section's ``base_model``
    (prefix "") and its planted copy ("planted."); with ``sources`` (paper scale, one per
    model of the paper's tables): "<source>." with the source's base model and its overrides of
    bits / arms / ablation_bits / ablation_arms / fp16 and resources."""
    if not D2Q:
        return {}
    keys = ("bits", "arms", "ablation_bits", "ablation_arms", "fp16")
    common = {k: D2Q.get(k, []) for k in keys}
    if D2Q.get("sources"):
        return {
            f"{name}.": {**common, **spec, "name": name}
            for name, spec in D2Q["sources"].items()
        }
    out = {"": {**common, "base_model": D2Q["base_model"], "name": ""}}
    if "planted" in D2Q:
        out["planted."] = {**out[""], "planted": D2Q["planted"]}
    return out


def d2q_src_regex():
    """Wildcard regex of the variant prefixes ("" included)."""
    import re

    if not D2Q_SOURCES:
        return "(?!x)x"
    return "(?:" + "|".join(re.escape(p) for p in D2Q_SOURCES) + ")"


def d2q_variants():
    """{variant: (source prefix, arm, bits)}; the full-precision reference of a source
    (``fp16: true``) is the variant "<prefix>fp16" with arm "fp16" and bits 16."""
    out = {}
    for src, spec in D2Q_SOURCES.items():
        if spec.get("fp16"):
            out[f"{src}fp16"] = (src, "fp16", 16)
        for bits in spec["bits"]:
            for arm in spec["arms"]:
                out[f"{src}{arm}-w{bits}"] = (src, arm, bits)
        for bits in spec["ablation_bits"]:
            for arm in spec["ablation_arms"]:
                out[f"{src}{arm}-w{bits}"] = (src, arm, bits)
    return out


def d2q_records(variant, arm):
    """Run records of one variant: its quantization record (none for the fp16 reference) and
    its lm-eval record (none for gptq_drift, which only measures the stream drift)."""
    out = []
    if arm != "fp16":
        out.append("quant" if arm in D2Q_BASELINES else "d2quant")
    if arm != "gptq_drift":
        out.append("lm_eval")
    return [f"{RUNS}/d2quant/{variant}/{suite}.json" for suite in out]


def d2q_base_model(src):
    spec = D2Q_SOURCES[src]
    if spec.get("planted"):
        return planted_name(spec["base_model"], spec["planted"])
    return spec["base_model"]


def d2q_source(wildcards):
    """meta.json of the model a variant quantizes: the base model or its planted copy."""
    spec = D2Q_SOURCES[wildcards.src]
    if spec.get("planted"):
        return f"{ART}/quant/{d2q_base_model(wildcards.src)}/meta.json"
    return f"{ART}/base/{spec['base_model']}/meta.json"


def d2q_resource(key, default):
    """A quantization job's resource: the source's own (70B models need more host memory and
    time), else the section's, else ``default``."""

    def get(wildcards):
        spec = D2Q_SOURCES.get(wildcards.src, {})
        return spec.get(key, (D2Q or {}).get(key, default))

    return get


def d2q_check_group_size():
    """Fail before any job when the group size does not divide a width the scale states."""
    for src in D2Q_SOURCES.values():
        model = src["base_model"]
        spec = MODELS.get(model, {})
        for key in ("hidden_size", "intermediate_size"):
            width = spec.get(key)
            if width and width % D2Q["group_size"]:
                raise WorkflowError(
                    f"invalid configuration: papers.d2quant.group_size: {D2Q['group_size']} "
                    f"does not divide models.{model}.{key} = {width}"
                )
