# Input and params functions of rules/omniflow.smk (kept apart: `snakemake --lint` wants rules
# and functions in separate files). Included by rules/omniflow.smk before its rules.


def omni_backend(name):
    """Backend spec of the config with a scale model name resolved to its artifact folder (the
    same resolution as methods.omniflow.run.backend_spec; used here for record labels).
    """
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


def omni_backend_gpu(name):
    """A GPU for jobs of a local-model backend only."""
    return GPU if OMNI["backends"][name]["kind"] == "hf" else 0


def omni_model_option(backend_inputs):
    """``--model <artifact folder>`` of a backend's scale model (``omni_backend_inputs``)."""
    paths = list(backend_inputs)
    return f"--model {os.path.dirname(paths[0])}" if paths else ""


def omni_regimes(k):
    """Zero-shot forecasts cover every regime (source = in-distribution); k-shot the shifted
    (the same choice as methods.omniflow.run.forecast_regimes)."""
    return PDE_REGIMES if int(k) == 0 else PDE_SHIFTED


def omni_serve(name):
    """The ``serve`` block of an openai backend (empty: a server run elsewhere)."""
    return OMNI["backends"][name].get("serve") or {}


def omni_served(name):
    """Whether a backend's server is a job of this workflow (methods/omniflow/serve.py)."""
    return OMNI["backends"][name]["kind"] == "openai" and bool(omni_serve(name))
