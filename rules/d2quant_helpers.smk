# Functions of rules/d2quant.smk (kept apart: `snakemake --lint` wants rules and functions in
# separate files). Included by rules/d2quant.smk before its rules.


def d2q_variants():
    """{variant: (source prefix, arm, bits)} from the paper section."""
    if not D2Q:
        return {}
    out = {}
    sources = [""] + (["planted."] if "planted" in D2Q else [])
    for src in sources:
        for bits in D2Q["bits"]:
            for arm in D2Q["arms"]:
                out[f"{src}{arm}-w{bits}"] = (src, arm, bits)
        for bits in D2Q["ablation_bits"]:
            for arm in D2Q["ablation_arms"]:
                out[f"{src}{arm}-w{bits}"] = (src, arm, bits)
    return out


def d2q_source(wildcards):
    """meta.json of the model a variant quantizes: the base model or its planted copy."""
    if wildcards.src:
        name = planted_name(D2Q["base_model"], D2Q["planted"])
        return f"{ART}/quant/{name}/meta.json"
    return f"{ART}/base/{D2Q['base_model']}/meta.json"


def d2q_check_group_size():
    """Fail before any job when the group size does not divide a width the scale states."""
    if not D2Q:
        return
    spec = MODELS.get(D2Q["base_model"], {})
    for key in ("hidden_size", "intermediate_size"):
        width = spec.get(key)
        if width and width % D2Q["group_size"]:
            raise WorkflowError(
                f"invalid configuration: papers.d2quant.group_size: {D2Q['group_size']} does "
                f"not divide models.{D2Q['base_model']}.{key} = {width}"
            )
