# Input and params functions of rules/omniflow.smk (kept apart: `snakemake --lint` wants rules
# and functions in separate files). Included by rules/omniflow.smk before its rules.


def omni_backend(name):
    """Backend spec of the config with a scale model name resolved to its artifact folder."""
    spec = dict(OMNI["backends"][name])
    if "base_model" in spec:
        spec["path"] = f"{ART}/base/{spec.pop('base_model')}"
        spec.setdefault("label", f"hf:{os.path.basename(spec['path'])}")
    return spec


def omni_backend_inputs(name):
    spec = OMNI["backends"][name]
    return (
        [f"{ART}/base/{spec['base_model']}/meta.json"] if "base_model" in spec else []
    )


def omni_regimes(k):
    """Zero-shot forecasts cover every regime (source = in-distribution); k-shot the shifted."""
    return PDE_REGIMES if int(k) == 0 else PDE_SHIFTED


def omni_pgcot(extra):
    return json.dumps({**OMNI.get("pgcot", {}), **extra}, sort_keys=True)
